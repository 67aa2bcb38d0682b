"""MT-CP reproduces the authors' code (shared/reference mtcp_*_tiny.pt) through the public API."""

import importlib.util
import json
import os
import subprocess
import sys

from conftest import load_reference, reference_path, REPO
import pytest
import torch

from mtdp_ros.models import (build_model, load_checkpoint, ModelConfig, PRESETS,
                             read_checkpoint_config, save_checkpoint)
from mtdp_ros.models.mtcp.config import MTCPConfig
from mtdp_ros.models.mtcp.convert import authors_state_dict_shapes, to_v4_key, to_v5_key

# MT-CP needs the optional extra ``mtcp`` (transformers): without it (a colcon workspace
# that did not install the extra) its tests are skipped, except the one that checks the
# error naming the extra.
requires_transformers = pytest.mark.skipif(
    importlib.util.find_spec('transformers') is None,
    reason='MT-CP needs the optional extra mtcp (transformers), not installed')

# shared/reference/README.md ("MT-CP tolerances"): outputs max |diff| <= 1e-4, intermediates
# max |diff| <= 3e-4 x max |ref|. Measured here (2-core VM, torch 2.13, transformers 5.25):
# outputs <= 1.6e-5, Mask2Former intermediates <= 2.3e-6 x max |ref|.
OUTPUT_MAX_ABS = 1e-4
INTERMEDIATE_REL = 3e-4
FILES = {'nyud': 'mtcp_nyud_tiny.pt', 'pascal': 'mtcp_pascal_tiny.pt'}
MANIFEST = {'mtcp_nyud': 'mtcp_nyud_swinS_ade', 'mtcp_pascal': 'mtcp_pascal_swinS_ade'}


@pytest.fixture(scope='module', params=sorted(FILES))
def reference(request):
    if importlib.util.find_spec('transformers') is None:
        pytest.skip('MT-CP needs the optional extra mtcp (transformers), not installed')
    return load_reference(FILES[request.param])


def _loaded(reference):
    model = build_model(ModelConfig.from_dict(reference['config']))
    load_checkpoint(model, reference['checkpoint'])
    return model.eval()


def _record_intermediates(model):
    """Hooks recording the reference's intermediate tensors under its names."""
    seen = {}

    def keep(name, transform=lambda value: value):
        def hook(module, args, output):
            seen[name] = transform(output if name[0] != '<' else args)
        return hook

    handles = [model.backbon.register_forward_hook(keep('backbon'))]
    for slot, suffix in enumerate(('', '2', '3')):
        fpn = getattr(model, model.config.layout['fpn'][slot])
        handles += [
            fpn.register_forward_hook(keep(f'<transformer{slot + 1}', lambda a: a[0])),
            getattr(model, f'gaaf{suffix}').register_forward_hook(keep(f'gaaf{suffix}')),
            getattr(model, f'trace_back{suffix}').register_forward_hook(
                keep(f'trace_back{suffix}'))]
    return seen, handles


@torch.no_grad()
def test_outputs_and_intermediates_match_authors(reference):
    model = _loaded(reference)
    seen, handles = _record_intermediates(model)
    outputs = model(reference['input'])
    for handle in handles:
        handle.remove()
    assert list(outputs) == list(reference['outputs'])
    for key, expected in reference['outputs'].items():
        assert outputs[key].shape == expected.shape, key
        diff = (outputs[key] - expected).abs().max().item()
        assert diff <= OUTPUT_MAX_ABS, (key, diff)
    features, masks = seen['backbon']
    got = {'backbon.pixel_decoder_last_hidden_state': features,
           'backbon.masks_queries_logits': masks,
           'shared_representation': torch.einsum('bnhw,bdhw->bdhw', masks, features)}
    for name in ('gaaf', 'gaaf2', 'gaaf3'):
        got[name] = seen[name]
    for slot in (1, 2, 3):
        for level, tensor in enumerate(seen[f'<transformer{slot}']):
            got[f'transformer{slot}.{level}'] = tensor
    for name in ('trace_back', 'trace_back2', 'trace_back3'):
        for level, tensor in enumerate(seen[name]):
            got[f'{name}.{level}'] = tensor
    _, _, classes = model.backbon(reference['input'], with_classes=True)
    got['backbon.class_queries_logits'] = classes
    assert set(got) == set(reference['intermediates'])
    for key, expected in reference['intermediates'].items():
        rel = ((got[key] - expected).abs().max() / expected.abs().max()).item()
        assert rel <= INTERMEDIATE_REL, (key, rel)


