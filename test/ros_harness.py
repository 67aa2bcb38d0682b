"""Helpers of the node tests: a perception node process and a test node over real DDS.

Every test module gets its own ROS domain (derived from the pid and the module name), and
discovery stays on this host, so parallel runs do not see each other.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import rclpy
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_NAME = 'mtdp_perception'
# The test client's QoS for the node's outputs: every message of a test arrives.
RELIABLE = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
# The reference tiny configurations (../shared/reference/*_tiny.pt 'config'): ~0.3 M
# parameters, 64 x 96 input, fast enough on 2 CPU cores for many frames per second.
TINY_MLORE = {
    'family': 'mlore', 'dataset': 'NYUD', 'tasks': ['semseg', 'depth', 'normals', 'edge'],
    'num_outputs': {'semseg': 40, 'depth': 1, 'normals': 3, 'edge': 1},
    'image_size': [64, 96], 'patch_size': 16, 'embed_dim': 64, 'depth': 4, 'num_heads': 2,
    'select_layers': [1, 2, 3], 'decoder_dim': 32, 'expert_ranks': [2, 4, 6, 8, 10],
    'task_expert_rank': 4, 'top_k': 3, 'pre_softmax': True, 'head': 'conv',
    'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225],
}
TINY_TASKDIFFUSION = {
    'family': 'taskdiffusion', 'dataset': 'NYUD', 'tasks': ['semseg', 'depth', 'normals', 'edge'],
    'num_outputs': {'semseg': 40, 'depth': 1, 'normals': 3, 'edge': 1},
    'image_size': [64, 96], 'patch_size': 16, 'embed_dim': 64, 'depth': 4, 'num_heads': 2,
    'select_layers': [1, 2, 3], 'decoder_dim': 32, 'trained_steps': 3, 'time_difference': 1,
    'scale': 0.01, 'module_layers': 3,
    'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225],
}


def domain_id(module_name):
    """A ROS domain for one test module of this pytest process (1..100)."""
    return 1 + (os.getpid() * 31 + zlib.crc32(module_name.encode())) % 100


def ros_env(domain):
    """The environment of every ROS process of a test module."""
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(domain)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['RCUTILS_COLORIZED_OUTPUT'] = '0'
    env['PYTHONUNBUFFERED'] = '1'
    # Two cores: keep the node's PyTorch from fighting the test process for them.
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def write_config(directory, config, name='tiny_mlore.json'):
    """A model config file for model.preset."""
    path = os.path.join(str(directory), name)
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump(config, handle)
    return path


def write_checkpoint(directory, config, name='tiny_mlore.safetensors', seed=0):
    """A seeded checkpoint of ``config`` whose depth head predicts about 2 m everywhere.

    Random weights give depth of either sign (negative depth is invalid, i.e. NaN); a
    small depth-head weight and a 2 m bias make depth positive and still image-dependent.
    """
    import torch
    from mtdp_ros.models import ModelConfig, build_model, save_checkpoint
    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_dict(config))
    with torch.no_grad():
        model.heads['depth'].pred.weight.mul_(0.05)
        model.heads['depth'].pred.bias.fill_(2.0)
    path = os.path.join(str(directory), name)
    save_checkpoint(model, path)
    return path


def format_value(value):
    """A --ros-args -p value."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return '[' + ','.join(str(v) for v in value) + ']'
    return str(value)


