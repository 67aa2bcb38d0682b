"""Loading and saving weights: the authors' checkpoints and the project's safetensors files.

Nothing here ever executes code from a file: ``torch.load`` runs with ``weights_only=True``
(tensors and plain containers only) and safetensors holds raw tensors by design.
"""

import json
import os
import pickle

import torch

from .config import ModelConfig
from .convert import authors_key_map

FORMAT_TAG = 'mtdp_ros/1'
_CONFIG_KEY = 'mtdp_config'
_LIST_LIMIT = 8


def describe_keys(keys):
    """'N: a, b, ... (+M more)': a short list of keys for an error message."""
    keys = sorted(keys)
    shown = ', '.join(keys[:_LIST_LIMIT])
    more = f' (+{len(keys) - _LIST_LIMIT} more)' if len(keys) > _LIST_LIMIT else ''
    return f'{len(keys)}: {shown}{more}'


def state_dict_problems(given, own, given_name, own_name):
    """Why ``given`` tensors cannot load strictly into ``own`` ([] when they match).

    Missing keys, unexpected keys and shape mismatches, each a short phrase naming them.
    """
    missing = set(own) - set(given)
    unexpected = set(given) - set(own)
    mismatched = [f'{k} ({given_name} {tuple(given[k].shape)}, {own_name} '
                  f'{tuple(own[k].shape)})'
                  for k in sorted(set(own) & set(given)) if given[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f'missing keys {describe_keys(missing)}')
    if unexpected:
        problems.append(f'unexpected keys {describe_keys(unexpected)}')
    if mismatched:
        problems.append(f'shape mismatches {describe_keys(mismatched)}')
    return problems


def read_state_dict(src):
    """Tensors of a checkpoint path or mapping, as a flat ``{key: tensor}`` dict.

    Accepts the authors' training format ``{'model': {'module.<key>': tensor}, ...}``
    (optimizer state beside it is ignored), a plain state dict, and safetensors files.
    """
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'checkpoint not found: {path}')
        if path.endswith('.safetensors'):
            return _read_safetensors(path)[0]
        try:
            data = torch.load(path, map_location='cpu', weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f'refusing to load {path}: it holds pickled Python objects other than tensors, '
                f'which could run code when loaded ({_first_line(exc)}). '
                f'Re-save it as a plain state dict or safetensors.') from None
        except Exception as exc:  # noqa: B902 - a corrupt file can raise almost anything
            raise ValueError(f'{path} is not a PyTorch checkpoint: {_first_line(exc)}') from None
        src_name = path
    else:
        data, src_name = src, 'the given mapping'
    if not isinstance(data, dict):
        raise ValueError(f'{src_name} is not a checkpoint: expected a mapping of tensors, '
                         f'got {type(data).__name__}')
    for wrapper in ('model', 'state_dict'):
        if isinstance(data.get(wrapper), dict):
            data = data[wrapper]
            break
    bad = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if bad or not data:
        raise ValueError(f'{src_name} is not a state dict: '
                         + (f'non-tensor entries {describe_keys(map(str, bad))}' if bad else
                            'it is empty'))
    return {_strip_prefix(k): v for k, v in data.items()}


def _first_line(exc):
    lines = str(exc).strip().splitlines()
    return (lines[0][:200] if lines else type(exc).__name__)


def _strip_prefix(key):
    # DistributedDataParallel wraps the model as ``module``.
    return key[len('module.'):] if key.startswith('module.') else key


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open
    try:
        with safe_open(path, framework='pt') as handle:
            metadata = handle.metadata() or {}
        return load_file(path), metadata
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f'{path} is not a valid safetensors file: {exc}') from None


def read_checkpoint_config(path):
    """The ModelConfig stored in a project safetensors file (None when it has none)."""
    _, metadata = _read_safetensors(os.fspath(path))
    if _CONFIG_KEY not in metadata:
        return None
    try:
        return ModelConfig.from_dict(json.loads(metadata[_CONFIG_KEY]))
    except json.JSONDecodeError as exc:
        raise ValueError(f'{path}: the stored model config is not valid JSON ({exc})') from None


def load_checkpoint(model, src):
    """Load weights strictly into ``model`` (train form); returns ``model``.

    Keys may be ours or the authors' (``module.`` prefix allowed). Raises ValueError naming
    missing keys, unexpected keys and shape mismatches; nothing is loaded in that case.
    """
    if getattr(model, 'is_reparameterized', False):
        raise ValueError('load weights before reparameterize(): the fused model has no '
                         'expert modules to load into')
    state = read_state_dict(src)
    own = model.state_dict()
    convert = getattr(model, 'convert_state_dict', None)
    if convert is not None:
        # A family whose names change with a dependency's version (MT-CP) renames itself.
        state = convert(state)
    state = raise_if_mismatched(state, own, model.config)
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key].to(dtype=tensor.dtype))
    return model


def raise_if_mismatched(state, own, config):
    """``state`` with our keys (the authors' mapped); ValueError when it does not fit ``own``.

    ``state`` and ``own`` map keys to anything with a ``shape`` (tensors, meta tensors, or
    the shapes of a safetensors header).
    """
    if not set(state) & set(own):
        mapping = authors_key_map(own)                     # authors' key -> our key
        state = {mapping.get(k, k): v for k, v in state.items()}
    problems = state_dict_problems(state, own, 'checkpoint', 'model')
    if problems:
        name = getattr(config, 'name', '') or config.family
        raise ValueError(f'checkpoint does not match the model ({name}): ' + '; '.join(problems))
    return state


class _Shape:
    """A safetensors header entry: the shape of a tensor that was not read."""

    def __init__(self, shape):
        self.shape = torch.Size(shape)


def safetensors_shapes(path):
    """``{key: object with .shape}`` from a safetensors header, reading no tensor data."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(os.fspath(path), framework='pt') as handle:
            return {_strip_prefix(key): _Shape(handle.get_slice(key).get_shape())
                    for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f'{path} is not a valid safetensors file: {exc}') from None


def save_checkpoint(model, path, half=False, metadata=None):
    """Write the model's weights and config to a safetensors file.

    ``half`` stores floating tensors as float16 (they load back into float32 models).
    """
    from safetensors.torch import save_file
    if getattr(model, 'is_reparameterized', False):
        raise ValueError('save the train-form model; reparameterize() after loading')
    tensors, stored = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if half and value.is_floating_point():
            value = value.half()
        if value.data_ptr() in stored and value.numel():
            # A module registered twice (MT-CP's trace-back alias) appears under two keys
            # with one storage; safetensors stores each key's own copy.
            value = value.clone()
        stored.add(value.data_ptr())
        tensors[key] = value.contiguous()
    info = {'format': FORMAT_TAG, _CONFIG_KEY: json.dumps(model.config.to_dict())}
    info.update({k: str(v) for k, v in (metadata or {}).items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, os.fspath(path), metadata=info)
    return path
