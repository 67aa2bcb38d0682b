"""The perception node as a process over real DDS: outputs, parameters, bad frames, floods.

One node (a tiny MLoRE checkpoint written by the test, reliable input QoS so that no test
frame is lost in transport) serves every test of this module; a test client publishes
camera frames and records what the node publishes.
"""

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from mtdp_ros.ros.colormaps import label_palette
from mtdp_ros.ros.image_input import SUPPORTED_ENCODINGS
from mtdp_ros.ros.image_output import image_msg_to_numpy
from mtdp_ros.ros.pointcloud import cloud_msg_to_numpy

from ros_harness import (NODE_NAME, TINY_MLORE, camera_info, domain_id, image_msg,
                         make_stamp, pattern_image, raw_image, serving_node, write_checkpoint)

# Slow (a node process over real DDS): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

IMAGE_TOPICS = ['semantic/labels', 'semantic/color', 'depth/image', 'depth/color', 'normals',
                'normals/color', 'edges', 'edges/color']
ALL_TOPICS = IMAGE_TOPICS + ['points']


class Frames:
    """Unique stamps (the current time) for the frames of this module."""

    @staticmethod
    def next_stamp():
        return make_stamp()


@pytest.fixture(scope='module')
def perception(tmp_path_factory):
    directory = tmp_path_factory.mktemp('node_outputs')
    params = {
        'model.preset': write_checkpoint(directory, TINY_MLORE),
        'input.qos': 'reliable', 'watchdog.timeout': 600.0,
        # The flood test bounds the input side; the writers' own history (output.qos_depth
        # frames of every output, 10 by default: about +86 MB at 640x480) is pinned small.
        'output.qos_depth': 2}
    subscriptions = [(Image, topic) for topic in IMAGE_TOPICS] + [
        (PointCloud2, 'points'), (DiagnosticArray, '/diagnostics')]
    with serving_node(domain_id(__name__), directory, params, subscriptions,
                      publishers=[(Image, 'image'), (CameraInfo, 'camera_info')]
                      ) as (node, client):
        image_pub = client.publisher(Image, 'image', reliable=True)
        info_pub = client.publisher(CameraInfo, 'camera_info', reliable=True)
        frames = Frames()
        # Until every output has answered once, the node may not have discovered all of
        # our subscriptions yet (it publishes only to topics with subscribers).
        rgb = pattern_image(48, 64)
        answered = False
        deadline = time.monotonic() + 30
        while not answered and time.monotonic() < deadline:
            info_pub.publish(camera_info(64, 48))
            stamp = frames.next_stamp()
            image_pub.publish(image_msg(rgb, stamp=stamp))
            answered = client.wait_for_stamp(ALL_TOPICS, stamp, timeout=1.5)
        assert answered, node.log()
        client.clear()
        yield node, client, image_pub, info_pub, frames


def send(perception, msg, info=None):
    node, client, image_pub, info_pub, frames = perception
    if info is not None:
        info_pub.publish(info)
        client.spin_for(0.1)
    image_pub.publish(msg)