class NodeProcess:
    """``python -m mtdp_ros.perception_node`` with parameters, its log in a file."""

    def __init__(self, domain, log_path, params=None, remaps=None, namespace=None,
                 new_session=False, env=None, ros_args=()):
        command = [sys.executable, '-m', 'mtdp_ros.perception_node', '--ros-args',
                   *ros_args]
        for name, value in (params or {}).items():
            command += ['-p', f'{name}:={format_value(value)}']
        for source, target in (remaps or {}).items():
            command += ['-r', f'{source}:={target}']
        if namespace:
            command += ['-r', f'__ns:={namespace}']
        self.log_path = str(log_path)
        self._log = open(self.log_path, 'w', encoding='utf-8')
        # new_session: its own process group, which a test can signal as a terminal does
        # (Ctrl-C reaches the whole group) without hitting pytest.
        # env: more environment variables (e.g. MTDP_CACHE_DIR) for this process only.
        # ros_args: more --ros-args arguments (e.g. --params-file PATH).
        self.process = subprocess.Popen(command, env={**ros_env(domain), **(env or {})},
                                        cwd=REPO,
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=new_session)

    def log(self):
        """Everything the node has printed so far."""
        with open(self.log_path, 'r', encoding='utf-8', errors='replace') as handle:
            return handle.read()

    def wait_for_log(self, text, timeout):
        """True when ``text`` appears in the log within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if self.process.poll() is not None:
                return text in self.log()
            time.sleep(0.1)
        return False

    def rss_mb(self):
        """Resident memory of the node process (MiB)."""
        with open(f'/proc/{self.process.pid}/status', encoding='ascii') as handle:
            for line in handle:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024.0
        raise RuntimeError('no VmRSS')

    def interrupt(self, timeout=5.0):
        """SIGINT; returns (exit code, seconds taken) or (None, timeout) if still alive."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None, timeout
        return code, time.monotonic() - started

    def signal_group(self, signals, gap=0.05, timeout=10.0):
        """Send ``signals`` to the process group ``gap`` s apart, as a terminal does.

        Returns (exit code, seconds from the first signal), or (None, timeout) if the
        process is still alive then.
        """
        group = os.getpgid(self.process.pid)
        started = time.monotonic()
        for index, number in enumerate(signals):
            if index:
                time.sleep(gap)         # the spacing under test, not a wait for a state
            if self.process.poll() is not None:
                break
            os.killpg(group, number)
        try:
            code = self.process.wait(max(0.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            return None, timeout
        return code, time.monotonic() - started

    def close(self):
        """Stop the process (SIGINT, then SIGKILL) and close the log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


class RosClient:
    """A test node: publishes camera frames, records what arrives, sets parameters."""

    def __init__(self, domain, name='mtdp_test_client', namespace=None):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(name, context=self.context,
                                      namespace=namespace or '')
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received = {}
        self._subscriptions = {}
        self._publishers = {}

    def newest_status(self, name):
        """The key/values of the newest /diagnostics status called ``name`` ({} if none)."""
        for array in reversed(self.received.get('/diagnostics', [])):
            for status in array.status:
                if status.name == name:
                    return {kv.key: kv.value for kv in status.values}
        return {}

    # ---------------------------------------------------------------- topics
    def publisher(self, msg_type, topic, reliable=False, depth=10):
        """A (cached) publisher; best effort unless ``reliable``."""
        key = (msg_type, topic, reliable)
        if key not in self._publishers:
            qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE
                             if reliable else ReliabilityPolicy.BEST_EFFORT)
            self._publishers[key] = self.node.create_publisher(msg_type, topic, qos)
        return self._publishers[key]

    def subscribe(self, msg_type, topic, qos=None):
        """Record every message on ``topic`` into ``received[topic]``."""
        if topic in self._subscriptions:
            return
        self.received[topic] = []
        self._subscriptions[topic] = self.node.create_subscription(
            msg_type, topic, self.received[topic].append,
            qos if qos is not None else qos_profile_sensor_data)

    def unsubscribe(self, topic):
        """Stop recording ``topic``."""
        subscription = self._subscriptions.pop(topic, None)
        if subscription is not None:
            self.node.destroy_subscription(subscription)

    def clear(self):
        """Forget everything recorded."""
        for messages in self.received.values():
            messages.clear()

    def spin_until(self, predicate, timeout):
        """Spin until ``predicate()`` is true; returns its last value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return predicate()

    def spin_for(self, seconds):
        """Spin for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)

    def wait_for_subscribers(self, topic, count=1, timeout=20.0):
        """True once ``topic`` has ``count`` subscribers (the node has discovered us)."""
        return self.spin_until(lambda: self.node.count_subscribers(topic) >= count, timeout)

    def wait_for_publishers(self, topic, count=1, timeout=20.0):
        """True once ``topic`` has ``count`` publishers."""
        return self.spin_until(lambda: self.node.count_publishers(topic) >= count, timeout)

    def messages_with_stamp(self, topic, stamp):
        """Messages recorded on ``topic`` whose header stamp equals ``stamp``."""
        return [m for m in self.received.get(topic, [])
                if m.header.stamp.sec == stamp.sec and m.header.stamp.nanosec == stamp.nanosec]

    def wait_for_stamp(self, topics, stamp, timeout=20.0):
        """True once every topic of ``topics`` has a message with ``stamp``."""
        return self.spin_until(
            lambda: all(self.messages_with_stamp(t, stamp) for t in topics), timeout)

    # ---------------------------------------------------------------- parameters
    def set_parameters(self, node_name, parameters, timeout=10.0):
        """Set parameters of ``node_name`` through its service; the list of results."""
        client = self.node.create_client(SetParameters, f'{node_name}/set_parameters')
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f'{node_name}/set_parameters is not available')
            request = SetParameters.Request()
            request.parameters = [
                ParameterMsg(name=name, value=Parameter(name, value=value)
                             .to_parameter_msg().value)
                for name, value in parameters.items()]
            future = client.call_async(request)
            self.spin_until(future.done, timeout)
            if not future.done():
                raise TimeoutError('set_parameters got no answer')
            return future.result().results
        finally:
            self.node.destroy_client(client)

    def get_parameters(self, node_name, names, timeout=30.0):
        """Values of parameters ``names`` of ``node_name`` (as ``ros2 param get``)."""
        request = GetParameters.Request()
        request.names = list(names)
        response = self._call(GetParameters, f'{node_name}/get_parameters', request, timeout)
        return {name: Parameter.from_parameter_msg(ParameterMsg(name=name, value=value)).value
                for name, value in zip(names, response.values)}

    # ---------------------------------------------------------------- lifecycle
    def _call(self, srv_type, service, request, timeout):
        client = self.node.create_client(srv_type, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f'{service} is not available')
            future = client.call_async(request)
            self.spin_until(future.done, timeout)
            if not future.done():
                raise TimeoutError(f'{service} got no answer')
            return future.result()
        finally:
            self.node.destroy_client(client)

    def lifecycle_state(self, node_name, timeout=20.0):
        """The label of ``node_name``'s lifecycle state (through ``~/get_state``)."""
        from lifecycle_msgs.srv import GetState
        return self._call(GetState, f'{node_name}/get_state', GetState.Request(),
                          timeout).current_state.label

    def change_state(self, node_name, transition, timeout=60.0):
        """Request a lifecycle transition of ``node_name``; True when it succeeded.

        ``transition`` is a label: configure, activate, deactivate, cleanup, shutdown.
        """
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        request = ChangeState.Request()
        request.transition = Transition(label=transition)
        return self._call(ChangeState, f'{node_name}/change_state', request,
                          timeout).success

    def close(self):
        """Destroy the node and shut the context down."""
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@contextlib.contextmanager
def node_processes(domain, directory, specs, subscriptions=()):
    """Start a perception node per ``specs`` entry and one test client; stop them all after.

    ``specs``: name -> NodeProcess keyword arguments (params, remaps, namespace,
    new_session); each node logs to ``directory/<name>.log``. ``subscriptions``:
    (message type, topic) pairs the client records with RELIABLE QoS. Every process starts
    at once, so their start-ups overlap. Yields ({name: NodeProcess}, RosClient).
    """
    started = {}
    client = None
    try:
        for name, kwargs in specs.items():
            started[name] = NodeProcess(domain, os.path.join(str(directory), f'{name}.log'),
                                        **kwargs)
        client = RosClient(domain)
        for msg_type, topic in subscriptions:
            client.subscribe(msg_type, topic, RELIABLE)
        yield started, client
    finally:
        if client is not None:
            client.close()
        for process in started.values():
            process.close()


@contextlib.contextmanager
def serving_node(domain, directory, params, subscriptions=(), publishers=((Image, 'image'),),
                 ready_timeout=60.0, inputs=('image',), outputs=(), **node_kwargs):
    """One perception node (log ``directory/node.log``) and a client, ready to serve.

    The client records ``subscriptions`` and makes reliable ``publishers`` ((message type,
    topic) pairs; ``client.publisher(type, topic, reliable=True)`` returns them) before
    anything waits, so discovery matches them meanwhile. Then waits for the node's 'ready'
    line, for its subscriptions of the ``inputs`` topics and, for the ``outputs`` topics,
    for its publishers. ``node_kwargs``: more NodeProcess arguments. Yields (NodeProcess,
    RosClient).
    """
    with node_processes(domain, directory, {'node': {'params': params, **node_kwargs}},
                        subscriptions) as (started, client):
        node = started['node']
        for msg_type, topic in publishers:
            client.publisher(msg_type, topic, reliable=True)
        assert node.wait_for_log('ready', ready_timeout), node.log()
        for topic in inputs:
            assert client.wait_for_subscribers(topic), node.log()
        for topic in outputs:
            assert client.wait_for_publishers(topic), node.log()
        yield node, client


_last_stamp_ns = [0]


def make_stamp():
    """A unique header stamp: the wall-clock time now (strictly increasing per process)."""
    from builtin_interfaces.msg import Time
    now = max(time.time_ns(), _last_stamp_ns[0] + 1000)
    _last_stamp_ns[0] = now
    return Time(sec=now // 1_000_000_000, nanosec=now % 1_000_000_000)


def camera_info(width, height, frame_id='camera_optical_frame', fx=None):
    """A CameraInfo for an undistorted pinhole camera of the given size."""
    fx = float(fx or width)
    info = CameraInfo()
    info.header.frame_id = frame_id
    info.width, info.height = width, height
    info.distortion_model = 'plumb_bob'
    info.d = [0.0] * 5
    info.k = [fx, 0.0, (width - 1) / 2.0, 0.0, fx, (height - 1) / 2.0, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, (width - 1) / 2.0, 0.0, 0.0, fx, (height - 1) / 2.0, 0.0,
              0.0, 0.0, 1.0, 0.0]
    return info


def pattern_image(height, width, seed=0):
    """A deterministic RGB uint8 image with structure (gradients and blocks)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = (xs * 255 // max(1, width - 1)).astype(np.uint8)
    image[..., 1] = (ys * 255 // max(1, height - 1)).astype(np.uint8)
    image[..., 2] = ((xs // 16 + ys // 16) % 2 * 200).astype(np.uint8)
    noise = rng.integers(0, 30, size=image.shape, dtype=np.uint8)
    return (image // 2 + noise).astype(np.uint8)


def image_msg(rgb, encoding='rgb8', stamp=None, frame_id='camera_optical_frame'):
    """A camera Image of ``rgb`` in ``encoding`` with the given stamp and frame."""
    from mtdp_ros.ros.image_output import rgb_to_image_msg
    msg = rgb_to_image_msg(rgb, encoding)
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def raw_image(encoding, width, height, step, data, stamp, frame_id='camera_optical_frame'):
    """An Image with arbitrary (possibly inconsistent) fields, for malformed-frame tests."""
    import array
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.encoding, msg.width, msg.height, msg.step = encoding, width, height, step
    msg.data = array.array('B', bytes(data))
    return msg
