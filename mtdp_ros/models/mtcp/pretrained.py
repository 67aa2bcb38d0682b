"""Pretrained Mask2Former weights for MT-CP's backbone, from a transformers model folder.

The folder is what ``save_pretrained`` writes (``config.json`` + ``model.safetensors``, or
``pytorch_model.bin`` in older snapshots), e.g. ``facebook/mask2former-swin-small-ade-semantic``
downloaded once by the user. Both layouts load: ``Mask2FormerForUniversalSegmentation``
(``model.*``, ``class_predictor.*``, optionally ``criterion.empty_weight``) and a bare
``Mask2FormerModel``; transformers 4.x and 5.x names alike. Strict: a missing, unexpected or
mis-shaped tensor fails with its name and nothing is loaded.
"""

import json
import os

import torch

from ..checkpoint import read_state_dict, state_dict_problems
from .convert import convert_state_dict

WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def read_backbone_folder(path):
    """(config dict, {key: tensor}) of a transformers Mask2Former folder."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f'Mask2Former backbone folder not found: {path} (a folder '
                                f'written by save_pretrained: config.json + model.safetensors)')
    config_path = os.path.join(path, 'config.json')
    if not os.path.isfile(config_path):
        raise ValueError(f'{path} has no config.json: not a transformers model folder')
    try:
        with open(config_path, encoding='utf-8') as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ValueError(f'{config_path} is not valid JSON: {exc}') from None
    if not isinstance(config, dict) or config.get('model_type') != 'mask2former':
        found = config.get('model_type') if isinstance(config, dict) else None
        raise ValueError(f'{config_path}: model_type {found!r} is not "mask2former"')
    for name in WEIGHT_FILES:
        weights = os.path.join(path, name)
        if os.path.isfile(weights):
            return config, read_state_dict(weights)
    raise ValueError(f'{path} holds none of {", ".join(WEIGHT_FILES)}')


def load_backbone_folder(model, path):
    """Load a Mask2Former folder into ``model.backbon`` (an MT-CP model) strictly.

    Returns a report: ``layout`` (which class saved it), ``tensors`` (how many were read),
    ``kept`` (the model's own values kept where the folder has none: the loss's class
    weights, and the class head of a bare ``Mask2FormerModel``).
    """
    _, state = read_backbone_folder(path)
    backbone = model.backbon
    if any(k.startswith('model.') for k in state):
        layout = 'Mask2FormerForUniversalSegmentation'
        prefixed = {'backbon.' + k: v for k, v in state.items()}
    else:
        layout = 'Mask2FormerModel'
        prefixed = {'backbon.model.' + k: v for k, v in state.items()}
    own = {'backbon.' + k: v for k, v in backbone.state_dict().items()}
    prefixed = convert_state_dict(prefixed, own)
    optional = ['backbon.criterion.empty_weight']      # a constant of the config
    if layout == 'Mask2FormerModel':
        # A bare Mask2FormerModel has no class head: MT-CP's outputs never read it.
        optional.append('backbon.class_predictor.weight')
        optional.append('backbon.class_predictor.bias')
    for key in optional:
        prefixed.setdefault(key, own[key])
    problems = state_dict_problems(prefixed, own, 'folder', 'model')
    if problems:
        raise ValueError(f'{path} ({layout}) does not match the model\'s Mask2Former '
                         f'({model.config.name or "mtcp"}): ' + '; '.join(problems)
                         + '. The model config\'s "mask2former" must be the folder\'s '
                         'config.json')
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(prefixed[key].to(dtype=tensor.dtype))
    kept = [k[len('backbon.'):] for k in optional if k[len('backbon.'):] not in state
            and k[len('backbon.model.'):] not in state]
    return {'layout': layout, 'tensors': len(state), 'kept': kept}
