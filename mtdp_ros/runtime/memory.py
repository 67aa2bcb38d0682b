"""Whether to run MLoRE re-parameterised: the ``reparameterize`` option of the engines.

The fused MLoRE keeps every expert as a dense C x C x 3 x 3 kernel, so it holds 2.2x to
3.4x the state of the train form (``mtdp_ros.models.reparam.model_memory``). It needs fewer
FLOPs, but on a small shared-memory device (an 8 GB Jetson) it may not fit beside the rest
of the robot. ``auto`` fuses when the fused weights take at most ``AUTO_FRACTION`` of the
memory the device has free now, and otherwise keeps the train form, saying why.
"""

import re

import torch

from .engine import LOGGER
from .options import REPARAMETERIZE as CHOICES
# The rest of the free memory is left for activations, CUDA graphs, the ONNX Runtime arena
# and the other processes of the robot.
AUTO_FRACTION = 0.5
_MEM_AVAILABLE = re.compile(r'^MemAvailable:\s+(\d+)\s+kB', re.MULTILINE)


def normalize_option(value):
    """'auto', 'true' or 'false' for an option value (booleans accepted); ValueError else."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    text = str(value).strip().lower()
    if text not in CHOICES:
        raise ValueError(f'reparameterize must be one of {CHOICES} (or a bool), got {value!r}')
    return text


def available_cpu_bytes(meminfo='/proc/meminfo'):
    """RAM available to a new allocation (MemAvailable of /proc/meminfo); None if unknown."""
    try:
        with open(meminfo) as handle:
            match = _MEM_AVAILABLE.search(handle.read())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def free_device_bytes(device):
    """Free memory of ``device`` ('cuda[:n]' via torch.cuda.mem_get_info, or 'cpu')."""
    device = torch.device(device)
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return available_cpu_bytes()


def model_memory_bytes(config, element_bytes):
    """Bytes of the fused form of ``config`` (the train form without MLoRE blocks)."""
    from mtdp_ros.models.reparam import model_memory
    sizes = model_memory(config)
    return (sizes['fused_elements'] or sizes['train_elements']) * element_bytes


def decide(config, option, device, precision, free_bytes=None, model=None):
    """``(fuse, reason)`` for ``option`` on ``device`` (see the module docstring).

    ``free_bytes`` overrides the measured free memory (tests, planning for another device).
    ``model``: the built train-form model, counted instead of a ``meta`` build.
    A model with no fusable block (no ``fuse()``, see ``models.reparam``) never fuses.
    """
    option = normalize_option(option)
    from mtdp_ros.models.reparam import model_memory
    sizes = model_memory(config, model)
    if sizes['fused_elements'] is None:
        return False, f'{config.family} has no block to fuse (no MLoRE blocks)'
    if option != 'auto':
        return option == 'true', f'reparameterize {option}'
    element_bytes = 2 if precision == 'fp16' and torch.device(device).type == 'cuda' else 4
    fused = sizes['fused_elements'] * element_bytes
    train = sizes['train_elements'] * element_bytes
    if free_bytes is None:
        free_bytes = free_device_bytes(device)
    where = f'{torch.device(device).type} free memory'
    if free_bytes is None:
        return True, f'auto: {where} unknown; fused ({fused / 2 ** 20:.0f} MiB)'
    budget = AUTO_FRACTION * free_bytes
    host_free = available_cpu_bytes() if torch.device(device).type == 'cuda' else None
    host_needed = sizes['fused_elements'] * 4
    if host_free is not None and host_needed > host_free:
        # The fused form is made on the CPU in fp32 first (a Jetson: the same memory).
        return False, (f'auto: making the fused form needs {host_needed / 2 ** 20:.0f} MiB '
                       f'of RAM (fp32, on the CPU), only {host_free / 2 ** 20:.0f} MiB '
                       f'available; running the train form ({train / 2 ** 20:.0f} MiB)')
    if fused <= budget:
        return True, (f'auto: fused weights {fused / 2 ** 20:.0f} MiB fit in '
                      f'{AUTO_FRACTION:.0%} of the {free_bytes / 2 ** 20:.0f} MiB of {where}')
    return False, (f'auto: the fused weights ({fused / 2 ** 20:.0f} MiB) exceed '
                   f'{AUTO_FRACTION:.0%} of the {free_bytes / 2 ** 20:.0f} MiB of {where}; '
                   f'running the train form ({train / 2 ** 20:.0f} MiB, more FLOPs)')


def release_freed_host_memory():
    """Return freed heap pages to the OS (glibc ``malloc_trim``); False where unavailable.

    The train-form blocks freed while fusing stay in the C heap otherwise: resident on the
    CPU, and on a Jetson that is the memory the GPU uses too.
    """
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library('c')
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):
        return False


def log_decision(fuse, reason):
    """Log the choice: a fallback to the train form is a warning, anything else info."""
    if reason.startswith('auto') and not fuse:
        LOGGER.warning('MLoRE not re-parameterised: %s', reason)
    else:
        LOGGER.info('MLoRE %s: %s', 're-parameterised' if fuse else 'train form', reason)