def test_every_output_has_the_input_header_size_encoding_and_range(perception):
    node, client, image_pub, info_pub, frames = perception
    width, height = 161, 97           # odd, and not the model's aspect ratio
    stamp = frames.next_stamp()
    send(perception, image_msg(pattern_image(height, width), stamp=stamp, frame_id='cam_test'),
         info=camera_info(width, height, frame_id='cam_test', fx=150.0))
    assert client.wait_for_stamp(ALL_TOPICS, stamp, 20), node.log()
    out = {t: client.messages_with_stamp(t, stamp)[0] for t in ALL_TOPICS}
    for topic in ALL_TOPICS:
        msg = out[topic]
        assert (msg.width, msg.height) == (width, height), topic
        assert msg.header.frame_id == 'cam_test', topic
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (stamp.sec, stamp.nanosec)
    encodings = {t: out[t].encoding for t in IMAGE_TOPICS}
    assert encodings == {'semantic/labels': 'mono8', 'semantic/color': 'rgb8',
                         'depth/image': '32FC1', 'depth/color': 'rgb8', 'normals': '32FC3',
                         'normals/color': 'rgb8', 'edges': '32FC1', 'edges/color': 'rgb8'}
    labels = image_msg_to_numpy(out['semantic/labels'])
    assert labels.max() < 40
    np.testing.assert_array_equal(image_msg_to_numpy(out['semantic/color']),
                                  label_palette(256)[labels])
    depth = image_msg_to_numpy(out['depth/image'])
    valid = np.isfinite(depth)
    assert valid.any() and np.all(depth[valid] > 0)
    normals = image_msg_to_numpy(out['normals'])
    finite = np.isfinite(normals).all(axis=2)
    assert finite.mean() > 0.99
    np.testing.assert_allclose(np.linalg.norm(normals[finite], axis=1), 1.0, atol=1e-4)
    normals_rgb = image_msg_to_numpy(out['normals/color']).astype(float)
    expected = (normals[finite] + 1.0) / 2.0 * 255.0
    assert np.abs(normals_rgb[finite] - expected).max() <= 0.5 + 1e-3
    edges = image_msg_to_numpy(out['edges'])
    assert edges.min() >= 0.0 and edges.max() <= 1.0
    edges_rgb = image_msg_to_numpy(out['edges/color'])
    assert np.abs(edges_rgb[..., 0] - edges * 255.0).max() <= 0.5 + 1e-3
    depth_rgb = image_msg_to_numpy(out['depth/color'])
    assert depth_rgb.shape == (height, width, 3)
    # The cloud: one point per pixel, z = depth, x and y from the camera matrix.
    cloud = cloud_msg_to_numpy(out['points'])
    np.testing.assert_array_equal(np.isnan(cloud[..., 2]), ~valid)
    np.testing.assert_allclose(cloud[..., 2][valid], depth[valid], rtol=1e-6)
    us = np.arange(width)[None, :].repeat(height, 0)
    vs = np.arange(height)[:, None].repeat(width, 1)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    np.testing.assert_allclose(cloud[..., 0][valid], ((us - cx) / 150.0 * depth)[valid],
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cloud[..., 1][valid], ((vs - cy) / 150.0 * depth)[valid],
                               rtol=1e-4, atol=1e-6)


def test_every_camera_encoding_is_served(perception):
    node, client, image_pub, info_pub, frames = perception
    rgb = pattern_image(48, 64, seed=5)
    stamps = {}
    for encoding in SUPPORTED_ENCODINGS:
        stamp = frames.next_stamp()
        stamps[encoding] = stamp
        send(perception, image_msg(rgb, encoding, stamp=stamp, frame_id=f'cam_{encoding}'))
        # One at a time: a newer frame would replace a waiting one (by design).
        assert client.wait_for_stamp(['depth/image', 'semantic/labels'], stamp, 20), \
            (encoding, node.log())
    for encoding, stamp in stamps.items():
        msg = client.messages_with_stamp('semantic/labels', stamp)[0]
        assert (msg.width, msg.height, msg.header.frame_id) == (64, 48, f'cam_{encoding}')


def set_params(client, **values):
    names = {k.replace('__', '.'): v for k, v in values.items()}
    return client.set_parameters(NODE_NAME, names)


def test_tasks_and_switches_change_while_running(perception):
    node, client, image_pub, info_pub, frames = perception
    try:
        (result,) = set_params(client, tasks=['depth'])
        assert result.successful, result.reason
        stamp = frames.next_stamp()
        send(perception, image_msg(pattern_image(48, 64), stamp=stamp))
        assert client.wait_for_stamp(['depth/image', 'depth/color'], stamp, 20), node.log()
        client.spin_for(0.5)
        assert not client.messages_with_stamp('semantic/labels', stamp)
        assert not client.messages_with_stamp('normals', stamp)
        (result,) = set_params(client, publish__color=False)
        assert result.successful, result.reason
        stamp = frames.next_stamp()
        send(perception, image_msg(pattern_image(48, 64), stamp=stamp))
        assert client.wait_for_stamp(['depth/image'], stamp, 20), node.log()
        client.spin_for(0.5)
        assert not client.messages_with_stamp('depth/color', stamp)
    finally:
        # The documented reset: ['all'] (the CLI types "[]" as a bool array).
        results = set_params(client, tasks=['all'], publish__color=True)
        assert all(r.successful for r in results), [r.reason for r in results]
    stamp = frames.next_stamp()
    send(perception, image_msg(pattern_image(48, 64), stamp=stamp))
    assert client.wait_for_stamp(IMAGE_TOPICS, stamp, 20), node.log()


