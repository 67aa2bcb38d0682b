"""Camera geometry of the node over real DDS: rectified input, depth/camera_info, focal
correction, and camera_info that cannot be used.

One node (a tiny MLoRE checkpoint whose config states a training focal length,
``camera.rectified`` true, reliable input) serves the module. The expected depth is
computed in this process by an engine on the same checkpoint.
"""

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from mtdp_ros.ros.image_output import image_msg_to_numpy
from mtdp_ros.ros.pointcloud import cloud_msg_to_numpy
from mtdp_ros.runtime import create_engine

from ros_harness import (RELIABLE, TINY_MLORE, domain_id, image_msg, make_stamp, pattern_image,
                         serving_node, write_checkpoint)

WIDTH, HEIGHT = 64, 48

# Slow (a node process over real DDS): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

# 48 x 64 letterboxed into the tiny model's 64 x 96: 64 x 85 pixels, scale (sy, sx) =
# (64 / 48, 85 / 64). With P's fx = 50 and fy = 52 the focal length seen by the model is
# about 68 px, against 40 px in "training".
TRAIN_FOCAL_PX = 40.0
EXPECTED_FACTOR = 0.5 * (50.0 * 85 / 64 + 52.0 * 64 / 48) / TRAIN_FOCAL_PX
DEPTH_IMAGE = 'depth/image'


def camera_info_topic_of(image_topic):
    """The camera_info topic an image_transport CameraSubscriber pairs with ``image_topic``.

    image_transport's getCameraInfoTopic: ``camera_info`` in the image topic's namespace.
    """
    namespace = image_topic.rsplit('/', 1)[0] if '/' in image_topic else ''
    return f'{namespace}/camera_info' if namespace else 'camera_info'


DEPTH_INFO = camera_info_topic_of(DEPTH_IMAGE)
TOPICS = (DEPTH_IMAGE, DEPTH_INFO, 'points')


def rectified_camera_info():
    """Raw K and D (strong barrel distortion) and a rectified P with other intrinsics."""
    info = CameraInfo()
    info.header.frame_id = 'wrong_frame_from_the_driver'
    info.width, info.height = WIDTH, HEIGHT
    info.distortion_model = 'plumb_bob'
    info.d = [-0.3, 0.1, 0.0, 0.0, 0.0]
    info.k = [60.0, 0.0, 31.5, 0.0, 60.0, 23.5, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [50.0, 0.0, 31.0, 0.0, 0.0, 52.0, 24.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


@pytest.fixture(scope='module')
def geometry(tmp_path_factory):
    directory = tmp_path_factory.mktemp('node_geometry')
    config = {**TINY_MLORE, 'train_focal_px': TRAIN_FOCAL_PX}
    checkpoint = write_checkpoint(directory, config, name='tiny_focal.safetensors')
    params = {'model.preset': checkpoint, 'camera.rectified': True, 'input.qos': 'reliable',
              'watchdog.timeout': 600.0, 'depth.focal_correction': 'scale'}
    engine = create_engine(checkpoint, device='cpu')
    try:
        with serving_node(domain_id(__name__), directory, params,
                          subscriptions=[(Image, DEPTH_IMAGE), (CameraInfo, DEPTH_INFO),
                                         (PointCloud2, 'points')],
                          publishers=[(Image, 'image'), (CameraInfo, 'camera_info')],
                          inputs=['image', 'camera_info']) as (node, client):
            yield (node, client, client.publisher(Image, 'image', reliable=True),
                   client.publisher(CameraInfo, 'camera_info', reliable=True), engine)
    finally:
        engine.close()


def _serve_until(geometry, rgb, topics, info=None, timeout=60.0):
    """Publish (camera_info, then) a frame with a fresh stamp until every topic answers it.

    camera_info and image are separate topics, so the node may take a frame before the
    camera_info sent with it; a frame is answered on depth/camera_info only once the node
    has one. Returns the stamp that got its answers.
    """
    node, client, image_pub, info_pub, _ = geometry
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if info is not None:
            info_pub.publish(info)
        stamp = make_stamp()
        image_pub.publish(image_msg(rgb, stamp=stamp, frame_id='camera_optical'))
        if client.wait_for_stamp(topics, stamp, timeout=3.0):
            return stamp
    raise AssertionError(f'no answer on {topics}:\n{node.log()}')


def test_without_camera_info_depth_is_uncorrected_and_said_once(geometry):
    node, client, _, _, engine = geometry
    rgb = pattern_image(HEIGHT, WIDTH, seed=3)
    for _ in range(2):
        stamp = _serve_until(geometry, rgb, ('depth/image',))
    depth = image_msg_to_numpy(client.messages_with_stamp('depth/image', stamp)[0])
    np.testing.assert_allclose(depth, engine.infer(rgb)['depth'], rtol=1e-4)
    # Nothing to describe the depth image (nor a cloud) without camera_info.
    assert not client.messages_with_stamp('depth/camera_info', stamp)
    assert not client.messages_with_stamp('points', stamp)
    assert node.log().count('no camera_info on') == 1, node.log()


def test_depth_camera_info_and_cloud_of_a_rectified_camera(geometry):
    node, client, _, _, engine = geometry
    info = rectified_camera_info()
    rgb = pattern_image(HEIGHT, WIDTH, seed=4)
    stamp = _serve_until(geometry, rgb, TOPICS, info=info)
    # Paired as a CameraSubscriber pairs them: <ns>/image with <ns>/camera_info, one of
    # each per stamp, the same header.
    assert DEPTH_INFO == 'depth/camera_info'
    depth_msg, = client.messages_with_stamp(DEPTH_IMAGE, stamp)
    depth_info, = client.messages_with_stamp(DEPTH_INFO, stamp)
    cloud_msg = client.messages_with_stamp('points', stamp)[0]
    # depth/camera_info: the depth image's header and size, K from P, zero D.
    assert depth_info.header == depth_msg.header
    assert depth_info.header.frame_id == 'camera_optical'
    assert (depth_info.width, depth_info.height) == (depth_msg.width, depth_msg.height)
    assert list(depth_info.k) == [50.0, 0.0, 31.0, 0.0, 52.0, 24.0, 0.0, 0.0, 1.0]
    assert list(depth_info.d) == [0.0] * 5 and list(depth_info.p) == list(info.p)
    # Depth is corrected by the focal ratio of P (as seen in the model's input).
    depth = image_msg_to_numpy(depth_msg)
    assert engine.plan((HEIGHT, WIDTH)).resized_size == (64, 85)
    uncorrected = engine.infer(rgb)['depth']
    np.testing.assert_allclose(depth, uncorrected * EXPECTED_FACTOR, rtol=1e-4)
    # The cloud back-projects through P and ignores D: x = (u - 31) / 50 z, y = (v - 24) / 52 z.
    cloud = cloud_msg_to_numpy(cloud_msg)
    us, vs = np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT))
    valid = np.isfinite(depth)
    assert valid.mean() > 0.9
    np.testing.assert_allclose(cloud[..., 0][valid], ((us - 31.0) / 50.0 * depth)[valid],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cloud[..., 1][valid], ((vs - 24.0) / 52.0 * depth)[valid],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cloud[..., 2][valid], depth[valid])


