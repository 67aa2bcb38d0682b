"""Pretrained ViT files (timm .safetensors / .pth, Google .npz) into the ViT encoder.

The files are made here, in timm's key layout (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N.norm1`` / ``attn.qkv`` / ``attn.proj`` / ``norm2`` /
``mlp.fc1`` / ``mlp.fc2``, ``norm``, ``head``) and in the Google npz layout
(``Transformer/encoderblock_N/...``); timm itself is not needed.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtdp_ros.models import build_model
from mtdp_ros.models.pretrained import load_pretrained_encoder, resample_pos_embed
from mtdp_ros.models.vit import ViTEncoder
from mtdp_ros.training.train import Trainer

DIM, DEPTH, HEADS, PATCH = 32, 2, 2, 16


def timm_state(dim=DIM, depth=DEPTH, grid=4, distilled=False, seed=0, classes=10):
    """A random ViT state dict with timm's names and shapes (grid x grid patches)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.2

    prefix = 2 if distilled else 1
    state = {'cls_token': rand(1, 1, dim), 'pos_embed': rand(1, prefix + grid * grid, dim),
             'patch_embed.proj.weight': rand(dim, 3, PATCH, PATCH),
             'patch_embed.proj.bias': rand(dim),
             'norm.weight': 1 + rand(dim), 'norm.bias': rand(dim),
             'head.weight': rand(classes, dim), 'head.bias': rand(classes)}
    if distilled:
        state.update({'dist_token': rand(1, 1, dim), 'head_dist.weight': rand(classes, dim),
                      'head_dist.bias': rand(classes)})
    for i in range(depth):
        b = f'blocks.{i}.'
        state.update({
            b + 'norm1.weight': 1 + rand(dim), b + 'norm1.bias': rand(dim),
            b + 'attn.qkv.weight': rand(3 * dim, dim), b + 'attn.qkv.bias': rand(3 * dim),
            b + 'attn.proj.weight': rand(dim, dim), b + 'attn.proj.bias': rand(dim),
            b + 'norm2.weight': 1 + rand(dim), b + 'norm2.bias': rand(dim),
            b + 'mlp.fc1.weight': rand(4 * dim, dim), b + 'mlp.fc1.bias': rand(4 * dim),
            b + 'mlp.fc2.weight': rand(dim, 4 * dim), b + 'mlp.fc2.bias': rand(dim)})
    return state


def to_npz_arrays(state, heads=HEADS):
    """timm state -> the Google ViT npz layout (Flax kernels: (in, out), per-head q/k/v)."""
    dim = state['norm.weight'].shape[0]
    head_dim = dim // heads
    arr = {'cls': state['cls_token'].numpy(),
           'embedding/kernel': state['patch_embed.proj.weight'].permute(2, 3, 1, 0).numpy(),
           'embedding/bias': state['patch_embed.proj.bias'].numpy(),
           'Transformer/posembed_input/pos_embedding': state['pos_embed'].numpy(),
           'Transformer/encoder_norm/scale': state['norm.weight'].numpy(),
           'Transformer/encoder_norm/bias': state['norm.bias'].numpy(),
           'head/kernel': state['head.weight'].T.numpy(), 'head/bias': state['head.bias'].numpy()}
    i = 0
    while f'blocks.{i}.norm1.weight' in state:
        b, g = f'blocks.{i}.', f'Transformer/encoderblock_{i}/'
        mha = g + 'MultiHeadDotProductAttention_1/'
        arr[g + 'LayerNorm_0/scale'] = state[b + 'norm1.weight'].numpy()
        arr[g + 'LayerNorm_0/bias'] = state[b + 'norm1.bias'].numpy()
        qkv_w = state[b + 'attn.qkv.weight'].reshape(3, dim, dim)
        qkv_b = state[b + 'attn.qkv.bias'].reshape(3, dim)
        for j, name in enumerate(('query', 'key', 'value')):
            arr[f'{mha}{name}/kernel'] = qkv_w[j].T.reshape(dim, heads, head_dim).numpy()
            arr[f'{mha}{name}/bias'] = qkv_b[j].reshape(heads, head_dim).numpy()
        arr[mha + 'out/kernel'] = state[b + 'attn.proj.weight'].T.reshape(
            heads, head_dim, dim).numpy()
        arr[mha + 'out/bias'] = state[b + 'attn.proj.bias'].numpy()
        arr[g + 'LayerNorm_2/scale'] = state[b + 'norm2.weight'].numpy()
        arr[g + 'LayerNorm_2/bias'] = state[b + 'norm2.bias'].numpy()
        for k in (0, 1):
            arr[f'{g}MlpBlock_3/Dense_{k}/kernel'] = state[f'{b}mlp.fc{k + 1}.weight'].T.numpy()
            arr[f'{g}MlpBlock_3/Dense_{k}/bias'] = state[f'{b}mlp.fc{k + 1}.bias'].numpy()
        i += 1
    return arr


