"""Stop requests by signal for the perception node: SIGINT and SIGTERM, any number of them.

Ctrl-C under ``ros2 launch`` delivers two SIGINTs (the terminal's to the process group,
then the one launch forwards), and process managers send SIGTERM. The node must end with
exit code 0 and without a traceback in every case, so the handlers here never interrupt
the shutdown: they only record the request. :func:`leave_now` ends a process whose
PyTorch threads are still busy.
"""

import os
import signal
import sys
import threading


class StopSignals:
    """SIGINT and SIGTERM handlers that only request a stop; later signals are no-ops.

    rclpy's own handlers shut the context down and raise KeyboardInterrupt on every
    SIGINT, so a second Ctrl-C (``ros2 launch`` forwards one after the terminal's) lands
    in the middle of the cleanup. Here the first signal sets :attr:`requested`; only while
    ``interrupt_startup`` is true (creating the node, the autostart transitions: nothing
    to clean up yet) does it also raise KeyboardInterrupt, once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = threading.Event()
        self.interrupt_startup = True

    def install(self):
        """Install the handlers (main thread only)."""
        for number in self.SIGNALS:
            signal.signal(number, self._handle)

    def ignore_further(self):
        """Ignore every later SIGINT/SIGTERM (main thread only), for the rest of the process.

        Python's finalization puts the default handlers back for signals it handles; a
        Ctrl-C arriving then (the third of ``ros2 launch``'s group + forwarded ones, while
        PyTorch and the interpreter tear down) would kill the process with -2. Ignored
        signals stay ignored through finalization.
        """
        for number in self.SIGNALS:
            signal.signal(number, signal.SIG_IGN)

    def _handle(self, number, frame):
        if self.requested.is_set():
            return
        self.requested.set()
        if self.interrupt_startup:
            self.interrupt_startup = False
            raise KeyboardInterrupt


def leave_now(code):
    """End the process at once with exit ``code``, after flushing stdout and stderr.

    For a process whose work runs in PyTorch threads that cannot be interrupted (a frame
    in flight, a scene being rendered: seconds on a CPU): a normal interpreter exit would
    abort under them ("terminate called").
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
