"""`mtdp bench` fails in one line: ONNX Runtime errors, checkpoints that do not fit."""

import json

import onnx
import pytest
from safetensors.torch import save_file
import torch

from mtdp_ros.cli import main as mtdp
from mtdp_ros.models import PRESETS
from mtdp_ros.runtime import create_engine, torch_engine

from ros_harness import TINY_MLORE


@pytest.fixture(scope='module')
def broken_onnx(tmp_path_factory):
    """A tiny exported graph with one node's operator renamed: ONNX Runtime refuses it."""
    directory = tmp_path_factory.mktemp('broken_onnx')
    config = directory / 'tiny.json'
    config.write_text(json.dumps(TINY_MLORE))
    path = str(directory / 'tiny.onnx')
    assert mtdp(['export', '--config', str(config), '--output', path]) == 0
    proto = onnx.load(path)
    proto.graph.node[len(proto.graph.node) // 2].op_type = 'NoSuchOperator'
    onnx.save(proto, path)
    return path


def test_bench_reports_an_onnxruntime_error_in_one_line(broken_onnx, capsys, monkeypatch):
    monkeypatch.delenv('MTDP_DEBUG', raising=False)
    code = mtdp(['bench', '--model', broken_onnx, '--backend', 'onnxruntime',
                 '--device', 'cpu', '--iters', '1', '--warmup', '0'])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert 'Traceback' not in err and len(lines) == 1, err
    assert lines[0].startswith('mtdp bench: error: onnxruntime ')
    assert 'NoSuchOperator' in lines[0]


def test_debug_shows_the_onnxruntime_traceback(broken_onnx, capsys):
    assert mtdp(['--debug', 'bench', '--model', broken_onnx, '--backend', 'onnxruntime',
                 '--device', 'cpu', '--iters', '1', '--warmup', '0']) == 2
    err = capsys.readouterr().err
    assert 'Traceback (most recent call last)' in err
    assert err.strip().splitlines()[-1].startswith('mtdp bench: error: onnxruntime ')


@pytest.fixture
def tiny_file_of_a_large_model(tmp_path):
    """A safetensors of a few hundred bytes whose config declares a 0.4 G-parameter model."""
    path = tmp_path / 'claims_vitL.safetensors'
    config = PRESETS['mlore_pascal_vitL']
    save_file({'encoder.pos_embed': torch.zeros(1, 1, 4)}, str(path),
              metadata={'format': 'mtdp_ros/1', 'mtdp_config': json.dumps(config.to_dict())})
    assert path.stat().st_size < 4000
    return path


def test_a_checkpoint_that_cannot_fit_is_refused_before_the_model_is_built(
        tiny_file_of_a_large_model, monkeypatch):
    def build_model(config):
        raise AssertionError('the model was built before the checkpoint was checked')

    monkeypatch.setattr(torch_engine, 'build_model', build_model)
    with pytest.raises(ValueError, match='checkpoint does not match the model') as caught:
        create_engine(str(tiny_file_of_a_large_model), device='cpu')
    assert 'missing keys' in str(caught.value)
    assert 'shape mismatches 1: encoder.pos_embed (checkpoint (1, 1, 4), model (1, 1025, ' \
        in str(caught.value)


def test_bench_refuses_it_in_one_line(tiny_file_of_a_large_model, capsys, monkeypatch):
    monkeypatch.delenv('MTDP_DEBUG', raising=False)
    monkeypatch.setattr(torch_engine, 'build_model', None)      # never reached
    assert mtdp(['bench', '--model', str(tiny_file_of_a_large_model), '--device', 'cpu',
                 '--iters', '1', '--warmup', '0']) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and 'checkpoint does not match the model' in lines[0]
