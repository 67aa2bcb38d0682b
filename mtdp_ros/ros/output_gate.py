"""The gate between the inference thread and the node's output publishers.

A lifecycle transition (deactivate, cleanup, shutdown) must return within a bounded time
even when a frame takes seconds, and no output of that frame may appear after the
transition. Waiting for the frame would block the executor (parameters, diagnostics and
other transitions with it); so the transition closes the gate instead and returns. Each
frame takes a ticket when it starts; a message goes out only while the gate is open and
still in the frame's opening (a reactivation opens a new one), checked and published
under one lock, so once :meth:`OutputGate.close` has returned nothing of an earlier frame
can be published. The frame itself runs to its end in the inference thread (PyTorch
cannot be interrupted) and its outputs are dropped.

Nothing here needs rclpy.
"""

import contextlib
import threading


class OutputGate:
    """Whether the frame in flight may still publish (see the module docstring)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._opening = 0               # counts opens and closes: a ticket names one
        self._open = False
        self._frame_ticket = None       # the ticket of the frame in flight

    def open(self):
        """Let frames started from now on publish (activate)."""
        with self._lock:
            self._opening += 1
            self._open = True

    def close(self):
        """Refuse every output from now on; returns once no message is being published."""
        with self._lock:
            self._opening += 1
            self._open = False

    def begin_frame(self):
        """Start a frame (inference thread): it may publish until the next close."""
        with self._lock:
            self._frame_ticket = self._opening if self._open else None

    def frame_allowed(self):
        """Whether the frame in flight may still publish."""
        with self._lock:
            return self._allowed()

    @contextlib.contextmanager
    def publishing(self):
        """Hold the gate for one message; yields whether the frame may publish it."""
        with self._lock:
            yield self._allowed()

    def _allowed(self):
        return self._open and self._frame_ticket == self._opening
