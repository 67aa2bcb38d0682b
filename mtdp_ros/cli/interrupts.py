"""SIGINT and SIGTERM as an exception, so that a command cleans up and exits with one line.

By default SIGTERM ends Python at once (no ``finally``, no ``__exit__``: a half-written
output stays) and SIGINT raises KeyboardInterrupt (a traceback). Inside
:func:`raised_as_interrupted` both raise :class:`Interrupted`, which unwinds through the
commands' cleanup like any exception; a second signal during that cleanup is ignored so
that the cleanup finishes. A library that installs its own handlers meanwhile (``ray.init``
does) is overruled by :func:`reinstall`. Code that spends its time in a C extension which
runs Python's signal handlers itself (Ray's ``wait``: an exception raised there comes out
as a SystemError) records the signal instead, inside :func:`deferred`, and raises it from
Python with :func:`check`.
"""

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The handler of the innermost raised_as_interrupted block, if any.
_ACTIVE = []
# Inside deferred(): signals received and not raised yet.
_DEFERRING = []
_PENDING = []


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
        if _DEFERRING:
            _PENDING.append(signum)
            return
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    _ACTIVE.append(handler)
    try:
        yield
    finally:
        _ACTIVE.remove(handler)
        for signum, action in previous.items():
            signal.signal(signum, action)


@contextlib.contextmanager
def deferred():
    """Within the block a signal is only recorded; :func:`check` raises it."""
    _DEFERRING.append(True)
    try:
        yield
        check()
    finally:
        _DEFERRING.pop()
        _PENDING.clear()


def check():
    """Raise :class:`Interrupted` for a signal recorded inside :func:`deferred`."""
    if _PENDING:
        raise Interrupted(_PENDING[0])


def reinstall():
    """Put the active block's handlers back (after a library replaced them)."""
    if _ACTIVE and threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _ACTIVE[-1])
