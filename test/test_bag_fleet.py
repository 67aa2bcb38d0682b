"""``mtdp bag IN1 IN2 ... --out DIR``: many bags, one after another or on a local Ray cluster.

Bags are written here with rosbags (mcap and sqlite3 folders, a bare .mcap file, a damaged
one, one without the image topic). Checked: one output bag per input with a manifest,
outputs equal to the single-bag command's, failures reported with their reason while the
others finish, re-runs that skip what is done and redo what changed, a Ray worker killed
in the middle of a bag (the bag retried, in the output exactly once), and connecting to a
running cluster by its address. One Ray cluster (2 CPUs) serves the whole module.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from rosbags.rosbag2 import Reader
from rosbags.rosbag2.enums import StoragePlugin

from mtdp_ros.cli import main
from test_bag_guard import TOPIC, write_bag
from ros_harness import TINY_MLORE, write_checkpoint, write_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ['--tasks', 'depth,edge', '--no-color']     # fewer outputs: less time per frame


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """The tiny MLoRE config and checkpoint."""
    directory = tmp_path_factory.mktemp('model')
    return write_config(directory, TINY_MLORE), write_checkpoint(directory, TINY_MLORE)


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    """A folder holding bags a (mcap, 3 frames), b (sqlite3, 4), damaged, wrong; c.mcap."""
    root = tmp_path_factory.mktemp('bags')
    folder = root / 'recordings'
    folder.mkdir()
    write_bag(str(folder / 'a'), 3)
    write_bag(str(folder / 'b'), 4, storage=StoragePlugin.SQLITE3)
    write_bag(str(folder / 'damaged'), 3)
    mcap_file = str(folder / 'damaged' / 'damaged.mcap')
    with open(mcap_file, 'r+b') as handle:
        handle.truncate(os.path.getsize(mcap_file) // 2)
    write_bag(str(folder / 'wrong'), 2, topic='/front/image_raw')
    write_bag(str(root / 'c'), 2)
    shutil.copy(str(root / 'c' / 'c.mcap'), str(root / 'c.mcap'))
    return {'folder': str(folder), 'c': str(root / 'c.mcap'), 'root': str(root)}


def run_bag(model, *args):
    """``mtdp bag`` with the tiny model on the CPU in this process; the exit code."""
    return main(['bag', *args, '--image-topic', TOPIC, '--model', model[0], '--checkpoint',
                 model[1], '--device', 'cpu', '--no-progress', *FAST])


def read_bag(path):
    """{topic: [(bag time, raw bytes)]} of a bag."""
    topics = {}
    with Reader(path) as reader:
        for connection, timestamp, raw in reader.messages():
            topics.setdefault(connection.topic, []).append((timestamp, bytes(raw)))
    return topics


def decoded(path):
    """{topic: [(bag time, header, size, encoding, pixels)]} of a bag of Image outputs.

    (Serialized bytes are not compared: rclpy's CDR leaves alignment padding unset.)
    """
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    topics = {}
    for topic, records in read_bag(path).items():
        for timestamp, raw in records:
            msg = deserialize_message(raw, Image)
            topics.setdefault(topic, []).append(
                (timestamp, msg.header.stamp.sec, msg.header.frame_id, msg.height, msg.width,
                 msg.encoding, msg.step, bytes(msg.data)))
    return topics


def assert_same_outputs(got, want):
    """Bags of ``decoded`` outputs equal up to float rounding of another thread count.

    Ray's workers run PyTorch on one thread (Ray sets OMP_NUM_THREADS=1) and the driver on
    the machine's: sums in another order change the last bits of float outputs, and on
    rare ties a label or a colour level. Headers, sizes and encodings must be equal.
    """
    import numpy as np
    assert sorted(got) == sorted(want)
    for topic in want:
        assert len(got[topic]) == len(want[topic]), topic
        for mine, theirs in zip(got[topic], want[topic]):
            assert mine[:-1] == theirs[:-1], topic
            if mine[5].startswith('32FC'):
                np.testing.assert_allclose(np.frombuffer(mine[-1], np.float32),
                                           np.frombuffer(theirs[-1], np.float32),
                                           rtol=1e-4, atol=1e-5, err_msg=topic)
            else:
                a = np.frombuffer(mine[-1], np.uint8)
                b = np.frombuffer(theirs[-1], np.uint8)
                assert np.count_nonzero(a != b) <= max(1, a.size // 1000), topic


def storage_files(out):
    """{output bag: (inode, mtime) of its storage file}: what a re-run must not touch."""
    files = {}
    for path in glob.glob(os.path.join(out, '*', '*.mcap')):
        stat = os.stat(path)
        files[os.path.basename(os.path.dirname(path))] = (stat.st_ino, stat.st_mtime_ns)
    return files


def summary_line(err):
    return [line for line in err.splitlines() if ' bag(s) -> ' in line][0]


def test_several_bags_one_after_another(tmp_path, model, bags, capsys):
    out = str(tmp_path / 'out')
    assert run_bag(model, bags['folder'], bags['c'], '--out', out) == 1
    captured = capsys.readouterr()
    assert captured.out.split() == [os.path.join(os.path.abspath(out), name)
                                    for name in ('a', 'b', 'c')]
    assert '5 bag(s) -> ' in summary_line(captured.err)
    assert ': 3 processed (9 frames in ' in summary_line(captured.err)
    assert '0 skipped' in captured.err and '2 failed' in captured.err
    assert f'failed damaged ({bags["folder"]}/damaged): cannot read bag' in captured.err
    assert (f'failed wrong ({bags["folder"]}/wrong): image topic {TOPIC} is not in the bag; '
            f'it has: /front/image_raw') in captured.err
    assert sorted(os.listdir(out)) == ['a', 'b', 'c']

    # Each output is what the single-bag command writes; the manifest says what it is.
    single = str(tmp_path / 'single_b')
    assert run_bag(model, os.path.join(bags['folder'], 'b'), '--out', single) == 0
    assert decoded(os.path.join(out, 'b')) == decoded(single)
    manifest = json.load(open(os.path.join(out, 'b', 'mtdp_manifest.json')))
    assert manifest['frames'] == 4
    assert manifest['key']['input_digest'].startswith('sha256:')
    assert manifest['key']['settings']['tasks'] == 'depth,edge'
    assert manifest['key']['model']['checkpoint'].startswith('sha256:')
    assert manifest['key']['package_version']

    # A re-run skips what is done (the files are not touched) and reports the failures.
    before = storage_files(out)
    capsys.readouterr()
    assert run_bag(model, bags['folder'], bags['c'], '--out', out) == 1
    err = capsys.readouterr().err
    assert ': 0 processed' in summary_line(err) and '3 skipped' in err and '2 failed' in err
    assert storage_files(out) == before


def test_rerun_redoes_what_changed(tmp_path, model, capsys):
    folder = tmp_path / 'in'
    folder.mkdir()
    write_bag(str(folder / 'a'), 2)
    write_bag(str(folder / 'b'), 2)
    out = str(tmp_path / 'out')
    assert run_bag(model, str(folder), '--out', out) == 0
    first = storage_files(out)

    # Input b recorded again (other content): only b is redone.
    shutil.rmtree(folder / 'b')
    write_bag(str(folder / 'b'), 3)
    # A temporary folder left by a killed run is removed when its bag is redone.
    os.mkdir(os.path.join(out, '.b.abcd_123.partial'))
    capsys.readouterr()
    assert run_bag(model, str(folder), '--out', out) == 0
    err = capsys.readouterr().err
    assert ': 1 processed (3 frames in ' in summary_line(err) and '1 skipped' in err
    second = storage_files(out)
    assert second['a'] == first['a'] and second['b'] != first['b']
    assert sorted(os.listdir(out)) == ['a', 'b']
    assert json.load(open(os.path.join(out, 'b', 'mtdp_manifest.json')))['frames'] == 3

    # Other settings: every bag is redone, the new output replacing the old.
    capsys.readouterr()
    assert main(['bag', str(folder), '--out', out, '--image-topic', TOPIC, '--model',
                 model[0], '--checkpoint', model[1], '--device', 'cpu', '--no-progress',
                 '--tasks', 'edge', '--no-color']) == 0
    assert ': 2 processed' in summary_line(capsys.readouterr().err)
    assert set(read_bag(os.path.join(out, 'a'))) == {'/mtdp_perception/edges'}

    # An output folder that mtdp bag did not write is never replaced.
    foreign = os.path.join(out, 'a', 'mtdp_manifest.json')
    os.remove(foreign)
    capsys.readouterr()
    assert run_bag(model, str(folder), '--out', out) == 1
    err = capsys.readouterr().err
    assert 'failed a' in err and 'is not an output of mtdp bag' in err
    assert not os.path.exists(foreign)


def test_fleet_command_errors(tmp_path, model, bags, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    write_bag(str(tmp_path / 'a'), 1)
    a_file = tmp_path / 'file'
    a_file.write_text('x')
    cases = [
        ([str(empty), '--out', str(tmp_path / 'out')], 'is neither a bag nor a folder'),
        ([bags['folder'], str(tmp_path / 'a'), '--out', str(tmp_path / 'out')],
         'two bags would write'),
        ([str(tmp_path / 'a'), bags['c'], '--out', str(a_file)], 'is not a folder'),
        ([str(tmp_path / 'a'), str(tmp_path / 'nope'), '--out', str(tmp_path / 'out')],
         'input not found'),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert run_bag(model, *args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert not os.path.exists(tmp_path / 'out')


def test_missing_ray_names_the_extra(tmp_path, model, bags, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'ray', None)      # import ray raises ImportError
    assert run_bag(model, bags['c'], '--out', str(tmp_path / 'out'), '--ray') == 2
    assert 'pip install mtdp_ros[ray]' in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_stops_the_fleet_leaving_only_complete_bags(tmp_path, model):
    folder = tmp_path / 'in'
    folder.mkdir()
    write_bag(str(folder / 'a'), 2)
    write_bag(str(folder / 'b'), 400)      # seconds of work: the signal comes during it
    out = str(tmp_path / 'out')
    command = [sys.executable, '-m', 'mtdp_ros.cli', 'bag', str(folder), '--out', out,
               '--image-topic', TOPIC, '--model', model[0], '--checkpoint', model[1],
               '--device', 'cpu', '--no-progress', *FAST]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS='1'))
    try:
        deadline = time.monotonic() + 120
        while not glob.glob(os.path.join(out, '.b.*.partial', 'b', '*.mcap')):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines() == [
        'mtdp bag: interrupted by SIGTERM: stopped after 1 processed, 0 skipped, 0 failed of '
        '2 bag(s); no partial output left, a re-run resumes']
    assert sorted(os.listdir(out)) == ['a']


# --- on Ray ----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def ray_cluster():
    """One local Ray cluster of 2 CPUs for the module's Ray tests."""
    ray = pytest.importorskip('ray')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_processes_every_bag_and_resumes(tmp_path, model, bags, ray_cluster, capsys):
    out = str(tmp_path / 'out')
    assert run_bag(model, bags['folder'], bags['c'], '--out', out, '--ray',
                   '--workers', '2') == 1
    captured = capsys.readouterr()
    assert ': 3 processed (9 frames in ' in summary_line(captured.err)
    assert '2 failed' in captured.err and 'failed damaged' in captured.err
    assert 'failed wrong' in captured.err and 'is not in the bag' in captured.err
    assert sorted(os.listdir(out)) == ['a', 'b', 'c']
    single = str(tmp_path / 'single_a')
    assert run_bag(model, os.path.join(bags['folder'], 'a'), '--out', single) == 0
    assert_same_outputs(decoded(os.path.join(out, 'a')), decoded(single))
    # Ray and the one-machine loop make the same outputs: a re-run without Ray skips them.
    before = storage_files(out)
    capsys.readouterr()
    assert run_bag(model, bags['folder'], bags['c'], '--out', out) == 1
    assert '3 skipped' in capsys.readouterr().err
    assert storage_files(out) == before


@pytest.mark.slow
def test_ray_worker_killed_mid_bag_is_retried(tmp_path, model, ray_cluster, capsys):
    from mtdp_ros.cli.bag_ray import WORKER_NAME
    ray = ray_cluster
    folder = tmp_path / 'in'
    folder.mkdir()
    write_bag(str(folder / 'long'), 60)
    write_bag(str(folder / 'short'), 2)
    out = str(tmp_path / 'out')
    codes = []
    runner = threading.Thread(target=lambda: codes.append(run_bag(
        model, str(folder), '--out', out, '--ray', '--workers', '2', '--retries', '1')))
    runner.start()
    killed = None
    try:
        deadline = time.monotonic() + 180
        while killed is None:
            assert runner.is_alive() and time.monotonic() < deadline, 'no worker ran long'
            for index in range(2):
                try:
                    actor = ray.get_actor(WORKER_NAME.format(index))
                    frames = ray.get(actor.progress.remote(), timeout=10)
                except Exception:  # noqa: B902 - not created yet
                    continue
                if frames.get('long', (0, 0))[0] >= 2:
                    killed = ray.get(actor.pid.remote(), timeout=10)
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.05)
    finally:
        runner.join(timeout=300)
    assert codes == [0], capsys.readouterr().err
    err = capsys.readouterr().err
    assert ': 2 processed (62 frames in ' in summary_line(err), err
    assert 'retried long: 2 attempts (processed)' in err
    # In the output exactly once, whole, and nothing temporary left.
    assert sorted(os.listdir(out)) == ['long', 'short']
    assert json.load(open(os.path.join(out, 'long', 'mtdp_manifest.json')))['frames'] == 60
    depth = read_bag(os.path.join(out, 'long'))['/mtdp_perception/depth/image']
    assert [t for t, _ in depth] == [1_000_000_000 * (index + 1) for index in range(60)]