def reference_vit(state, x, heads=HEADS, prefix=1):
    """Final normed patch tokens of a timm-layout ViT without prefix tokens in the sequence.

    Written from the ViT definition (explicit softmax attention, exact GELU), independent
    of mtdp_ros.models.vit. The file's grid must equal the input's (no resampling).
    """
    tokens = F.conv2d(x, state['patch_embed.proj.weight'], state['patch_embed.proj.bias'],
                      stride=PATCH).flatten(2).transpose(1, 2)
    tokens = tokens + state['pos_embed'][:, prefix:]
    dim = tokens.shape[-1]
    i = 0
    while f'blocks.{i}.norm1.weight' in state:
        b = f'blocks.{i}.'
        h = F.layer_norm(tokens, (dim,), state[b + 'norm1.weight'], state[b + 'norm1.bias'],
                         eps=1e-6)
        q, k, v = F.linear(h, state[b + 'attn.qkv.weight'],
                           state[b + 'attn.qkv.bias']).chunk(3, dim=-1)

        def split(t):
            return t.reshape(t.shape[0], t.shape[1], heads, dim // heads).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(tokens.shape)
        tokens = tokens + F.linear(mixed, state[b + 'attn.proj.weight'],
                                   state[b + 'attn.proj.bias'])
        h = F.layer_norm(tokens, (dim,), state[b + 'norm2.weight'], state[b + 'norm2.bias'],
                         eps=1e-6)
        h = F.linear(h, state[b + 'mlp.fc1.weight'], state[b + 'mlp.fc1.bias'])
        h = F.linear(F.gelu(h), state[b + 'mlp.fc2.weight'], state[b + 'mlp.fc2.bias'])
        tokens = tokens + h
        i += 1
    return F.layer_norm(tokens, (dim,), state['norm.weight'], state['norm.bias'], eps=1e-6)


def make_encoder(image_size=(64, 64), dim=DIM, depth=DEPTH):
    # Which blocks are tapped does not matter here (the final level is compared).
    layers = tuple(range(1, depth + 1))
    return ViTEncoder(image_size, PATCH, dim, depth, HEADS, 4.0, layers).eval()


def final_tokens(enc, x):
    level = enc(x)[-1]
    return level.flatten(2).transpose(1, 2)


@pytest.mark.parametrize('container', ['safetensors', 'pth', 'npz'])
def test_encoder_outputs_equal_an_independent_vit_computation(tmp_path, container):
    state = timm_state(grid=4)
    path = tmp_path / f'vit.{container}'
    if container == 'safetensors':
        from safetensors.torch import save_file
        save_file(state, str(path))
    elif container == 'pth':
        torch.save({'model': state, 'epoch': 300}, path)       # DeiT's wrapper
    else:
        np.savez(path, **to_npz_arrays(state))
    enc = make_encoder((64, 64))
    report = load_pretrained_encoder(enc, path)
    assert report['dropped'] == ['cls_token', 'head.bias', 'head.weight']
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = final_tokens(enc, x)
    expected = reference_vit(state, x)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    # The class slot of the position embedding is kept as it is.
    torch.testing.assert_close(enc.pos_embed[:, :1], state['pos_embed'][:, :1])


def test_npz_lands_in_the_same_places_as_the_timm_file(tmp_path):
    state = timm_state(grid=4, seed=3)
    np.savez(tmp_path / 'vit.npz', **to_npz_arrays(state))
    from_npz, from_dict = make_encoder(), make_encoder()
    load_pretrained_encoder(from_npz, tmp_path / 'vit.npz')
    torch.save(state, tmp_path / 'vit.pth')
    load_pretrained_encoder(from_dict, tmp_path / 'vit.pth')
    for key, value in from_dict.state_dict().items():
        torch.testing.assert_close(from_npz.state_dict()[key], value, msg=key)
    for key in ('blocks.1.attn.qkv.weight', 'blocks.0.mlp.fc2.weight',
                'patch_embed.proj.weight', 'norm.bias'):
        torch.testing.assert_close(from_npz.state_dict()[key], state[key], msg=key)


def test_position_embedding_is_resampled_on_the_grid_with_the_class_token_kept(tmp_path):
    grid = 6
    state = timm_state(grid=grid)
    # Channel 0 holds the row, channel 1 the column: a transposed or mis-ordered grid shows.
    rows, cols = torch.meshgrid(torch.arange(float(grid)), torch.arange(float(grid)),
                                indexing='ij')
    pos = state['pos_embed']
    pos[0, 1:, 0] = rows.reshape(-1)
    pos[0, 1:, 1] = cols.reshape(-1)
    torch.save(state, tmp_path / 'vit.pth')
    enc = make_encoder((64, 128))                     # grid 4 x 8: rows shrink, columns grow
    report = load_pretrained_encoder(enc, tmp_path / 'vit.pth')
    assert report['pos_embed'] == '6x6 -> 4x8'
    new = enc.pos_embed.detach()
    torch.testing.assert_close(new[:, 0], pos[:, 0])
    assert new.shape == (1, 1 + 32, DIM)
    row_map = new[0, 1:, 0].reshape(4, 8)
    col_map = new[0, 1:, 1].reshape(4, 8)
    assert torch.allclose(row_map, row_map[:, :1].expand(4, 8), atol=1e-5)   # rows: y only
    assert torch.allclose(col_map, col_map[:1].expand(4, 8), atol=1e-5)      # cols: x only
    assert (row_map[1:, 0] > row_map[:-1, 0]).all() and (col_map[0, 1:] > col_map[0, :-1]).all()
    # Centres map to centres (align_corners=False): the ramps stay symmetric about the middle.
    torch.testing.assert_close(row_map[:, 0] + row_map.flip(0)[:, 0],
                               torch.full((4,), grid - 1.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(col_map[0] + col_map[0].flip(0),
                               torch.full((8,), grid - 1.0), atol=1e-4, rtol=0)
    # Same values as resampling the grid directly (bicubic; antialias since rows shrink).
    direct = F.interpolate(pos[:, 1:].reshape(1, grid, grid, DIM).permute(0, 3, 1, 2),
                           size=(4, 8), mode='bicubic', align_corners=False, antialias=True)
    torch.testing.assert_close(new[:, 1:], direct.permute(0, 2, 3, 1).reshape(1, 32, DIM))


def test_resample_keeps_an_unchanged_grid_exactly():
    pos = torch.randn(1, 1 + 9, 4)
    torch.testing.assert_close(resample_pos_embed(pos, (3, 3)), pos, rtol=0, atol=0)


def test_deit_distillation_token_and_its_slot_are_dropped(tmp_path):
    state = timm_state(grid=4, distilled=True)
    torch.save({'model': state}, tmp_path / 'deit.pth')
    enc = make_encoder((64, 64))
    report = load_pretrained_encoder(enc, tmp_path / 'deit.pth')
    assert 'dist_token' in report['dropped'] and 'head_dist.weight' in report['dropped']
    torch.testing.assert_close(enc.pos_embed[:, :1], state['pos_embed'][:, :1])
    torch.testing.assert_close(enc.pos_embed[:, 1:], state['pos_embed'][:, 2:])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(final_tokens(enc, x), reference_vit(state, x, prefix=2),
                                   rtol=1e-4, atol=1e-5)


def test_a_vit_of_another_width_or_depth_names_expected_and_found(tmp_path):
    torch.save(timm_state(dim=48), tmp_path / 'wide.pth')
    before = {k: v.clone() for k, v in make_encoder().state_dict().items()}
    enc = make_encoder()
    enc.load_state_dict(before)
    with pytest.raises(ValueError, match=r'expected embed_dim 32, depth 2.*found embed_dim 48'):
        load_pretrained_encoder(enc, tmp_path / 'wide.pth')
    for key, value in enc.state_dict().items():                  # nothing was loaded
        assert torch.equal(value, before[key]), key
    torch.save(timm_state(depth=3), tmp_path / 'deep.pth')
    with pytest.raises(ValueError, match=r'expected .*depth 2.*found .*depth 3'):
        load_pretrained_encoder(enc, tmp_path / 'deep.pth')


def test_not_a_vit_and_extra_keys_are_clear_errors(tmp_path):
    torch.save({'conv1.weight': torch.zeros(8, 3, 7, 7), 'fc.weight': torch.zeros(10, 8)},
               tmp_path / 'resnet.pth')
    with pytest.raises(ValueError, match="not a ViT in timm's layout"):
        load_pretrained_encoder(make_encoder(), tmp_path / 'resnet.pth')
    state = timm_state()
    state['blocks.0.ls1.gamma'] = torch.ones(DIM)                 # layer scale: another ViT
    torch.save(state, tmp_path / 'layerscale.pth')
    with pytest.raises(ValueError, match=r'unexpected keys 1: blocks\.0\.ls1\.gamma'):
        load_pretrained_encoder(make_encoder(), tmp_path / 'layerscale.pth')
    arrays = to_npz_arrays(timm_state())
    arrays['Transformer/encoderblock_0/extra/kernel'] = np.zeros(3, np.float32)
    np.savez(tmp_path / 'extra.npz', **arrays)
    with pytest.raises(ValueError, match='not part of a plain ViT'):
        load_pretrained_encoder(make_encoder(), tmp_path / 'extra.npz')
    np.savez(tmp_path / 'other.npz', weights=np.zeros(3))
    with pytest.raises(ValueError, match='not a ViT in the Google/timm npz layout'):
        load_pretrained_encoder(make_encoder(), tmp_path / 'other.npz')
    with pytest.raises(FileNotFoundError, match='pretrained encoder weights not found'):
        load_pretrained_encoder(make_encoder(), tmp_path / 'absent.npz')


class _Payload:
    """Any object other than tensors: loading it would mean unpickling code."""


def test_files_that_need_unpickling_are_refused(tmp_path):
    state = timm_state()
    state['extra'] = _Payload()
    torch.save(state, tmp_path / 'code.pth')
    with pytest.raises(ValueError, match='refusing to load'):
        load_pretrained_encoder(make_encoder(), tmp_path / 'code.pth')
    arrays = to_npz_arrays(timm_state())
    arrays['meta'] = np.array([{'a': 1}], dtype=object)
    np.savez(tmp_path / 'code.npz', **arrays)
    with pytest.raises(ValueError, match='refusing to load'):
        load_pretrained_encoder(make_encoder(), tmp_path / 'code.npz')


def test_training_config_init_encoder_loads_the_vit_and_keeps_the_rest_random(tmp_path):
    tiny = {'image_size': [32, 48], 'embed_dim': DIM, 'depth': 3, 'num_heads': HEADS,
            'select_layers': [1, 2, 3], 'decoder_dim': 16}
    state = timm_state(depth=3, grid=24)                          # a 384 x 384 file
    np.savez(tmp_path / 'vit.npz', **to_npz_arrays(state))
    messages = []
    config = {'model': {'base': 'default_mlore', **tiny},
              'init': {'encoder': str(tmp_path / 'vit.npz')},
              'data': {'workers': 0},
              'train': {'steps': 1, 'batch_size': 1, 'device': 'cpu', 'amp': 'off'},
              'output': {'dir': str(tmp_path / 'run')}}
    trainer = Trainer(config, echo=messages.append)
    weights = trainer.model.encoder.state_dict()
    torch.testing.assert_close(weights['blocks.2.mlp.fc1.weight'],
                               state['blocks.2.mlp.fc1.weight'])
    assert weights['pos_embed'].shape == (1, 1 + 2 * 3, DIM)
    assert any('24x24 -> 2x3' in m for m in messages), messages
    fresh = build_model(trainer.model_config)
    assert not torch.equal(fresh.encoder.state_dict()['blocks.0.attn.qkv.weight'],
                           weights['blocks.0.attn.qkv.weight'])
    with pytest.raises(ValueError, match='init as a mapping must be'):
        Trainer({**config, 'init': {'encoder': str(tmp_path / 'vit.npz'), 'strict': False}})