@pytest.mark.parametrize('values, words', [
    ({'tasks': ['depth', 'flow']}, "unknown tasks ['flow']"),
    ({'tasks': ['depth', 'depth']}, 'twice'),
    ({'diffusion.steps': 3}, 'TaskDiffusion models only'),
    ({'diffusion.steps': 500}, 'out of range'),
    ({'diffusion.seed': -1}, 'out of range'),
    ({'points.color': 'purple'}, "points.color must be one of ['image', 'semantic']"),
    ({'points.stride': 0}, 'out of range'),
    ({'depth.color_min': 5.0, 'depth.color_max': 2.0}, 'must exceed depth.color_min'),
    ({'model.preset': 'mlore_nyud_vitL'},
     'model.preset can change only while the node is unconfigured (now active)'),
    ({'model.checkpoint': '/tmp/other.safetensors'}, 'model.checkpoint can change only'),
    ({'engine.device': 'cpu'}, 'read-only'),
    ({'publish.color': 'yes'}, 'type'),
])
def test_invalid_values_are_rejected_with_a_reason(perception, values, words):
    node, client, image_pub, info_pub, frames = perception
    results = client.set_parameters(NODE_NAME, values)
    assert not all(r.successful for r in results)
    reasons = ' '.join(r.reason for r in results)
    assert words in reasons, reasons


def test_depth_colour_range_is_dynamic(perception):
    node, client, image_pub, info_pub, frames = perception
    try:
        results = client.set_parameters(NODE_NAME, {'depth.color_min': 1000.0 - 1,
                                                    'depth.color_max': 1000.0})
        assert all(r.successful for r in results), [r.reason for r in results]
        stamp = frames.next_stamp()
        send(perception, image_msg(pattern_image(48, 64), stamp=stamp))
        assert client.wait_for_stamp(['depth/color', 'depth/image'], stamp, 20), node.log()
        depth = image_msg_to_numpy(client.messages_with_stamp('depth/image', stamp)[0])
        colours = image_msg_to_numpy(client.messages_with_stamp('depth/color', stamp)[0])
        # Every valid depth is nearer than 999 m: all pixels get the near-end colour.
        valid = np.isfinite(depth)
        near_colour = colours[valid][0]
        assert np.all(colours[valid] == near_colour)
    finally:
        client.set_parameters(NODE_NAME, {'depth.color_min': 0.0, 'depth.color_max': 0.0})


def diagnostics_values(client):
    arrays = client.received['/diagnostics']
    return {kv.key: kv.value for kv in arrays[-1].status[0].values} if arrays else {}


