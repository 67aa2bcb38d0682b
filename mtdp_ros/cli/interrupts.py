"""SIGINT and SIGTERM as an exception, so that a command cleans up and exits with one line.

By default SIGTERM ends Python at once (no ``finally``, no ``__exit__``: a half-written
output stays) and SIGINT raises KeyboardInterrupt (a traceback). Inside
:func:`raised_as_interrupted` both raise :class:`Interrupted`, which unwinds through the
commands' cleanup like any exception; a second signal during that cleanup is ignored so
that the cleanup finishes.
"""

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The process received SIGINT or SIGTERM (a BaseException, as KeyboardInterrupt)."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self):
        """The signal's name, e.g. SIGTERM."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self):
        """The shell's code of a process ended by the signal: 128 + its number."""
        return 128 + int(self.signum)


@contextlib.contextmanager
def raised_as_interrupted():
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only).

    Elsewhere (a worker thread, e.g. inside a Ray actor) signals cannot be handled in
    Python and the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum, frame):
        if raised:      # cleaning up after the first one: let it finish
            return
        raised.append(signum)
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)
