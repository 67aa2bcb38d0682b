"""Find what keeps a forward pass from being captured as a CUDA graph, on any device.

A CUDA graph replays device work only: an operation that makes the host wait for the GPU or
copies data from pageable host memory fails during capture (or, worse, is baked in). In
PyTorch these show up at the dispatcher as:

- ``aten::lift_fresh``: ``torch.tensor(<python data>, device=...)`` inside ``forward``
  (on CUDA a synchronous host-to-device copy);
- ``aten::_local_scalar_dense``: ``.item()``, ``int(tensor)``, ``if tensor:``;
- ``aten::nonzero`` and ``aten::repeat_interleave`` without ``output_size``: outputs whose
  size depends on the data.

Running a forward under :func:`capture_blockers` lists each one with the source line that
issued it, so the check runs on the CPU too (tests) and gives the engine a clear reason
instead of a CUDA error.
"""

import traceback

from torch.utils._python_dispatch import TorchDispatchMode

HOST_SYNC_OPS = frozenset({'aten::lift_fresh', 'aten::_local_scalar_dense', 'aten::nonzero',
                           'aten::item', 'aten::masked_select'})


def _caller():
    """``file:line`` of the innermost project frame outside this module."""
    for frame in reversed(traceback.extract_stack()):
        path = frame.filename.replace('\\', '/')
        if '/mtdp_ros/' in path and not path.endswith('/graph_safety.py'):
            return f'{path.split("/mtdp_ros/", 1)[1]}:{frame.lineno}'
    return '<outside mtdp_ros>'


class _HostSyncDetector(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in HOST_SYNC_OPS or (name == 'aten::repeat_interleave'
                                     and kwargs.get('output_size') is None):
            entry = f'{name} at {_caller()}'
            if entry not in self.found:
                self.found.append(entry)
        return func(*args, **kwargs)


def capture_blockers(function, *args, **kwargs):
    """Run ``function(*args, **kwargs)``; return (blockers, result).

    ``blockers`` lists the host-synchronising operations it issued ('op at file:line'),
    empty when the call can be captured as a CUDA graph.
    """
    with _HostSyncDetector() as detector:
        result = function(*args, **kwargs)
    return detector.found, result