def test_worker_plan_per_gpu_or_cpu():
    from mtdp_ros.cli.bag_ray import worker_plan

    class Cluster:
        def __init__(self, **resources):
            self.resources = resources

        def cluster_resources(self):
            return self.resources

    gpus = Cluster(CPU=64.0, GPU=8.0)
    assert worker_plan(gpus, {'device': 'auto'}) == (8, {'num_cpus': 1, 'num_gpus': 1.0})
    assert worker_plan(gpus, {'device': 'cuda', 'workers': 32}) == (
        32, {'num_cpus': 1, 'num_gpus': 0.25})
    assert worker_plan(gpus, {'device': 'cpu'}) == (64, {'num_cpus': 1})
    assert worker_plan(Cluster(CPU=2.0), {'device': 'auto', 'workers': 3}) == (
        2, {'num_cpus': 1})


@pytest.mark.slow
def test_ray_by_address_sigterm_then_rerun(tmp_path, model, ray_cluster):
    """A running cluster by its address: SIGTERM stops all cleanly, a re-run completes."""
    address = ray_cluster.get_runtime_context().gcs_address
    folder = tmp_path / 'in'
    folder.mkdir()
    write_bag(str(folder / 'long'), 100)
    out = str(tmp_path / 'out')
    command = [sys.executable, '-m', 'mtdp_ros.cli', 'bag', str(folder), '--out', out,
               '--ray', address, '--image-topic', TOPIC, '--model', model[0],
               '--checkpoint', model[1], '--device', 'cpu', '--no-progress', *FAST]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while not glob.glob(os.path.join(out, '.long.*.partial', 'long', '*.mcap')):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines() == [
        'mtdp bag: interrupted by SIGTERM: stopped after 0 processed, 0 skipped, 0 failed of '
        '1 bag(s); no partial output left, a re-run resumes']
    assert os.listdir(out) == []

    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [os.path.join(out, 'long')]
    assert ': 1 processed (100 frames in ' in summary_line(result.stderr)
    assert os.listdir(out) == ['long']
