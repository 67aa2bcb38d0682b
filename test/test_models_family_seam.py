"""A new model family is one module plus one ``register_family`` call.

The toy family below has its own config class (not ``ModelConfig``), no sampler and no
block to fuse, as MT-CP will. Registered here and nowhere else, it runs through every
shared path: ``build_model``, the safetensors round trip, ``resolve_model``, the torch
engine, ONNX export and the ONNX Runtime engine. Nothing outside this file names it.
"""

from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import pytest
import torch
from torch import nn

from mtdp_ros.models import build_model, load_checkpoint, reparameterize, resolve_model, \
    save_checkpoint
from mtdp_ros.models.checkpoint import read_checkpoint_config
from mtdp_ros.models.registry import family_names, get_family, ModelFamily, register_family
from mtdp_ros.runtime import create_engine, export_onnx, read_onnx_metadata

FAMILY = 'toy_seam'


@dataclass(frozen=True)
class ToyConfig:
    """The toy family's own configuration: only what the shared code reads."""

    family: str
    tasks: Tuple[str, ...]
    num_outputs: Dict[str, int]
    image_size: Tuple[int, int]
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    train_focal_px: Optional[float] = None
    name: str = field(default='', compare=False)

    def __post_init__(self):
        for key in ('tasks', 'image_size', 'mean', 'std'):
            object.__setattr__(self, key, tuple(getattr(self, key)))

    @classmethod
    def from_dict(cls, data):
        return cls(**data)

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def select_tasks(self, tasks=None):
        if tasks is None:
            return self.tasks
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise ValueError(f'unknown tasks {unknown}; this model has {list(self.tasks)}')
        return tuple(t for t in self.tasks if t in tasks)


class ToyNet(nn.Module):
    """One 3x3 convolution and a 1x1 head per task (depth kept positive)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.heads = nn.ModuleDict({t: nn.Conv2d(8, config.num_outputs[t], 1)
                                    for t in config.tasks})

    def forward(self, x, tasks=None):
        features = torch.relu(self.stem(x))
        tasks = self.config.select_tasks(tasks)
        out = {t: self.heads[t](features) for t in tasks}
        if 'depth' in out:
            out['depth'] = nn.functional.softplus(out['depth']) + 0.1
        return out


register_family(ModelFamily(FAMILY, ToyNet, config_class=ToyConfig,
                            description='a toy family registered by a test'))

CONFIG = ToyConfig(family=FAMILY, tasks=('semseg', 'depth'),
                   num_outputs={'semseg': 5, 'depth': 1}, image_size=(32, 48),
                   train_focal_px=40.0, name='toy')


@pytest.fixture(scope='module')
def toy_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(CONFIG)
    path = tmp_path_factory.mktemp('toy') / 'toy.safetensors'
    save_checkpoint(model, path)
    return model, str(path)


def camera_image(height=60, width=80, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_the_registry_knows_the_family_and_builds_it_from_config_or_dict():
    assert FAMILY in family_names() and get_family(FAMILY).diffusion is False
    assert isinstance(build_model(CONFIG), ToyNet)
    # A dictionary is parsed by the family's own config class (ModelConfig.from_dict).
    assert isinstance(build_model(CONFIG.to_dict()), ToyNet)


def test_safetensors_round_trip_keeps_config_and_weights(toy_checkpoint):
    model, path = toy_checkpoint
    assert read_checkpoint_config(path) == CONFIG
    config, weights = resolve_model(path)
    assert isinstance(config, ToyConfig) and weights == path
    loaded = load_checkpoint(build_model(config), weights)
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_nothing_to_fuse_and_no_steps():
    with pytest.raises(ValueError, match='no block to fuse'):
        reparameterize(build_model(CONFIG))


@torch.no_grad()
def test_torch_engine_runs_the_family(toy_checkpoint):
    model, path = toy_checkpoint
    engine = create_engine(path, device='cpu', reparameterize='true')
    assert not engine.reparameterized and 'no block to fuse' in engine.reparameterize_reason
    assert engine.default_steps is None and tuple(engine.available_steps()) == ()
    assert 'TaskDiffusion models only' in engine.check_steps(3)
    x = torch.randn(1, 3, *CONFIG.image_size, generator=torch.Generator().manual_seed(2))
    raw = engine.forward(x.numpy())
    expected = model.eval()(x)
    for task in CONFIG.tasks:
        np.testing.assert_allclose(raw[task], expected[task].numpy(), rtol=1e-5, atol=1e-5)
    outputs = engine.infer(camera_image())
    assert outputs['semseg'].shape == (60, 80) and outputs['semseg'].max() < 5
    assert outputs['depth'].shape == (60, 80) and np.nanmin(outputs['depth']) > 0


def test_onnx_export_and_onnxruntime_engine_run_the_family(toy_checkpoint, tmp_path):
    _, path = toy_checkpoint
    output = tmp_path / 'toy.onnx'
    info = export_onnx(path, output, verify=True)
    assert info['family'] == FAMILY and info['steps'] is None
    assert info['inputs'] == ['images'] and not info['reparameterized']
    assert read_onnx_metadata(str(output))['config'] == CONFIG
    image = camera_image(seed=3)
    ort = create_engine(str(output), backend='onnxruntime', device='cpu').infer(image)
    torch_outputs = create_engine(path, device='cpu').infer(image)
    np.testing.assert_allclose(ort['depth'], torch_outputs['depth'], rtol=1e-4, atol=1e-4)
    assert (ort['semseg'] == torch_outputs['semseg']).mean() > 0.99
