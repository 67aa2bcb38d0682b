"""Build a model from a config, and resolve the model names users give."""

import json
import os

from .checkpoint import read_checkpoint_config
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
