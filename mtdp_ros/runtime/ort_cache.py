"""Where ONNX Runtime's exported graphs and TensorRT engines are cached, and under what key.

An exported graph is keyed by everything that changes it: the model config, the step count,
whether MLoRE is fused, the export format, a dynamic batch axis and the checkpoint's
identity (path, size and modification time of a file; a digest of the tensors of an
in-memory state dict).
"""

import hashlib
import json
import os

import torch


def default_cache_dir():
    """Where exported graphs and TensorRT engines are cached (``MTDP_CACHE_DIR`` overrides)."""
    root = os.environ.get('MTDP_CACHE_DIR')
    if root:
        return root
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'mtdp_ros')


def checkpoint_identity(checkpoint):
    """Return a string that changes when the checkpoint's content changes."""
    if checkpoint is None:
        return 'random'
    if isinstance(checkpoint, (str, os.PathLike)):
        stat = os.stat(checkpoint)
        return f'{os.path.abspath(checkpoint)}:{stat.st_size}:{stat.st_mtime_ns}'
    digest = hashlib.sha256()
    state = checkpoint.get('model', checkpoint) if isinstance(checkpoint, dict) else checkpoint
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cached_graph_path(cache_dir, model_name, config, steps, checkpoint_key, reparameterized,
                      format_tag, dynamic_batch=False):
    """Where the cached export of one (config, steps, weights, form, batch kind) lives."""
    key = {'config': config.to_dict(), 'steps': steps, 'checkpoint': checkpoint_key,
           'reparameterized': reparameterized, 'format': format_tag}
    if dynamic_batch:
        # Only then: batch-1 graphs keep the paths (and caches) they always had.
        key['batch'] = 'dynamic'
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    suffix = f'-s{steps}' if steps is not None else ''
    if dynamic_batch:
        suffix += '-batch'
    return os.path.join(cache_dir, 'onnx', f'{model_name}-{digest}{suffix}.onnx')