@torch.no_grad()
def test_task_request_returns_only_task_outputs(reference):
    model = _loaded(reference)
    tasks = model.config.tasks
    outputs = model(reference['input'], tasks=[tasks[2], tasks[0]])
    assert list(outputs) == [tasks[0], tasks[2]]
    assert torch.allclose(outputs[tasks[0]], reference['outputs'][tasks[0]], atol=OUTPUT_MAX_ABS)
    trained = model.forward_train(reference['input'])
    assert set(trained['pred']) == set(tasks)
    assert [set(level) for level in trained['deep']] == [set(tasks)] * 2


def test_trace_back_alias_is_shared(reference):
    model = _loaded(reference)
    for name in ('trace_back', 'trace_back2', 'trace_back3'):
        modules = getattr(model, name).spf_modules
        assert modules[3] is modules[2]
    state = model.state_dict()
    key = 'trace_back.spf_modules.3.sem_conv.weight'
    assert state[key].data_ptr() == state[key.replace('.3.', '.2.')].data_ptr()


def test_authors_keys_load_and_our_format_round_trips(reference, tmp_path):
    authors = reference['checkpoint']['model']
    # The authors' transformers 4.x names do not load into transformers 5 as they are.
    model = build_model(ModelConfig.from_dict(reference['config']))
    own = model.state_dict()
    assert any(k not in own for k in authors)
    # DistributedDataParallel's prefix is accepted too.
    load_checkpoint(model, {'model': {'module.' + k: v for k, v in authors.items()}})
    path = save_checkpoint(model, str(tmp_path / 'mtcp.safetensors'))
    config = read_checkpoint_config(path)
    assert isinstance(config, MTCPConfig) and config == model.config
    again = build_model(config)
    load_checkpoint(again, path)
    with torch.no_grad():
        first = model.eval()(reference['input'], tasks=config.tasks)
        second = again.eval()(reference['input'], tasks=config.tasks)
    for task in config.tasks:
        assert torch.equal(first[task], second[task])


def test_wrong_checkpoint_names_the_keys(reference):
    model = build_model(ModelConfig.from_dict(reference['config']))
    broken = dict(reference['checkpoint']['model'])
    broken.pop('gaaf2.gate1.weight')
    broken['gaaf.extra'] = torch.zeros(1)
    with pytest.raises(ValueError, match=r'missing keys 1: gaaf2\.gate1\.weight.*'
                                         r'unexpected keys 1: gaaf\.extra'):
        load_checkpoint(model, broken)


@requires_transformers
def test_key_renaming_is_one_to_one():
    with torch.device('meta'):
        model = build_model(PRESETS['mtcp_nyud_tiny'])
    keys = list(model.state_dict())
    authors = [to_v4_key(k) for k in keys]
    assert len(set(authors)) == len(keys)
    assert [to_v5_key(k) for k in authors] == keys


@requires_transformers
@pytest.mark.parametrize('preset', sorted(MANIFEST))
def test_published_presets_have_the_authors_keys(preset):
    with open(reference_path('mtcp_key_shapes.json'), encoding='utf-8') as handle:
        manifest = json.load(handle)[MANIFEST[preset]]
    with torch.device('meta'):
        model = build_model(PRESETS[preset])
    assert authors_state_dict_shapes(model) == manifest['state_dict']
    assert sum(p.numel() for p in model.parameters()) == manifest['num_parameters']
    unused = sum(p.numel() for p in model.backbone.parameters())
    assert sum(p.numel() for p in model.parameters()) - unused == \
        manifest['num_parameters_without_unused_backbone']
    config = manifest['config']
    ours = PRESETS[preset].to_dict()
    for key, value in config.items():
        if key not in ('mask2former', 'transformers_version', 'torch_version'):
            assert ours[key] == value, key


def test_config_round_trip_and_errors(reference):
    data = dict(reference['config'])
    config = ModelConfig.from_dict(data)
    assert isinstance(config, MTCPConfig)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_dict(config) is config
    assert not config.is_diffusion and not config.has_mlore and config.train_focal_px is None
    with pytest.raises(ValueError, match=r"unknown MT-CP config keys \['windw'\]"):
        ModelConfig.from_dict({**data, 'windw': 7})
    with pytest.raises(ValueError, match='size_list'):
        ModelConfig.from_dict({**data, 'size_list': [16, 32, 32]})
    with pytest.raises(ValueError, match='mask_feature_size'):
        ModelConfig.from_dict({**data, 'C': 32, 'size_list': [32, 64, 128],
                               'dec_embed_dim': 32, 'dec_in_chans': 32,
                               'trace_back_spf': [[32, 128], [128, 64], [64, 32], [64, 32]],
                               'spf_out': 32, 'gaaf_gate': 32, 'gaaf_conv': 64})
    with pytest.raises(ValueError, match='tasks'):
        config.replace(tasks=list(config.tasks[:2]))