def test_malformed_frames_are_rejected_and_the_node_keeps_serving(perception):
    node, client, image_pub, info_pub, frames = perception
    client.spin_until(lambda: client.received['/diagnostics'], 5)
    rejected_before = int(diagnostics_values(client).get('rejected', '0'))
    bad = [
        ('bayer_rggb8', 64, 48, 64, bytes(64 * 48), 'unsupported encoding'),
        ('rgb8', 64, 48, 192, bytes(192 * 48 - 5), 'data holds'),
        ('rgb8', 64, 48, 100, bytes(100 * 48), 'step 100 is smaller'),
        ('rgb8', 0, 0, 0, b'', 'image is empty'),
        ('mono8', 200000, 100000, 200000, bytes(16), 'exceeds the limit'),
        ('yuyv', 63, 48, 126, bytes(126 * 48), 'even width'),
    ]
    bad_stamps = []
    for encoding, width, height, step, data, words in bad:
        stamp = frames.next_stamp()
        bad_stamps.append(stamp)
        send(perception, raw_image(encoding, width, height, step, data, stamp))
        client.spin_for(0.3)
        # The node answers the next valid frame.
        good = frames.next_stamp()
        send(perception, image_msg(pattern_image(48, 64), stamp=good))
        assert client.wait_for_stamp(['depth/image', 'semantic/labels'], good, 20), \
            (words, node.log())
        assert node.wait_for_log(words, 5), (words, node.log())
    client.spin_for(0.5)
    for stamp in bad_stamps:
        for topic in ALL_TOPICS:
            assert not client.messages_with_stamp(topic, stamp), topic
    assert node.process.poll() is None
    assert 'rejected a frame from /image' in node.log()
    assert client.spin_until(
        lambda: int(diagnostics_values(client).get('rejected', '0')) >= rejected_before + 6,
        5), diagnostics_values(client)


def test_diagnostics_report_rates_latency_and_engine(perception):
    node, client, image_pub, info_pub, frames = perception
    for _ in range(5):
        send(perception, image_msg(pattern_image(48, 64), stamp=frames.next_stamp()))
        client.spin_for(0.2)
    client.received['/diagnostics'].clear()
    assert client.spin_until(lambda: len(client.received['/diagnostics']) >= 2, 5)
    arrays = client.received['/diagnostics']
    status = arrays[-1].status[0]
    assert status.name == f'{NODE_NAME}: perception'
    values = {kv.key: kv.value for kv in status.values}
    for key in ('input_rate_hz', 'output_rate_hz', 'latency_p50_ms', 'latency_p95_ms',
                'dropped', 'rejected', 'device', 'backend', 'model'):
        assert key in values, key
    assert values['device'] == 'cpu' and values['backend'] == 'torch'
    assert values['model'] == 'tiny_mlore'
    assert values['random_weights'] == 'false'
    assert status.level == status.OK
    assert 0.0 < float(values['latency_p50_ms']) <= float(values['latency_p95_ms']) < 10000
    assert float(values['output_rate_hz']) > 0
    # About once a second.
    first = arrays[-2].header.stamp.sec + arrays[-2].header.stamp.nanosec * 1e-9
    last = arrays[-1].header.stamp.sec + arrays[-1].header.stamp.nanosec * 1e-9
    assert 0.5 < last - first < 2.0


def test_a_flood_keeps_memory_bounded_and_serves_the_newest_frame(perception):
    node, client, image_pub, info_pub, frames = perception
    rgb = pattern_image(480, 640)
    # Warm the node up at this size first (allocations of the first frame of a size).
    stamp = frames.next_stamp()
    send(perception, image_msg(rgb, stamp=stamp))
    assert client.wait_for_stamp(['depth/image'], stamp, 30), node.log()
    client.spin_for(0.5)
    rss_before = node.rss_mb()
    dropped_before = int(diagnostics_values(client).get('dropped', '0'))
    template = image_msg(rgb)
    stamps = []
    for _ in range(300):
        stamp = frames.next_stamp()
        template.header.stamp = stamp
        image_pub.publish(template)
        stamps.append(stamp)
        client.executor.spin_once(timeout_sec=0)
    assert client.wait_for_stamp(['depth/image', 'semantic/labels'], stamps[-1], 30), node.log()
    served = [s for s in stamps if client.messages_with_stamp('depth/image', s)]
    assert len(served) < 300                  # frames were dropped, not queued
    rss_after = node.rss_mb()
    # 300 frames of 0.9 MB would be 270 MB if they were queued.
    assert rss_after - rss_before < 80, (rss_before, rss_after)
    assert client.spin_until(
        lambda: int(diagnostics_values(client).get('dropped', '0')) > dropped_before, 5)
    client.clear()