def test_camera_info_with_nan_distortion_is_rejected_with_a_warning(geometry):
    node, client, _, _, _ = geometry
    good = rectified_camera_info()
    rgb = pattern_image(HEIGHT, WIDTH, seed=5)
    _serve_until(geometry, rgb, TOPICS, info=good)
    bad = rectified_camera_info()
    bad.d = [float('nan'), 0.1, 0.0, 0.0, 0.0]
    bad.p = [100.0, 0.0, 31.0, 0.0, 0.0, 100.0, 24.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    stamp = _serve_until(geometry, rgb, TOPICS, info=bad)
    assert node.wait_for_log('distortion coefficients D contain NaN or inf', 10), node.log()
    assert 'ignoring camera_info' in node.log()
    # The node keeps serving with the last usable camera_info: a finite cloud, P of `good`.
    cloud = cloud_msg_to_numpy(client.messages_with_stamp('points', stamp)[0])
    assert np.isfinite(cloud[..., :3]).mean() > 0.9
    depth_info = client.messages_with_stamp('depth/camera_info', stamp)[0]
    assert list(depth_info.p) == list(good.p)


def _diagnostic_value(client, key):
    """The value of ``key`` in the latest /diagnostics status of the node, or None."""
    for array in reversed(client.received.get('/diagnostics', [])):
        for status in array.status:
            if status.name.endswith(': perception'):
                return {kv.key: kv.value for kv in status.values}.get(key)
    return None


def test_nan_in_p_is_never_republished_and_diagnostics_say_why(geometry):
    node, client, _, _, _ = geometry
    client.subscribe(DiagnosticArray, '/diagnostics', RELIABLE)
    good = rectified_camera_info()
    rgb = pattern_image(HEIGHT, WIDTH, seed=6)
    _serve_until(geometry, rgb, TOPICS, info=good)
    bad = rectified_camera_info()
    bad.p = [50.0, 0.0, 31.0, float('nan'), 0.0, 52.0, 24.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    _serve_until(geometry, rgb, TOPICS, info=bad)
    # The warning may be throttled (one per kind per 5 s): /diagnostics says it anyway.
    client.received['/diagnostics'].clear()
    assert client.spin_until(lambda: 'projection matrix P contains NaN or inf' in (
        _diagnostic_value(client, 'camera_info_problem') or ''), 20), node.log()
    stamp = _serve_until(geometry, rgb, TOPICS)
    depth_info = client.messages_with_stamp('depth/camera_info', stamp)[0]
    assert list(depth_info.p) == list(good.p)
    # A usable camera_info clears it.
    _serve_until(geometry, rgb, TOPICS, info=good)
    client.received['/diagnostics'].clear()
    assert client.spin_until(lambda: _diagnostic_value(client, 'lifecycle_state') is not None
                             and _diagnostic_value(client, 'camera_info_problem') is None, 20)
