"""ImageNet-pretrained ViT weights (timm / Google ViT files) -> this project's ViT encoder.

The papers train from ImageNet ViTs (timm's ``vit_large_patch16_384`` etc.). Those files
come in three containers, all read without running code:

* timm ``.safetensors`` (raw tensors by design);
* timm / DeiT ``.pth`` (``torch.load(weights_only=True)``: tensors and plain containers
  only; DeiT's ``{'model': ...}`` wrapper and a DDP ``module.`` prefix are accepted);
* the Google ViT ``.npz`` of the augreg / vision_transformer releases (the files timm
  converts, e.g. ``Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel``; an
  ``opt/target/`` prefix is accepted), read with ``numpy.load(allow_pickle=False)`` and
  converted to timm's names here.

Our encoder (``mtdp_ros.models.vit``) uses timm's module names, so after conversion the
keys map one to one. What is left out, and why:

* ``cls_token``: the dense models never put a class token into the sequence (as the
  authors' backbone); the class slot of the position embedding is kept, as ours has one;
* ``dist_token`` (DeiT distilled models) and its position-embedding slot (index 1): the
  distillation token only feeds the distillation head; it is dropped like the class token;
* the classifier heads (``head``, ``head_dist``, ``pre_logits``).

Everything else must be there with the configured shapes (strict): a file of another
width, depth, patch size or MLP size fails with a message naming what was expected and
what was found, and nothing is loaded. The number of attention heads is not stored in the
weights (``qkv`` is ``3C x C`` for any head count): the model config must give the
published one (ViT-S 6, ViT-B 12, ViT-L 16).

The position embedding is resampled to the configured grid as timm's
``resample_abs_pos_embed``: prefix tokens kept as they are, the square grid resized by
bicubic interpolation (``align_corners=False``, antialiased when shrinking).
"""

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import describe_keys as _describe, read_state_dict, state_dict_problems

# Keys of a timm ViT file the dense encoder has no place for (see the module docstring).
DROPPED_KEYS = ('cls_token', 'dist_token')
DROPPED_PREFIXES = ('head.', 'head_dist.', 'pre_logits.')
_NPZ_POS_EMBED = 'Transformer/posembed_input/pos_embedding'


