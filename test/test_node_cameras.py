"""Several cameras, one node, one engine, over real DDS (parameter ``cameras``).

One node in its own namespace and ROS domain serves three cameras of different sizes
(a tiny MLoRE checkpoint written by the test, reliable input QoS so that no test frame is
lost in transport); a test client publishes each camera's frames and records what the
node publishes under each camera's name.
"""

import math
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from mtdp_ros.ros.outputs import output_topics

from ros_harness import (TINY_MLORE, camera_info, domain_id, image_msg, make_stamp,
                         pattern_image, raw_image, serving_node, write_checkpoint)

# Slow (a node process over real DDS): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

NAMESPACE = '/multicam_test'
# (width, height) of each camera: different sizes and aspect ratios.
CAMERAS = {'front': (64, 48), 'left': (161, 97), 'right': (90, 120)}
OUTPUTS = output_topics(TINY_MLORE['tasks'])
IMAGE_OUTPUTS = [topic for topic, msg_type in OUTPUTS if msg_type is Image]
SIZED_OUTPUTS = [topic for topic, msg_type in OUTPUTS if msg_type is not PointCloud2]


def topic(camera, relative):
    """The absolute name of ``camera``'s topic ``relative``."""
    return f'{NAMESPACE}/{camera}/{relative}'


@pytest.fixture(scope='module')
def cameras(tmp_path_factory):
    directory = tmp_path_factory.mktemp('node_cameras')
    params = {'model.preset': write_checkpoint(directory, TINY_MLORE),
              'cameras': list(CAMERAS), 'input.qos': 'reliable',
              'watchdog.timeout': 600.0, 'output.qos_depth': 2, 'diagnostics.period': 0.5}
    subscriptions = [(msg_type, topic(camera, relative)) for camera in CAMERAS
                     for relative, msg_type in OUTPUTS] + [(DiagnosticArray, '/diagnostics')]
    publishers = [(msg_type, topic(camera, relative)) for camera in CAMERAS
                  for msg_type, relative in ((Image, 'image'), (CameraInfo, 'camera_info'))]
    with serving_node(domain_id(__name__), directory, params, subscriptions,
                      publishers=publishers, namespace=NAMESPACE,
                      inputs=[topic(c, 'image') for c in CAMERAS]) as (node, client):
        # Until every output of every camera has answered once, the node may not have
        # discovered all of our subscriptions yet (it publishes only to subscribed topics).
        deadline = time.monotonic() + 60
        answered = set()
        while answered != set(CAMERAS) and time.monotonic() < deadline:
            stamps = send_round(client, CAMERAS)
            client.spin_until(lambda: all(
                client.wait_for_stamp([topic(c, t) for t, _ in OUTPUTS], s, 0)
                for c, s in stamps.items()), 2.0)
            answered |= {c for c, s in stamps.items() if all(
                client.messages_with_stamp(topic(c, t), s) for t, _ in OUTPUTS)}
        assert answered == set(CAMERAS), node.log()
        client.clear()
        yield node, client


def send_round(client, cameras, info=True):
    """One frame (and camera_info) on each of ``cameras``; {camera: stamp}."""
    stamps = {}
    for camera in cameras:
        width, height = CAMERAS[camera]
        if info:
            client.publisher(CameraInfo, topic(camera, 'camera_info'), reliable=True).publish(
                camera_info(width, height, frame_id=f'{camera}_optical', fx=width * 0.9))
        stamp = make_stamp()
        stamps[camera] = stamp
        client.publisher(Image, topic(camera, 'image'), reliable=True).publish(
            image_msg(pattern_image(height, width, seed=len(camera)), stamp=stamp,
                      frame_id=f'{camera}_optical'))
    return stamps


def answered(client, camera, stamp, topics=('depth/image', 'semantic/labels')):
    return all(client.messages_with_stamp(topic(camera, t), stamp) for t in topics)


