"""The managed (lifecycle) node over real DDS, and the steady-clock timers.

A lifecycle client drives a node started with ``autostart:=false`` through configure,
activate, deactivate, cleanup, configure + activate again and shutdown (lifecycle_msgs
ChangeState / GetState). Beside it: a node whose configure fails (the reason logged, the
node stays unconfigured and serving), a node under ``use_sim_time`` with no /clock (its
diagnostics and watchdog still run) and a model without depth (no ``points`` topic).
Every process starts at once (their start-ups overlap) in one ROS domain.
"""

import contextlib
import math
import signal

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image

from ros_harness import (RELIABLE, TINY_MLORE, camera_info, domain_id, image_msg,
                         make_stamp, node_processes, pattern_image, write_config)

# Slow (node processes over real DDS): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

# name -> (namespace, node name, parameters beyond the model)
NODES = {
    'managed': ('/managed', 'managed_node', {'autostart': False, 'input.qos': 'reliable'}),
    'bad': ('/bad', 'bad_node', {'autostart': False, 'tasks': ['depth', 'flow']}),
    'sim_time': ('/sim', 'sim_node', {'use_sim_time': True, 'watchdog.timeout': 1.0}),
    'no_depth': ('/nodepth', 'nodepth_node', {}),
}


@pytest.fixture(scope='module')
def nodes(tmp_path_factory):
    directory = tmp_path_factory.mktemp('node_managed')
    domain = domain_id(__name__)
    config = write_config(directory, TINY_MLORE)
    no_depth = dict(TINY_MLORE, tasks=['semseg', 'normals', 'edge'],
                    num_outputs={'semseg': 40, 'normals': 3, 'edge': 1})
    no_depth_config = write_config(directory, no_depth, name='tiny_no_depth.json')
    specs = {}
    for name, (namespace, node_name, params) in NODES.items():
        values = {'model.preset': no_depth_config if name == 'no_depth' else config}
        values.update(params)
        specs[name] = {'params': values, 'namespace': namespace, 'new_session': True,
                       'remaps': {'__node': node_name}}
    with node_processes(domain, directory, specs,
                        [(DiagnosticArray, '/diagnostics')]) as (started, client):
        yield started, client


def service_name(name):
    namespace, node_name, _ = NODES[name]
    return f'{namespace}/{node_name}'


def diagnostics_of(client, name):
    """The key/values of the newest /diagnostics status of node ``name`` ({} if none)."""
    # The namespace is part of the name: two nodes named alike in two namespaces differ.
    wanted = f'{service_name(name).lstrip("/")}: perception'
    return client.newest_status(wanted)


def wait_for_diagnostics(client, name, predicate, timeout=20.0):
    """Spin until the newest diagnostics of ``name`` satisfy ``predicate``; those values."""
    client.spin_until(lambda: predicate(diagnostics_of(client, name)), timeout)
    return diagnostics_of(client, name)


def serve_one(client, publisher, topic, timeout=30.0):
    """Publish frames until one is answered on ``topic``; its stamp (None if none)."""
    rgb = pattern_image(48, 64)
    for _ in range(int(timeout)):
        stamp = make_stamp()
        publisher.publish(image_msg(rgb, stamp=stamp))
        if client.wait_for_stamp([topic], stamp, 1.0):
            return stamp
    return None