def read_vit_weights(path):
    """A ViT file (.safetensors / .pth / .npz) as ``{timm key: float tensor}``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'pretrained encoder weights not found: {path}')
    if path.endswith('.npz'):
        return _read_npz(path)
    return read_state_dict(path)


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as exc:
        raise ValueError(f'refusing to load {path}: {exc} (object arrays would need '
                         f'unpickling)') from None
    except Exception as exc:  # noqa: B902 - a corrupt archive can raise almost anything
        raise ValueError(f'{path} is not a numpy .npz archive: {exc}') from None
    return npz_to_timm(arrays, path)


def npz_to_timm(arrays, name='the npz file'):
    """Google ViT npz arrays (``Transformer/encoderblock_N/...``) -> timm's state dict.

    Flax stores dense kernels as (in, out), convolutions as (kh, kw, in, out) and the
    attention projections per head: query/key/value kernels (C, heads, head_dim), the output
    kernel (heads, head_dim, C). Every array must be used; leftovers are an error.
    """
    prefix = 'opt/target/' if f'opt/target/{_NPZ_POS_EMBED}' in arrays else ''
    if f'{prefix}{_NPZ_POS_EMBED}' not in arrays:
        raise ValueError(f'{name} is not a ViT in the Google/timm npz layout: it has no '
                         f'{_NPZ_POS_EMBED!r} (found {_describe(arrays)})')
    used = set()

    def take(key):
        full = prefix + key
        if full not in arrays:
            raise ValueError(f'{name}: ViT array {full!r} is missing')
        used.add(full)
        return torch.from_numpy(np.ascontiguousarray(arrays[full])).float()

    state = {
        'patch_embed.proj.weight': take('embedding/kernel').permute(3, 2, 0, 1),
        'patch_embed.proj.bias': take('embedding/bias'),
        'pos_embed': take(_NPZ_POS_EMBED),
        'norm.weight': take('Transformer/encoder_norm/scale'),
        'norm.bias': take('Transformer/encoder_norm/bias'),
    }
    if prefix + 'cls' in arrays:
        state['cls_token'] = take('cls')
    depth = 0
    while f'{prefix}Transformer/encoderblock_{depth}/LayerNorm_0/scale' in arrays:
        depth += 1
    for index in range(depth):
        block = f'Transformer/encoderblock_{index}/'
        attn = block + 'MultiHeadDotProductAttention_1/'
        ours = f'blocks.{index}.'
        state[ours + 'norm1.weight'] = take(block + 'LayerNorm_0/scale')
        state[ours + 'norm1.bias'] = take(block + 'LayerNorm_0/bias')
        state[ours + 'attn.qkv.weight'] = torch.cat(
            [take(f'{attn}{n}/kernel').flatten(1).T for n in ('query', 'key', 'value')])
        state[ours + 'attn.qkv.bias'] = torch.cat(
            [take(f'{attn}{n}/bias').reshape(-1) for n in ('query', 'key', 'value')])
        state[ours + 'attn.proj.weight'] = take(attn + 'out/kernel').flatten(0, 1).T
        state[ours + 'attn.proj.bias'] = take(attn + 'out/bias')
        state[ours + 'norm2.weight'] = take(block + 'LayerNorm_2/scale')
        state[ours + 'norm2.bias'] = take(block + 'LayerNorm_2/bias')
        for layer in (0, 1):
            dense = f'{block}MlpBlock_3/Dense_{layer}/'
            state[f'{ours}mlp.fc{layer + 1}.weight'] = take(dense + 'kernel').T
            state[f'{ours}mlp.fc{layer + 1}.bias'] = take(dense + 'bias')
    for head in ('head', 'pre_logits'):
        for part, suffix in (('kernel', 'weight'), ('bias', 'bias')):
            key = f'{head}/{part}'
            if prefix + key in arrays:
                value = take(key)
                state[f'{head}.{suffix}' if head == 'head' else f'pre_logits.fc.{suffix}'] = \
                    value.T if part == 'kernel' else value
    leftover = set(arrays) - used
    if leftover:
        raise ValueError(f'{name}: arrays that are not part of a plain ViT '
                         f'{_describe(leftover)}')
    return {key: value.contiguous() for key, value in state.items()}


def resample_pos_embed(pos_embed, new_grid, num_prefix_tokens=1, old_grid=None):
    """Resize a 1 x (prefix + h*w) x C position embedding to ``new_grid`` (h', w').

    Prefix tokens (class, distillation) are kept; the grid (square unless ``old_grid``
    says otherwise) is resized bicubically, antialiased when shrinking (timm's
    ``resample_abs_pos_embed``).
    """
    tokens = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f'position embedding of {tokens} grid tokens is not a square '
                             f'grid; give its grid size')
        old_grid = (side, side)
    new_grid = tuple(int(v) for v in new_grid)
    if tuple(old_grid) == new_grid:
        return pos_embed.clone()
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    shrinking = new_grid[0] < old_grid[0] or new_grid[1] < old_grid[1]
    grid = F.interpolate(grid, size=new_grid, mode='bicubic', align_corners=False,
                         antialias=shrinking)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([prefix.float(), grid], dim=1).to(pos_embed.dtype)


def _geometry(state):
    """(embed_dim, depth, patch_size, mlp_hidden) of a timm-layout ViT state dict."""
    proj = state['patch_embed.proj.weight']
    depth = 0
    while f'blocks.{depth}.norm1.weight' in state:
        depth += 1
    fc1 = state.get('blocks.0.mlp.fc1.weight')
    hidden = int(fc1.shape[0]) if fc1 is not None else None
    return int(proj.shape[0]), depth, tuple(int(s) for s in proj.shape[2:]), hidden


def encoder_state_from_timm(state, encoder, name='the file'):
    """Our encoder's state dict from a timm-layout ViT state dict, plus what was dropped.

    Raises ValueError (nothing loaded) when the file is not a ViT of the encoder's width,
    depth, patch size and MLP size, or when keys are missing or unexpected.
    """
    own = encoder.state_dict()
    if 'patch_embed.proj.weight' not in state or 'pos_embed' not in state:
        raise ValueError(f'{name} is not a ViT in timm\'s layout: no patch_embed.proj.weight '
                         f'/ pos_embed (found keys {_describe(state)})')
    found = _geometry(state)
    expected = _geometry(own)
    if found != expected:
        labels = ('embed_dim', 'depth', 'patch_size', 'mlp_hidden')
        text = ', '.join(f'{k} {e}' for k, e in zip(labels, expected))
        got = ', '.join(f'{k} {f}' for k, f in zip(labels, found))
        raise ValueError(f'{name} is not a ViT of the configured size: expected {text}; '
                         f'found {got}')
    dropped = sorted(k for k in state if k in DROPPED_KEYS or k.startswith(DROPPED_PREFIXES))
    kept = {k: v for k, v in state.items() if k not in dropped}
    # Prefix tokens in the file's position embedding: the class token (one slot, which ours
    # keeps) and DeiT's distillation token (dropped with its slot).
    pos = kept['pos_embed']
    if pos.dim() != 3 or pos.shape[0] != 1:
        raise ValueError(f'{name}: pos_embed has shape {tuple(pos.shape)}, expected 1 x N x C')
    prefix = 1 + ('dist_token' in state)
    if 'cls_token' not in state:
        raise ValueError(f'{name}: no cls_token: only ViTs with a class-token slot in the '
                         f'position embedding are supported (timm / DeiT / augreg layouts)')
    grid = encoder.grid_size
    resampled = resample_pos_embed(pos, grid, num_prefix_tokens=prefix)
    kept['pos_embed'] = torch.cat([resampled[:, :1], resampled[:, prefix:]], dim=1)
    problems = state_dict_problems(kept, own, 'file', 'encoder')
    if problems:
        raise ValueError(f'{name} does not match the ViT encoder: ' + '; '.join(problems))
    return kept, dropped


def load_pretrained_encoder(encoder, path):
    """Load a pretrained ViT file into ``encoder`` (a ``ViTEncoder``) strictly.

    Returns a report dict: ``dropped`` (keys left out), ``pos_embed`` (file grid -> ours).
    """
    state = read_vit_weights(path)
    name = os.fspath(path)
    kept, dropped = encoder_state_from_timm(state, encoder, name)
    prefix = 1 + ('dist_token' in state)
    side = math.isqrt(state['pos_embed'].shape[1] - prefix)
    own = encoder.state_dict()
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(kept[key].to(dtype=tensor.dtype))
    return {'dropped': dropped, 'pos_embed': f'{side}x{side} -> '
                                             f'{encoder.grid_size[0]}x{encoder.grid_size[1]}'}
