"""``mtdp eval``: the focal-correction options of the command."""

import json
import math

import pytest

from mtdp_ros.cli import main as mtdp

# Slow (evaluates the shipped model): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow


def test_eval_command_focal_options(capsys):
    base = ['eval', '--model', 'default', '--data', 'synthetic', '--num', '2', '--device',
            'cpu', '--json']
    assert mtdp(base + ['--focal-scale', '1.6', '--focal-correction', 'scale']) == 0
    captured = capsys.readouterr()
    corrected = json.loads(captured.out.strip().splitlines()[-1])
    assert 'focal x1.6, focal correction scale' in captured.err
    assert mtdp(base + ['--focal-scale', '1.6', '--no-focal-correction']) == 0
    captured = capsys.readouterr()
    uncorrected = json.loads(captured.out.strip().splitlines()[-1])
    assert 'no focal correction' in captured.err
    assert corrected['depth']['abs_rel'] != uncorrected['depth']['abs_rel']
    assert math.isfinite(corrected['depth']['abs_rel'])
    # Rescaling depth leaves semantics, normals and edges as they are.
    assert corrected['semseg'] == uncorrected['semseg']
    # The default (hybrid) rescales a zoomed camera's depth by the factor's square root:
    # neither the full factor nor none.
    assert mtdp(base + ['--focal-scale', '1.6']) == 0
    hybrid = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert hybrid['depth']['abs_rel'] not in (corrected['depth']['abs_rel'],
                                              uncorrected['depth']['abs_rel'])
    assert hybrid['semseg'] == uncorrected['semseg']
    # The canonical camera shows the network a smaller image: semantics change too.
    assert mtdp(base + ['--focal-scale', '1.6', '--focal-correction', 'canonical']) == 0
    canonical = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert canonical['depth']['abs_rel'] not in (corrected['depth']['abs_rel'],
                                                 uncorrected['depth']['abs_rel'])
    for bad, message in ((['--focal-scale', '0'], 'positive'),
                         (['--focal-scale', 'nan'], 'positive'),
                         (['--data', 'nyud:/nonexistent', '--focal-scale', '2'],
                          'synthetic only')):
        assert mtdp(base + bad) != 0
        err = capsys.readouterr().err
        assert message in err and 'Traceback' not in err