def test_lifecycle_transitions_over_ros(nodes, tmp_path):
    started, client = nodes
    smaller = write_config(tmp_path, dict(TINY_MLORE, image_size=[32, 48]), name='small.json')
    node = started['managed']
    managed = service_name('managed')
    depth_topic, image_topic = '/managed/depth/image', '/managed/image'
    client.subscribe(Image, depth_topic, RELIABLE)
    images = client.publisher(Image, image_topic, reliable=True)
    infos = client.publisher(CameraInfo, '/managed/camera_info', reliable=True)

    # autostart:=false: unconfigured, no engine, no outputs, no image subscription.
    assert client.lifecycle_state(managed, timeout=90) == 'unconfigured', node.log()
    assert 'autostart is false: unconfigured, no engine' in node.log()
    values = wait_for_diagnostics(client, 'managed',
                                  lambda v: v.get('lifecycle_state') == 'unconfigured')
    assert values.get('lifecycle_state') == 'unconfigured', values
    assert 'model' not in values, values
    assert 'engine: model' not in node.log()
    assert client.node.count_publishers(depth_topic) == 0
    assert client.node.count_subscribers(image_topic) == 0

    # camera_info known before configure: the warm-up runs at the camera's size.
    assert client.wait_for_subscribers('/managed/camera_info'), node.log()
    while not node.wait_for_log('camera_info: 64x48', 0.5):
        infos.publish(camera_info(64, 48))
        client.spin_for(0.1)
        assert node.process.poll() is None, node.log()
    assert client.change_state(managed, 'configure'), node.log()
    assert client.lifecycle_state(managed) == 'inactive'
    assert 'warmed up at the camera size 64x48 (from camera_info)' in node.log()
    assert client.wait_for_publishers(depth_topic), node.log()
    assert client.node.count_subscribers(image_topic) == 0

    # activate: outputs flow; the time to the first output is reported.
    assert client.change_state(managed, 'activate'), node.log()
    assert client.lifecycle_state(managed) == 'active'
    # Warmed up at configure: activation says so (not that the first frame will warm up).
    assert 'ready (active): warmed up at 64x48' in node.log(), node.log()
    assert 'the first frame' not in node.log()
    assert client.wait_for_subscribers(image_topic), node.log()
    assert serve_one(client, images, depth_topic) is not None, node.log()
    assert node.wait_for_log('first output', 10), node.log()
    values = wait_for_diagnostics(
        client, 'managed', lambda v: v.get('time_to_first_output_s', 'nan') != 'nan')
    assert values['lifecycle_state'] == 'active', values
    first = float(values['time_to_first_output_s'])
    assert math.isfinite(first) and first > 0, values
    assert float(values['startup_to_first_output_s']) > first, values

    # deactivate: no image subscription, no outputs.
    assert client.change_state(managed, 'deactivate'), node.log()
    assert client.lifecycle_state(managed) == 'inactive'
    assert client.spin_until(lambda: client.node.count_subscribers(image_topic) == 0, 20)
    silent = []
    for _ in range(5):
        silent.append(make_stamp())
        images.publish(image_msg(pattern_image(48, 64), stamp=silent[-1]))
        client.spin_for(0.2)
    assert not any(client.messages_with_stamp(depth_topic, s) for s in silent)

    # cleanup: the engine is released and the outputs are gone.
    assert client.change_state(managed, 'cleanup'), node.log()
    assert client.lifecycle_state(managed) == 'unconfigured'
    assert 'cleaned up (unconfigured): engine released' in node.log()
    assert client.spin_until(lambda: client.node.count_publishers(depth_topic) == 0, 20)
    client.received['/diagnostics'].clear()
    values = wait_for_diagnostics(client, 'managed', bool)
    assert values.get('lifecycle_state') == 'unconfigured' and 'model' not in values, values

    # Unconfigured, the model can change (a lifecycle manager switching models); once
    # configured it is read-only again.
    (result,) = client.set_parameters(managed, {'model.preset': smaller})
    assert result.successful, result.reason

    # configure and activate again: a new engine (the new model), outputs flow again.
    assert client.change_state(managed, 'configure'), node.log()
    assert node.wait_for_log('input 32x48', 10), node.log()
    (result,) = client.set_parameters(managed, {'model.checkpoint': '/tmp/x.safetensors'})
    assert not result.successful and 'only while the node is unconfigured' in result.reason
    assert client.change_state(managed, 'activate'), node.log()
    assert node.log().count('engine: model') == 2
    assert client.wait_for_subscribers(image_topic), node.log()
    assert serve_one(client, images, depth_topic) is not None, node.log()

    # shutdown from active: finalized, engine released; the process then stops cleanly.
    assert client.change_state(managed, 'shutdown'), node.log()
    assert client.lifecycle_state(managed) == 'finalized'
    assert 'shut down (from active): engine released' in node.log()
    code, _ = node.signal_group([signal.SIGINT])
    assert code == 0, node.log()
    assert 'Traceback' not in node.log()


def test_a_failing_configure_reports_the_reason_and_stays_unconfigured(nodes):
    started, client = nodes
    node = started['bad']
    bad = service_name('bad')
    assert client.lifecycle_state(bad, timeout=90) == 'unconfigured', node.log()
    assert not client.change_state(bad, 'configure')
    assert client.lifecycle_state(bad) == 'unconfigured'
    log = node.log()
    assert "invalid parameters: unknown tasks ['flow']" in log, log
    assert '[ERROR]' in log and 'Traceback' not in log, log
    assert node.process.poll() is None
    # Shutdown from unconfigured works too.
    assert client.change_state(bad, 'shutdown'), node.log()
    assert client.lifecycle_state(bad) == 'finalized'


def test_diagnostics_and_watchdog_run_under_sim_time_without_clock(nodes):
    started, client = nodes
    node = started['sim_time']
    assert node.wait_for_log('ready', 90), node.log()
    client.received['/diagnostics'].clear()
    count = []

    def two_statuses():
        count[:] = [status for array in client.received['/diagnostics']
                    for status in array.status if status.name == 'sim/sim_node: perception']
        return len(count) >= 2
    assert client.spin_until(two_statuses, 20), node.log()
    values = {kv.key: kv.value for kv in count[-1].values}
    assert values['lifecycle_state'] == 'active', values
    # No /clock: the watchdog (steady clock) still warns about the silent camera.
    assert node.wait_for_log('no image received on /sim/image', 20), node.log()


