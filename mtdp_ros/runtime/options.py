"""The engine options in one place: their choices, the step-count rule, the device, the seed.

The node's parameters, the launch files, every ``mtdp`` command, training and the engines
import their choices and checks from here, so a new backend, device or precision, or a new
step limit, is one edit. A value is validated once, where it enters (an engine argument, a
node parameter, a launch argument, a command-line option); what has passed is trusted.

This module imports nothing heavy at load time (``launch`` files import it).
"""

import math
import numbers

BACKENDS = ('torch', 'onnxruntime')
DEVICES = ('auto', 'cuda', 'cpu')
PRECISIONS = ('fp32', 'fp16')
# The ``reparameterize`` option (see mtdp_ros.runtime.memory).
REPARAMETERIZE = ('auto', 'true', 'false')
# More DDIM steps than this is a typo, not a request (the published models use 3).
MAX_STEPS = 100


def check_choice(name, value, choices):
    """Return ``value`` if it is one of ``choices``; ValueError naming the option otherwise."""
    if value not in choices:
        raise ValueError(f'{name} must be one of {choices}, got {value!r}')
    return value


def is_diffusion(config):
    """Whether the family of ``config`` (a config or a family name) samples in steps."""
    from mtdp_ros.models.registry import get_family
    return get_family(getattr(config, 'family', config)).diffusion


def check_steps(steps, config, name='steps'):
    """Validated DDIM step count (an int in 1..MAX_STEPS) of a model of ``config``.

    ``None`` (the model's default) is returned as is. ``config``: a model config or a
    family name. ``name``: the option as the user wrote it (``steps``, ``--steps``),
    named in the ValueError.
    """
    if steps is None:
        return None
    if not is_diffusion(config):
        family = getattr(config, 'family', config)
        raise ValueError(f'{name} applies to TaskDiffusion models only; {family} has no '
                         f'denoising steps')
    if isinstance(steps, bool) or not isinstance(steps, numbers.Real) \
            or not math.isfinite(steps) or int(steps) != steps:
        raise ValueError(f'{name} must be a positive integer, got {steps!r}')
    steps = int(steps)
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f'{name} must lie in 1..{MAX_STEPS}, got {steps}')
    return steps


def check_seed(seed):
    """Validate a sampler seed (a non-negative integer)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Real) \
            or not math.isfinite(seed) or int(seed) != seed or seed < 0:
        raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
    return int(seed)


def resolve_device(device, name='device'):
    """'cuda' or 'cpu' for a requested device (one of DEVICES).

    'auto' gives CUDA when PyTorch has it, else the CPU with a logged warning; 'cuda' when
    CUDA is absent is a RuntimeError saying why and what to use instead. ``name``: the
    option as the user wrote it (``device``, ``--device``, ``train.device``).
    """
    import torch
    check_choice(name, device, DEVICES)
    if device == 'auto':
        if torch.cuda.is_available():
            return 'cuda'
        from .engine import warn
        warn(f'{name} auto: CUDA is not available, running on the CPU (slow)')
        return 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError(f'{name} cuda was requested but CUDA is not available '
                           f'(no GPU, no driver, or a CPU-only PyTorch build); '
                           f'use {name} auto or cpu')
    return device
