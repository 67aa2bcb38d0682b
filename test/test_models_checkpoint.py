"""Checkpoint loading: both formats, strict, and refusal of anything unsafe or wrong."""

import os
import pickle

import pytest
import torch

from mtdp_ros.models import (build_model, load_checkpoint, read_checkpoint_config,
                             resolve_model, save_checkpoint)


def _fresh(reference):
    return build_model(reference['config']).eval()


def test_authors_checkpoint_file_with_optimizer_state_loads(mlore_reference, tmp_path):
    path = tmp_path / 'authors.pth.tar'
    checkpoint = dict(mlore_reference['checkpoint'])
    checkpoint['optimizer'] = {'state': {}, 'param_groups': [{'lr': 1e-5}]}
    checkpoint['epoch'] = 3
    torch.save(checkpoint, path)
    model = load_checkpoint(_fresh(mlore_reference), str(path))
    with torch.no_grad():
        out = model(mlore_reference['input'])
    assert torch.allclose(out['depth'], mlore_reference['outputs']['depth'], atol=1e-4)


def test_own_safetensors_round_trip_with_config(mlore_reference, tmp_path):
    model = load_checkpoint(_fresh(mlore_reference), mlore_reference['checkpoint'])
    path = tmp_path / 'model.safetensors'
    save_checkpoint(model, str(path))
    assert read_checkpoint_config(str(path)) == model.config
    config, checkpoint = resolve_model(str(path))
    assert checkpoint == str(path)
    restored = load_checkpoint(build_model(config).eval(), checkpoint)
    with torch.no_grad():
        x = mlore_reference['input']
        a, b = model(x), restored(x)
    for task in a:
        assert torch.equal(a[task], b[task])


def test_half_precision_file_loads_into_float32(mlore_reference, tmp_path):
    model = load_checkpoint(_fresh(mlore_reference), mlore_reference['checkpoint'])
    path = tmp_path / 'half.safetensors'
    save_checkpoint(model, str(path), half=True)
    full = os.path.getsize(tmp_path / save_checkpoint(model, str(tmp_path / 'full.safetensors')))
    assert os.path.getsize(path) < 0.6 * full
    restored = load_checkpoint(build_model(model.config).eval(), str(path))
    assert restored.heads['depth'].pred.weight.dtype == torch.float32


def test_missing_key_is_named(mlore_reference):
    state = dict(mlore_reference['checkpoint']['model'])
    dropped = 'module.heads.edge.linear_pred.bias'
    del state[dropped]
    with pytest.raises(ValueError, match='missing keys 1: heads.edge.pred.bias'):
        load_checkpoint(_fresh(mlore_reference), {'model': state})


def test_unexpected_key_is_named(mlore_reference):
    state = dict(mlore_reference['checkpoint']['model'])
    state['module.heads.extra.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match='unexpected keys 1: heads.extra.weight'):
        load_checkpoint(_fresh(mlore_reference), {'model': state})


def test_wrong_shape_is_named_and_nothing_is_loaded(mlore_reference):
    state = dict(mlore_reference['checkpoint']['model'])
    key = 'module.heads.semseg.linear_pred.weight'
    state[key] = torch.zeros(21, 32, 1, 1)
    model = _fresh(mlore_reference)
    before = model.heads['depth'].pred.weight.clone()
    expected = (r'shape mismatches 1: heads.semseg.pred.weight '
                r'\(checkpoint \(21, 32, 1, 1\), model \(40, 32, 1, 1\)\)')
    with pytest.raises(ValueError, match=expected):
        load_checkpoint(model, {'model': state})
    assert torch.equal(model.heads['depth'].pred.weight, before)


class _Exploit:
    def __reduce__(self):
        return (os.system, ('touch /tmp/mtdp_pwned_by_checkpoint',))


def test_pickle_that_would_run_code_is_refused(mlore_reference, tmp_path):
    path = tmp_path / 'evil.pt'
    marker = '/tmp/mtdp_pwned_by_checkpoint'
    if os.path.exists(marker):
        os.remove(marker)
    torch.save({'model': {'x': torch.zeros(1)}, 'payload': _Exploit()}, path)
    with pytest.raises(ValueError, match='refusing to load .*pickled Python objects'):
        load_checkpoint(_fresh(mlore_reference), str(path))
    assert not os.path.exists(marker)
    raw = tmp_path / 'raw.pkl'
    raw.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(ValueError):
        load_checkpoint(_fresh(mlore_reference), str(raw))
    assert not os.path.exists(marker)


@pytest.mark.parametrize('content', [b'', b'hello, not a checkpoint\n', b'PK\x03\x04garbage'])
def test_file_that_is_not_a_checkpoint_is_refused(mlore_reference, tmp_path, content):
    path = tmp_path / 'broken.pt'
    path.write_bytes(content)
    with pytest.raises(ValueError, match='not a PyTorch checkpoint|not a state dict'):
        load_checkpoint(_fresh(mlore_reference), str(path))
    bad = tmp_path / 'broken.safetensors'
    bad.write_bytes(content)
    with pytest.raises(ValueError, match='not a valid safetensors file'):
        load_checkpoint(_fresh(mlore_reference), str(bad))


def test_non_tensor_mapping_and_missing_file(mlore_reference, tmp_path):
    with pytest.raises(ValueError, match='non-tensor entries'):
        load_checkpoint(_fresh(mlore_reference), {'model': {'a': 1}})
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        load_checkpoint(_fresh(mlore_reference), str(tmp_path / 'nope.pt'))
