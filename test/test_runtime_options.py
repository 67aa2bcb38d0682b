"""The engine options have one home: the node, the launch files and the CLI use its values."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from mtdp_ros.cli import build_parser
from mtdp_ros.ros import launch_support, parameters
from mtdp_ros.runtime import options


@pytest.mark.parametrize('steps, message', [
    (0, 'steps must lie in 1..100, got 0'),
    (options.MAX_STEPS + 1, f'must lie in 1..{options.MAX_STEPS}'),
    (2.5, 'steps must be a positive integer, got 2.5'),
    (float('nan'), 'must be a positive integer'),
    (True, 'must be a positive integer'),
    ('3', 'must be a positive integer'),
])
def test_step_rule_names_the_problem(steps, message):
    with pytest.raises(ValueError, match=message):
        options.check_steps(steps, 'taskdiffusion')


def test_step_rule_accepts_whole_numbers_and_names_the_option():
    assert options.check_steps(np.int64(3), 'taskdiffusion') == 3
    assert options.check_steps(None, 'mlore') is None
    with pytest.raises(ValueError, match='--steps applies to TaskDiffusion models only; '
                                         'mlore has no denoising steps'):
        options.check_steps(2, 'mlore', '--steps')


def test_resolve_device_names_the_option_the_user_gave(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(RuntimeError, match='--device cuda was requested but CUDA is not '
                                           'available .* use --device auto or cpu'):
        options.resolve_device('cuda', '--device')
    assert options.resolve_device('auto') == 'cpu'
    with pytest.raises(ValueError, match="train.device must be one of"):
        options.resolve_device('tpu', 'train.device')


def test_node_launch_and_cli_take_their_choices_from_options():
    spec = parameters.SPEC_BY_NAME
    assert spec['engine.backend'].choices == options.BACKENDS
    assert spec['engine.device'].choices == options.DEVICES
    assert spec['engine.precision'].choices == options.PRECISIONS
    assert spec['engine.reparameterize'].choices == options.REPARAMETERIZE
    assert spec['diffusion.steps'].int_range == (0, options.MAX_STEPS)
    assert launch_support.parse_steps(str(options.MAX_STEPS)) == options.MAX_STEPS
    with pytest.raises(launch_support.LaunchArgumentError, match=f'0..{options.MAX_STEPS}'):
        launch_support.parse_steps(str(options.MAX_STEPS + 1))
    subcommands = build_parser()._subparsers._group_actions[0].choices
    for command in ('bench', 'infer', 'bag'):
        actions = {a.dest: a for a in subcommands[command]._actions}
        assert tuple(actions['device'].choices) == options.DEVICES, command
        assert tuple(actions['backend'].choices) == options.BACKENDS, command
        assert tuple(actions['precision'].choices) == options.PRECISIONS, command
    for command in ('eval', 'train'):
        actions = {a.dest: a for a in subcommands[command]._actions}
        assert tuple(actions['device'].choices) == options.DEVICES, command


def test_options_and_launch_support_load_without_pytorch():
    # Launch files import launch_support (and through it the options): no PyTorch there.
    code = ('import sys, mtdp_ros.ros.launch_support, mtdp_ros.runtime.options; '
            'sys.exit(int("torch" in sys.modules))')
    assert subprocess.run([sys.executable, '-c', code], timeout=120).returncode == 0