def test_every_camera_gets_its_outputs_with_its_own_header_and_size(cameras):
    node, client = cameras
    stamps = send_round(client, CAMERAS)
    all_topics = [t for t, _ in OUTPUTS]
    assert client.spin_until(lambda: all(
        all(client.messages_with_stamp(topic(c, t), s) for t in all_topics)
        for c, s in stamps.items()), 30), node.log()
    for camera, stamp in stamps.items():
        width, height = CAMERAS[camera]
        for relative in all_topics:
            messages = client.messages_with_stamp(topic(camera, relative), stamp)
            assert len(messages) == 1, (camera, relative)
            msg = messages[0]
            assert msg.header.frame_id == f'{camera}_optical', (camera, relative)
            if relative in SIZED_OUTPUTS:
                assert (msg.width, msg.height) == (width, height), (camera, relative)
            else:                                   # the cloud: one point per pixel
                assert msg.width * msg.height == width * height, (camera, relative)
    # Nothing of one camera is published under another's name.
    for camera, stamp in stamps.items():
        for other in CAMERAS:
            if other != camera:
                assert not client.messages_with_stamp(topic(other, 'depth/image'), stamp)


def test_a_camera_that_stops_does_not_hold_the_others(cameras):
    node, client = cameras
    rounds = 8
    served = {'front': 0, 'left': 0}
    # 'right' sends nothing from now on; each round waits for both others' outputs.
    for _ in range(rounds):
        stamps = send_round(client, served, info=False)
        assert client.spin_until(
            lambda: all(answered(client, c, s) for c, s in stamps.items()), 30), node.log()
        for camera in served:
            served[camera] += 1
    assert served == {'front': rounds, 'left': rounds}
    # And the silent camera is served again as soon as it sends.
    stamps = send_round(client, ['right'], info=False)
    assert client.spin_until(lambda: answered(client, 'right', stamps['right']), 30)


def test_a_bad_frame_on_one_camera_costs_the_others_nothing(cameras):
    node, client = cameras
    for round_index in range(3):
        bad_stamp = make_stamp()
        client.publisher(Image, topic('left', 'image'), reliable=True).publish(
            raw_image('bayer_rggb8', 64, 48, 64, bytes(64 * 48), bad_stamp))
        stamps = send_round(client, ['front', 'right'], info=False)
        assert client.spin_until(
            lambda: all(answered(client, c, s) for c, s in stamps.items()), 30), node.log()
        assert node.wait_for_log(f'rejected a frame from {topic("left", "image")}', 10), \
            node.log()
    client.spin_for(0.3)
    assert not client.messages_with_stamp(topic('left', 'depth/image'), bad_stamp)
    # A bad camera_info on one camera is ignored with a reason naming it; all still serve.
    info = camera_info(*CAMERAS['right'])
    info.d = [math.nan] * 5
    client.publisher(CameraInfo, topic('right', 'camera_info'), reliable=True).publish(info)
    assert node.wait_for_log(f'ignoring camera_info from {topic("right", "camera_info")}',
                             10), node.log()
    stamps = send_round(client, CAMERAS, info=False)
    assert client.spin_until(
        lambda: all(answered(client, c, s) for c, s in stamps.items()), 30), node.log()
    assert node.process.poll() is None


def test_diagnostics_have_one_status_per_camera_and_the_engine(cameras):
    node, client = cameras
    send_round(client, CAMERAS, info=False)

    def statuses():
        arrays = client.received['/diagnostics']
        return {s.name: {kv.key: kv.value for kv in s.values}
                for s in arrays[-1].status} if arrays else {}

    # Status names carry the node's namespace (two nodes named alike must not collide).
    prefix = f"{NAMESPACE.lstrip('/')}/mtdp_perception"
    expected = {f'{prefix}: perception {c}' for c in CAMERAS} | {f'{prefix}: engine'}
    assert client.spin_until(lambda: set(statuses()) == expected and int(
        statuses()[f'{prefix}: engine'].get('batches', '0')) > 0, 10), statuses()
    found = statuses()
    for camera in CAMERAS:
        values = found[f'{prefix}: perception {camera}']
        assert values['input_topic'] == topic(camera, 'image')
        assert int(values['frames_out']) > 0
    assert int(found[f'{prefix}: perception left']['rejected']) >= 3
    assert int(found[f'{prefix}: perception front']['rejected']) == 0
    engine = found[f'{prefix}: engine']
    assert engine['cameras'] == ','.join(CAMERAS) and engine['max_batch'] == '8'
    sizes = dict(part.split(':') for part in engine['batch_size_histogram'].split(','))
    assert all(1 <= int(size) <= len(CAMERAS) for size in sizes)
    assert sum(int(n) for n in sizes.values()) == int(engine['batches'])
    assert float(engine['model_per_batch_p50_ms']) > 0