def test_a_model_without_depth_advertises_no_points(nodes):
    started, client = nodes
    node = started['no_depth']
    assert node.wait_for_log('ready', 90), node.log()
    assert client.wait_for_publishers('/nodepth/semantic/labels'), node.log()
    assert client.wait_for_publishers('/nodepth/edges'), node.log()
    assert client.node.count_publishers('/nodepth/points') == 0
    assert client.node.count_publishers('/nodepth/depth/image') == 0


@contextlib.contextmanager
def in_process_node(tmp_path, name):
    """A PerceptionNode in this process, unconfigured; destroyed on leaving.

    The tiny model, ``autostart`` false, its own rclpy context and a ROS domain of its own
    (from ``name``).
    """
    import rclpy
    from rclpy.parameter import Parameter

    from mtdp_ros.perception_node import PerceptionNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(f'{__name__}.{name}'),
               signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = None
    try:
        node = PerceptionNode(context=context, parameter_overrides=[
            Parameter('model.preset', value=write_config(tmp_path, TINY_MLORE)),
            Parameter('autostart', value=False)])
        yield node
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_cleanup_leaves_no_reference_to_the_engine(tmp_path):
    """In one process: after cleanup nothing holds the engine or its network any more."""
    import gc
    import weakref

    from rclpy.lifecycle import TransitionCallbackReturn

    with in_process_node(tmp_path, 'in_process') as node:
        assert node.engine is None and node.state == 'unconfigured'
        for _ in range(2):          # a second configure / cleanup cycle releases too
            assert node.run_autostart()
            assert node.state == 'active'
            engine = weakref.ref(node.engine)
            network = weakref.ref(node.engine.model)
            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
            assert node.state == 'unconfigured' and node.engine is None
            gc.collect()
            assert engine() is None and network() is None


def test_the_engine_is_created_in_a_thread_that_ends(tmp_path, monkeypatch):
    """Configure builds the engine off the executor's thread (one OpenMP team: openmp_spin)."""
    import threading

    from mtdp_ros.ros import engine_setup

    threads = []
    create = engine_setup.create_engine

    def recording(*args, **kwargs):     # the real engine, its thread noted
        threads.append(threading.current_thread())
        return create(*args, **kwargs)

    monkeypatch.setattr(engine_setup, 'create_engine', recording)
    with in_process_node(tmp_path, 'setup_thread') as node:
        assert node.run_autostart() and node.engine is not None
        assert len(threads) == 1 and threads[0] is not threading.current_thread()
        assert threads[0] is not node._worker and not threads[0].is_alive()


def test_the_node_trims_the_heap_once_frames_are_small_after_large_ones(tmp_path):
    """In one process: frames into the real node's stream; its LargeFrameMemory trims."""
    import threading

    from mtdp_ros.ros.memory_return import LargeFrameMemory

    with in_process_node(tmp_path, 'trim') as node:
        trimmed = threading.Event()
        node._large_frames = LargeFrameMemory(trim=trimmed.set, settle=1)
        assert node.run_autostart()
        stream = node.streams[0]
        large, small = image_msg(pattern_image(480, 640)), image_msg(pattern_image(60, 80))
        stream.on_image(large, 1)
        for _ in range(200):        # until the large frame has gone through the engine
            if stream.frame_pixels == 480 * 640 and not stream.slot.waiting:
                break
            threading.Event().wait(0.05)
        assert not trimmed.is_set()
        for _ in range(200):        # small frames: the burst is over
            stream.on_image(small, 2)
            if trimmed.wait(0.05):
                break
        assert trimmed.is_set() and stream.frame_pixels == 60 * 80


def test_output_publishers_carry_no_qos_event_handlers(tmp_path):
    """In one process: the executor walks no event handler of an output at each frame.

    rclpy gives a publisher two QoS event handlers by default, which the executor goes
    through in Python at every spin (see stream_endpoints.OUTPUT_EVENTS); the node's
    image subscription keeps its own (a camera with incompatible QoS is reported).
    """
    with in_process_node(tmp_path, 'events') as node:
        assert node.run_autostart()
        publishers = node.streams[0].sink.publishers
        assert 'depth/image' in publishers and len(publishers) >= 8, sorted(publishers)
        assert all(not p.event_handlers for p in publishers.values())
        [images] = node._image_subscriptions
        assert images.event_handlers
