"""Build a model from a config, and resolve the model names users give."""

import json
import os

import torch
from torch.overrides import TorchFunctionMode

from .checkpoint import raise_if_mismatched, read_checkpoint_config, safetensors_shapes
from .config import ModelConfig
from .presets import DEFAULT_ALIASES, DEFAULT_MODELS, PRESETS
from .registry import get_family

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data')


def build_model(config):
    """A randomly initialised model of ``config`` (ModelConfig, dict or preset name)."""
    if isinstance(config, str):
        config = resolve_model(config)[0]
    config = ModelConfig.from_dict(config)
    return get_family(config.family).build(config)


def check_checkpoint_fits(config, checkpoint):
    """Raise ValueError when a safetensors ``checkpoint`` cannot load into ``config``'s model.

    Checked before the model is built: its keys and shapes come from a model built on the
    meta device (no memory) and the checkpoint's from its header (no tensor read), so a
    tiny file whose config declares a model of 0.68 G parameters is refused in about a
    second instead of after allocating and initialising 3 GB. Other checkpoint formats
    are checked when they load (their tensors must be read to know their keys).
    """
    if not isinstance(checkpoint, (str, os.PathLike)) or \
            not os.fspath(checkpoint).endswith('.safetensors') or \
            not os.path.isfile(checkpoint):
        return
    shapes = safetensors_shapes(checkpoint)
    config = ModelConfig.from_dict(config)
    try:
        model = build_meta_model(config)
    except Exception:  # noqa: B902 - a family that cannot build on meta: checked at load
        return
    convert = getattr(model, 'convert_state_dict', None)
    if convert is not None:
        shapes = convert(shapes)
    raise_if_mismatched(shapes, model.state_dict(), config)


class _NoRandomInit(TorchFunctionMode):
    """Skips random initialisation, whose meta kernels cost seconds on their first use.

    On the meta device values do not exist, but ``normal_`` and ``randn`` still go through
    PyTorch's Python decompositions, whose first use imports several seconds of modules
    (4 s on a 2-core VM): enough to double a node's start-up.
    """

    FILLS = ('normal_', 'uniform_')
    CREATORS = ('randn', 'rand')

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, '__name__', '')
        if name in self.FILLS:
            return args[0] if args else kwargs['tensor']
        if name in self.CREATORS:
            func = torch.empty
        return func(*args, **kwargs)


def build_meta_model(config):
    """A model of ``config`` on the meta device: its structure, keys and shapes, no memory."""
    with torch.device('meta'), _NoRandomInit():
        return build_model(config)


def default_checkpoint_path(name):
    """Where the shipped weights of a default model live (may not exist)."""
    return os.path.join(DATA_DIR, f'{name}.safetensors')


def resolve_model(spec):
    """(ModelConfig, checkpoint path or None) for a preset, default model or file.

    ``spec``: a ``PRESETS`` name (no weights: published weights are loaded from a path the
    user gives), ``default``/``default_mlore``/``default_taskdiffusion`` (shipped weights
    when present), a ``.safetensors`` file saved by this project (config in its metadata),
    or a ``.yaml``/``.yml``/``.json`` config file.
    """
    if not isinstance(spec, (str, os.PathLike)) or not str(spec):
        raise ValueError(f'model must be a preset name or a file path, got {spec!r}')
    spec = str(spec)
    name = DEFAULT_ALIASES.get(spec, spec)
    if name in PRESETS:
        return PRESETS[name], None
    if name in DEFAULT_MODELS:
        path = default_checkpoint_path(name)
        return DEFAULT_MODELS[name], (path if os.path.isfile(path) else None)
    if os.path.isfile(spec):
        if spec.endswith('.safetensors'):
            config = read_checkpoint_config(spec)
            if config is None:
                raise ValueError(f'{spec} carries no model config; pass a preset or config '
                                 f'file and give the weights as the checkpoint')
            return config, spec
        if spec.endswith(('.yaml', '.yml', '.json')):
            return load_config_file(spec), None
        raise ValueError(f'{spec}: unsupported model file (use .safetensors, .yaml or .json)')
    known = sorted(PRESETS) + sorted(DEFAULT_MODELS) + sorted(DEFAULT_ALIASES)
    raise ValueError(f'unknown model {spec!r}: not a preset ({", ".join(known)}) '
                     f'and no such file')


def load_config_file(path):
    """A ModelConfig from a YAML or JSON file (the reference schema)."""
    with open(path, 'r', encoding='utf-8') as handle:
        text = handle.read()
    try:
        if path.endswith('.json'):
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as exc:  # yaml and json raise different types for the same mistake
        raise ValueError(f'{path}: cannot parse model config: {exc}') from None
    if isinstance(data, dict) and 'model' in data and isinstance(data['model'], dict):
        data = data['model']
    return ModelConfig.from_dict(data)
