"""The node's engine start-up runs in a thread that ends with it (engine_setup)."""

import threading

import pytest

from mtdp_ros.ros.engine_setup import in_passing_thread, StartupError


def test_the_work_runs_in_another_thread_that_ends():
    seen = {}

    def work(value, scale=1):
        seen['thread'] = threading.current_thread()
        return value * scale

    assert in_passing_thread(work, 4, scale=3) == 12
    assert seen['thread'] is not threading.current_thread()
    assert not seen['thread'].is_alive()


def test_its_exception_is_raised_in_the_caller():
    def fail():
        raise StartupError('cannot create the engine: reason')

    with pytest.raises(StartupError, match='reason'):
        in_passing_thread(fail)