def test_input_size_must_divide_by_32(reference):
    model = _loaded(reference)
    with pytest.raises(ValueError, match='divisible by 32'):
        model(torch.zeros(1, 3, 48, 64))


MISSING_TRANSFORMERS = r'''
import sys
sys.modules['transformers'] = None        # "import transformers" now raises ImportError
from mtdp_ros.models import ModelConfig, PRESETS, build_model, family_names
assert 'mtcp' in family_names()
config = PRESETS['mtcp_nyud_tiny']
assert ModelConfig.from_dict(config.to_dict()) == config
try:
    build_model(config)
except ImportError as exc:
    print('ERROR:', exc)
'''


def test_missing_transformers_names_the_extra():
    result = subprocess.run([sys.executable, '-c', MISSING_TRANSFORMERS], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'PYTHONPATH': REPO})
    assert result.returncode == 0, result.stderr
    assert 'ERROR:' in result.stdout and 'pip install mtdp_ros[mtcp]' in result.stdout


def _tiny_mask2former():
    from transformers import Mask2FormerConfig, Mask2FormerModel
    config = Mask2FormerConfig.from_dict(PRESETS['mtcp_nyud_tiny'].mask2former)
    torch.manual_seed(3)
    return Mask2FormerModel(config)


@requires_transformers
def test_backbone_folder_from_save_pretrained_loads_strictly(tmp_path):
    hf = _tiny_mask2former()
    hf.save_pretrained(str(tmp_path / 'm2f'))
    assert os.path.isfile(tmp_path / 'm2f' / 'model.safetensors')
    model = build_model(PRESETS['mtcp_nyud_tiny'])
    head = model.backbon.class_predictor.weight.clone()
    report = model.load_pretrained_backbone(str(tmp_path / 'm2f'))
    assert report['layout'] == 'Mask2FormerModel'
    ours = model.backbon.model.state_dict()
    for key, value in hf.state_dict().items():
        if 'swin.layernorm' not in key:
            assert torch.equal(ours[key], value), key
    assert torch.equal(model.backbon.class_predictor.weight, head)   # kept: not in the folder
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = hf.eval()(pixel_values=x).pixel_decoder_last_hidden_state
        features, _ = model.eval().backbon(x)
    assert torch.equal(features, expected)


@requires_transformers
def test_backbone_folder_in_the_hub_layout_with_authors_names(tmp_path):
    # The hub checkpoint: Mask2FormerForUniversalSegmentation, transformers 4.x names.
    from safetensors.torch import save_file
    source = build_model(PRESETS['mtcp_nyud_tiny'])
    folder = tmp_path / 'hub'
    source.backbon.hf_config.save_pretrained(str(folder))
    tensors = {to_v4_key('backbon.' + k)[len('backbon.'):]: v.clone()
               for k, v in source.backbon.state_dict().items()}
    assert any('.attention.self.query.' in k for k in tensors)
    save_file(tensors, str(folder / 'model.safetensors'))
    model = build_model(PRESETS['mtcp_nyud_tiny'])
    report = model.load_pretrained_backbone(str(folder))
    assert report['layout'] == 'Mask2FormerForUniversalSegmentation' and report['kept'] == []
    for key, value in source.backbon.state_dict().items():
        assert torch.equal(model.backbon.state_dict()[key], value), key


@requires_transformers
def test_backbone_folder_errors_name_the_problem(tmp_path):
    model = build_model(PRESETS['mtcp_nyud_tiny'])
    with pytest.raises(FileNotFoundError, match='backbone folder not found'):
        model.load_pretrained_backbone(str(tmp_path / 'absent'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no config.json'):
        model.load_pretrained_backbone(str(tmp_path / 'empty'))
    from transformers import Mask2FormerConfig, Mask2FormerModel
    data = dict(PRESETS['mtcp_nyud_tiny'].mask2former, num_queries=6)
    Mask2FormerModel(Mask2FormerConfig.from_dict(data)).save_pretrained(str(tmp_path / 'q6'))
    before = model.backbon.model.transformer_module.queries_features.weight.clone()
    with pytest.raises(ValueError, match=r'shape mismatches .*queries_features\.weight'):
        model.load_pretrained_backbone(str(tmp_path / 'q6'))
    assert torch.equal(model.backbon.model.transformer_module.queries_features.weight, before)
