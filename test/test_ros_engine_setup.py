"""The node's engine start-up runs in a thread that ends with it; the OpenMP spin default."""

import subprocess
import sys
import threading

import pytest

from mtdp_ros.ros import openmp_spin
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


def test_the_spin_default_is_set_unless_the_user_chose():
    assert openmp_spin.set_default(environment := {}) and environment == {
        'GOMP_SPINCOUNT': openmp_spin.SPIN_COUNT}
    for chosen in ({'GOMP_SPINCOUNT': '300000'}, {'OMP_WAIT_POLICY': 'PASSIVE'}):
        environment = dict(chosen)
        assert not openmp_spin.set_default(environment) and environment == chosen


# GNU OpenMP reads GOMP_SPINCOUNT when PyTorch loads it: the node's module must set it
# before anything it imports loads torch.
ORDER = r'''
import importlib.abc, os, sys
os.environ.pop('GOMP_SPINCOUNT', None)
os.environ.pop('OMP_WAIT_POLICY', None)
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == 'torch' and not seen:
            seen.append(os.environ.get('GOMP_SPINCOUNT'))
        return None
sys.meta_path.insert(0, Watch())
import mtdp_ros.perception_node
print(seen[0])
'''


def test_the_node_sets_the_spin_default_before_pytorch_loads():
    done = subprocess.run([sys.executable, '-c', ORDER], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == openmp_spin.SPIN_COUNT
