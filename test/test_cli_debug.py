"""``mtdp --debug`` / MTDP_DEBUG=1: the traceback of an error; without: one line."""

import subprocess
import sys

import pytest

from mtdp_ros.cli import main


def test_an_error_is_one_line_without_debug(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('MTDP_DEBUG', raising=False)
    assert main(['train', str(tmp_path / 'absent.yaml')]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f'mtdp train: error: training config not found: {tmp_path / "absent.yaml"}']


def test_infer_checks_its_input_before_loading_the_model(tmp_path, capsys, monkeypatch):
    # The model does not exist either: the input, checked first, is what the error names
    # (a mistyped path no longer waits for a model to load).
    monkeypatch.delenv('MTDP_DEBUG', raising=False)
    missing = tmp_path / 'nope.jpg'
    assert main(['infer', str(missing), '--model', 'no_such_model', '--out',
                 str(tmp_path / 'out')]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f'mtdp infer: error: input not found: {missing}']
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert main(['infer', str(empty), '--model', 'no_such_model', '--out',
                 str(tmp_path / 'out')]) == 2
    assert 'no images' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_debug_flag_prints_the_traceback_and_the_hidden_cause(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('MTDP_DEBUG', raising=False)
    assert main(['--debug', 'train', str(tmp_path / 'absent.yaml')]) == 2
    err = capsys.readouterr().err
    assert 'Traceback (most recent call last)' in err
    # The CommandError was raised "from None" out of the FileNotFoundError: shown anyway.
    assert 'FileNotFoundError' in err and 'mtdp_ros/cli/train.py' in err
    assert err.strip().splitlines()[-1].startswith('mtdp train: error: training config not')


@pytest.mark.slow  # console commands in processes: `make test-fast` leaves it out
@pytest.mark.parametrize('value, shown', [('1', True), ('0', False), ('', False)])
def test_mtdp_debug_environment_variable(tmp_path, value, shown):
    config = tmp_path / 'bad.yaml'
    config.write_text('train: {steps: -1}\n')
    proc = subprocess.run([sys.executable, '-m', 'mtdp_ros.cli', 'train', str(config)],
                          capture_output=True, text=True, timeout=300,
                          env={'MTDP_DEBUG': value, 'PATH': '/usr/bin:/bin',
                               'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 2, proc.stderr
    assert ('Traceback (most recent call last)' in proc.stderr) == shown, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        'mtdp train: error: train.steps must be a positive integer, got -1'
