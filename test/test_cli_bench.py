"""`mtdp bench --json` on tiny models: the real console command and in-process runs."""

import json
import os
import subprocess
import sys

import pytest

from mtdp_ros.cli import main as mtdp
from mtdp_ros.models import build_model, load_checkpoint, save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mtdp_command():
    script = os.path.join(os.path.dirname(sys.executable), 'mtdp')
    if os.path.isfile(script):
        return [script]
    return [sys.executable, '-c', 'import sys; from mtdp_ros.cli import main; sys.exit(main())']


@pytest.fixture(scope='module')
def tiny_checkpoints(tmp_path_factory, mlore_reference, taskdiffusion_reference):
    directory = tmp_path_factory.mktemp('bench')
    paths = {}
    for name, reference in (('mlore', mlore_reference),
                            ('taskdiffusion', taskdiffusion_reference)):
        model = load_checkpoint(build_model(reference['config']), reference['checkpoint'])
        paths[name] = save_checkpoint(model, str(directory / f'tiny_{name}.safetensors'))
    return paths


def _check_summary(summary, iters):
    assert summary['iters'] == iters
    assert 0 < summary['p50_ms'] <= summary['p95_ms']
    assert summary['fps'] > 0 and summary['peak_memory_mb'] > 0


@pytest.mark.slow  # the console command in a process: `make test-fast` leaves it out
def test_mtdp_bench_json_command(tiny_checkpoints):
    result = subprocess.run(
        _mtdp_command() + ['bench', '--model', tiny_checkpoints['mlore'], '--device', 'cpu',
                           '--iters', '4', '--warmup', '1', '--image-size', '120x200', '--json'],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert 'network alone' in result.stdout and 'image to outputs' in result.stdout
    assert report['model'] == 'tiny_mlore' and report['backend'] == 'torch'
    assert report['device'] == 'cpu' and report['precision'] == 'fp32'
    assert report['reparameterized'] is True and report['random_weights'] is False
    assert report['image_input_size'] == [120, 200] and report['image_size'] == [64, 96]
    _check_summary(report['network'], 4)
    _check_summary(report['end_to_end'], 4)
    assert set(report['end_to_end']['stages_p50_ms']) == {
        'preprocess_ms', 'model_ms', 'postprocess_ms'}


def test_mtdp_bench_diffusion_steps_and_tasks(tiny_checkpoints, capsys):
    code = mtdp(['bench', '--model', tiny_checkpoints['taskdiffusion'], '--device', 'cpu',
                 '--steps', '2', '--tasks', 'depth,edge', '--iters', '2', '--warmup', '0',
                 '--json'])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report['steps'] == 2 and report['tasks'] == ['depth', 'edge']
    _check_summary(report['network'], 2)


@pytest.mark.parametrize('args, message', [
    (['--steps', '2'], 'TaskDiffusion'),
    (['--iters', '0'], '--iters'),
    (['--image-size', '480by640'], '--image-size'),
    (['--providers', 'cuda'], 'onnxruntime backend'),
    (['--tasks', 'flow'], 'unknown tasks'),
])
def test_mtdp_bench_refuses_bad_requests(tiny_checkpoints, capsys, args, message):
    code = mtdp(['bench', '--model', tiny_checkpoints['mlore'], '--device', 'cpu',
                 '--iters', '1', '--warmup', '0', *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_mtdp_bench_unknown_model(capsys):
    assert mtdp(['bench', '--model', 'no_such_preset', '--iters', '1']) == 2
    assert 'unknown model' in capsys.readouterr().err


@pytest.mark.parametrize('command', ['bench', 'export'])
def test_config_is_a_deprecated_alias_of_model(command, capsys):
    # What bench and export called --model before: it still names the model, and says
    # once that it is deprecated.
    code = mtdp([command, '--config', 'no_such_preset', '--config', 'no_such_preset',
                 *(['--output', 'x.onnx'] if command == 'export' else ['--iters', '1'])])
    err = capsys.readouterr().err
    assert code == 2 and "unknown model 'no_such_preset'" in err
    assert err.count('--config is deprecated; use --model') == 1


def test_export_requires_a_model(capsys):
    assert mtdp(['export', '--output', 'x.onnx']) == 2
    assert '--model is required' in capsys.readouterr().err
