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
