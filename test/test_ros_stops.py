"""The node's stop-signal handlers, in this process (restored afterwards)."""

import os
import signal

import pytest

from mtdp_ros.ros.stops import StopSignals


@pytest.fixture
def stop_signals():
    saved = {number: signal.getsignal(number) for number in StopSignals.SIGNALS}
    signals = StopSignals()
    signals.install()
    try:
        yield signals
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def test_the_first_signal_during_start_up_interrupts_once(stop_signals):
    # os.kill to this process runs the handler before it returns.
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    assert stop_signals.requested.is_set()
    os.kill(os.getpid(), signal.SIGINT)         # the second one (ros2 launch): nothing
    os.kill(os.getpid(), signal.SIGTERM)


def test_after_start_up_signals_only_request_the_stop(stop_signals):
    stop_signals.interrupt_startup = False
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop_signals.requested.is_set()
    for _ in range(3):
        os.kill(os.getpid(), signal.SIGINT)
    assert stop_signals.requested.is_set()


def test_once_stopping_later_signals_are_ignored_for_good(stop_signals):
    stop_signals.interrupt_startup = False
    os.kill(os.getpid(), signal.SIGINT)
    stop_signals.ignore_further()
    # SIG_IGN, not a Python function: it survives the interpreter's finalization.
    assert all(signal.getsignal(number) is signal.SIG_IGN for number in StopSignals.SIGNALS)
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
