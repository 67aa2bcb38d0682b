"""Give memory sized for a rare large frame back once frames are small again.

Measured (scripts/bench_node_memory.py, 10 frames of 3840 x 2160 then 640 x 480 ones): the
node kept about 510 MiB more than before the burst. Two holders, both outside the
node's own buffers (its stream returns to +10 MiB: bench_input_memory.py --burst):

- glibc's malloc raises its mmap threshold (up to 32 MiB) each time a large mmapped block
  is freed, so later frame-sized arrays come from the heap arenas, whose free space is
  not returned (about half). A fixed threshold (1 MiB) keeps blocks that large mmapped:
  returned to the system when freed.
- rmw_fastrtps makes every DDS history ``PREALLOCATED_WITH_REALLOC``: a payload buffer
  grown for a 4K message keeps that size for good (the rest, about 260 MiB). A Fast DDS
  profile with ``DYNAMIC`` histories returned it in a measurement (both processes with
  the profile and RMW_FASTRTPS_USE_QOS_FROM_XML=1), but with the profile in the node
  only, the node received no image: not done here (see README).

``prepare`` runs in ``main`` before rclpy.init. Nothing here needs rclpy.
"""

import ctypes
import ctypes.util
import os

# mallopt's parameter number of the mmap threshold (malloc.h), and the threshold used.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


def fix_mmap_threshold(environment=os.environ):
    """Keep frame-sized blocks mmapped (glibc); False when not done (not glibc, user set)."""
    if environment.get('MALLOC_MMAP_THRESHOLD_'):
        return False                    # the user's own choice
    name = ctypes.util.find_library('c')
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError, TypeError):
        return False


def prepare(environment=os.environ):
    """Set it up before rclpy.init; a sentence saying what was done ('' if nothing)."""
    if fix_mmap_threshold(environment):
        return f'malloc mmap threshold fixed at {MMAP_THRESHOLD >> 20} MiB'
    return ''
