"""The node's return of memory sized for a rare large frame (memory_return)."""

import ctypes.util
import platform
import subprocess
import sys

import pytest

from mtdp_ros.ros import memory_return


def test_a_trim_follows_frames_that_became_smaller_than_the_largest_since_the_last():
    trims = []
    memory = memory_return.LargeFrameMemory(trim=lambda: trims.append(1), settle=2)
    small, large = 640 * 480, 3840 * 2160
    assert not any(memory.after_frames(pixels) for pixels in (small, small, large, large))
    assert not memory.after_frames(small)        # the burst may be over: settling
    assert memory.after_frames(small)            # it is
    assert not any(memory.after_frames(small) for _ in range(5))   # once, not every frame
    # Frame sizes of one camera that vary a little never trim.
    assert not any(memory.after_frames(pixels) for pixels in (small, int(small * 0.6), small))
    assert not memory.after_frames(0)            # a batch with no decoded frame
    # A large frame between small ones starts the settling again.
    assert not any(memory.after_frames(pixels) for pixels in (large, small, large, small))
    assert memory.after_frames(small)
    assert len(trims) == 2


# Frees heap blocks the size of large-frame arrays (kept from being trimmed at the top of
# the heap by blocks between them), as the node does after a burst, and measures
# the resident memory before and after malloc_trim.
CHILD = r'''
import ctypes, ctypes.util, sys
from mtdp_ros.ros import memory_return
libc = ctypes.CDLL(ctypes.util.find_library('c'))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def rss_mib():
    with open('/proc/self/statm') as handle:
        return int(handle.read().split()[1]) * 4096 / 2 ** 20
libc.free(libc.malloc(30 << 20))     # a large block freed: glibc raises its mmap threshold
blocks, pins = [], []
for _ in range(40):
    block = libc.malloc(8 << 20)
    libc.memset(block, 1, 8 << 20)
    blocks.append(block)
    pins.append(libc.malloc(1 << 20))    # not touched: not resident
for block in blocks:
    libc.free(block)
before = rss_mib()
memory = memory_return.LargeFrameMemory()
memory.after_frames(3840 * 2160)
assert [memory.after_frames(640 * 480) for _ in range(memory_return.SETTLE)][-1]
print(before - rss_mib())
'''


@pytest.mark.skipif(platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc'
                    or not ctypes.util.find_library('c'), reason='glibc malloc_trim')
def test_the_trim_returns_freed_heap_blocks_of_large_frames_to_the_system():
    done = subprocess.run([sys.executable, '-c', CHILD], capture_output=True, text=True,
                          check=True)
    returned_mib = float(done.stdout)
    # 320 MiB were freed into the heap; without the trim they stay resident.
    assert returned_mib > 250, done.stdout
