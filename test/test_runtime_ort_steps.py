"""ONNX Runtime step changes: background exports one at a time, what runs is reported.

Concurrent step changes used to start one torch.onnx.export per count at once; the exporter
keeps global state ("GLOBALS.in_onnx_export must be False"), so 6 of 7 failed, the failure
was kept for good, and the step count the node showed did not run.
"""

import threading

import numpy as np
import pytest

from mtdp_ros.runtime import create_engine

from ros_harness import TINY_TASKDIFFUSION

# With the count that serves: CACHE_LIMIT (4) sessions, none evicted.
COUNTS = (2, 3, 4)


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(dict(TINY_TASKDIFFUSION), backend='onnxruntime', device='cpu',
                           cache_dir=str(tmp_path), steps=1)
    yield engine
    engine.close()


def test_concurrent_step_changes_all_export(engine):
    image = np.full((64, 96, 3), 90, np.uint8)
    engine.infer(image)
    start = threading.Barrier(len(COUNTS))

    def change(steps):
        start.wait()
        engine.prepare_steps(steps)

    threads = [threading.Thread(target=change, args=(steps,)) for steps in COUNTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # While exports are queued the count that served keeps serving, and says so.
    pending = [s for s in COUNTS if engine.steps_status(s) != 'ready']
    for steps in pending:
        assert engine.running_steps(steps) == 1
    for steps in COUNTS:
        assert engine.wait_for_steps(steps, timeout=600), engine.steps_status(steps)
        assert engine.steps_status(steps) == 'ready'
        assert engine.check_steps(steps) is None
        engine.infer(image, steps=steps)
        assert engine.last_steps == steps and engine.running_steps(steps) == steps
    assert set(COUNTS) <= set(engine.available_steps())


def test_a_failed_preparation_is_reported_and_retried(engine, monkeypatch):
    image = np.full((64, 96, 3), 90, np.uint8)
    engine.infer(image)
    original = engine._new_session
    failures = [1]

    def flaky(steps):
        if failures:
            failures.pop()
            raise RuntimeError('disk full')
        return original(steps)

    monkeypatch.setattr(engine, '_new_session', flaky)
    assert engine.prepare_steps(2) is False
    assert not engine.wait_for_steps(2, timeout=600)
    assert engine.steps_status(2).startswith('failed: preparing 2 steps failed')
    assert 'disk full' in engine.steps_status(2)
    # Asked for 2, 1 runs: the engine says so.
    engine.infer(image, steps=2)
    assert engine.last_steps == 1 and engine.running_steps(2) == 1
    # The failure is not kept for good: asking again tries again.
    assert engine.check_steps(2) is None
    engine.prepare_steps(2)
    assert engine.wait_for_steps(2, timeout=600)
    engine.infer(image, steps=2)
    assert engine.last_steps == 2 and engine.running_steps(2) == 2
