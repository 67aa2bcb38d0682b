"""Give memory sized for a rare large frame back once frames are small again.

Measured (scripts/bench_node_memory.py, 4K frames then 640 x 480 ones): the node kept
hundreds of MiB more than before the burst. Two holders, both outside the node's own
buffers (its stream returns to +10 MiB: bench_input_memory.py --burst):

- glibc's malloc raises its mmap threshold (up to 32 MiB) each time a large mmapped block
  is freed, so later frame-sized arrays come from the heap arenas, whose free space stays
  resident. :class:`LargeFrameMemory` calls ``malloc_trim(0)`` once the frames have been
  at least ``SHRINK`` times smaller than the largest since the last trim for ``SETTLE``
  batches: the free pages of every arena go back to the system.

  An earlier version fixed the mmap threshold at 1 MiB instead, so every block that large
  was mmapped and returned when freed. That cost every frame: each activation tensor over
  1 MiB was a fresh mapping, page-faulted in and zeroed by the kernel. Measured on the
  2-core VM (default MLoRE, batch of two 640 x 480 frames, inference thread): about 38 000
  minor page faults and 0.1 s of system time per batch, a batch 1.2-1.5x slower.
- rmw_fastrtps makes every DDS history ``PREALLOCATED_WITH_REALLOC``: a payload buffer
  grown for a 4K message keeps that size for good. A Fast DDS profile with ``DYNAMIC``
  histories returned it in a measurement (both processes with the profile and
  RMW_FASTRTPS_USE_QOS_FROM_XML=1), but with the profile in the node only, the node
  received no image: not done here (see README).

Nothing here needs rclpy.
"""

from mtdp_ros.runtime.memory import release_freed_host_memory

# Frames this many times smaller (in pixels) than the largest since the last trim end a
# burst of large frames; frames of one camera vary by far less.
SHRINK = 2
# Batches of small frames before the trim: the buffers sized for the last large frame
# (outputs still being published, caches that follow the frame size) are freed by then.
SETTLE = 3


class LargeFrameMemory:
    """Trims the C heap when frames shrink after larger ones (see the module docstring)."""

    def __init__(self, trim=release_freed_host_memory, shrink=SHRINK, settle=SETTLE):
        self._trim = trim
        self._shrink = shrink
        self._settle = settle
        self._largest = 0               # pixels of the largest frame since the last trim
        self._small = 0                 # batches of small frames since the last large one

    def after_frames(self, pixels):
        """The frames of one batch are done; ``pixels``: the largest one's. True if trimmed."""
        pixels = int(pixels)
        if pixels <= 0:
            return False
        if pixels * self._shrink > self._largest:
            self._largest = max(self._largest, pixels)
            self._small = 0
            return False
        self._small += 1
        if self._small < self._settle:
            return False
        self._largest, self._small = pixels, 0
        self._trim()
        return True
