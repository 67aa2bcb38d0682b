"""How long GNU OpenMP threads spin before they sleep: a default for the node's process.

Imported by :mod:`mtdp_ros.perception_node` before anything loads PyTorch, because GNU
OpenMP (libgomp, PyTorch's CPU thread pool) reads ``GOMP_SPINCOUNT`` once, when it is
loaded. Importing this module sets the default (see :func:`set_default`).

Why: between two parallel operators a thread of PyTorch's team waits for the next. GNU
OpenMP lets it spin for up to ``GOMP_SPINCOUNT`` iterations (300 000 by default, about 3
ms) and then sleep, but only 100 iterations when the process has more OpenMP threads than
cores (the node avoids that: its start-up runs in a passing thread, see
:func:`~mtdp_ros.ros.engine_setup.in_passing_thread`). Spinning long makes one process
fast and starves every other process on the cores; sleeping at once makes it slow.
Measured on the 2-core VM (default MLoRE, 640 x 480, 2 threads, one run each):

- the engine alone, a batch of two frames in a second thread, median of 10: 90.5 ms
  (300 000), 96.5 ms (10 000), 126.5 ms (1 000), 194 ms (100);
- ``scripts/bench_cameras.py --cameras 2 --seconds 20`` (one node with two cameras / two
  nodes, frames/s): 16.8 / 5.8 with 10 000, 12.8 / 10.3 with 3 000, 16.4 / 16.0 with
  1 000. A long spin starves the second node; before this module (spin throttled to
  100 by a second team) one node served 9.6-13.7 and two nodes 13.1-16.0.

1 000 iterations bridge the short gaps between operators, yet a thread waiting for the
next frame sleeps at once instead of holding a core that other processes need.
"""

import os

SPIN_COUNT = '1000'


def set_default(environment=os.environ):
    """Set ``GOMP_SPINCOUNT`` unless the user set it or ``OMP_WAIT_POLICY``; True if set."""
    if 'GOMP_SPINCOUNT' in environment or 'OMP_WAIT_POLICY' in environment:
        return False
    environment['GOMP_SPINCOUNT'] = SPIN_COUNT
    return True


set_default()
