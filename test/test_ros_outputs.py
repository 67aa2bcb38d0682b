"""The node's output messages (mtdp_ros.ros.outputs): topics, encodings, laziness, points."""

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from mtdp_ros.ros.colormaps import colorize
from mtdp_ros.ros.image_output import image_msg_to_numpy
from mtdp_ros.ros.outputs import OutputBuilder, OutputOptions, output_topics, raw_encoding
from mtdp_ros.ros.pointcloud import cloud_msg_to_numpy, unpack_rgb

HEIGHT, WIDTH = 6, 8


def nyud_outputs():
    rng = np.random.default_rng(0)
    normals = rng.normal(size=(HEIGHT, WIDTH, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    return {
        'semseg': rng.integers(0, 40, (HEIGHT, WIDTH)).astype(np.uint8),
        'depth': rng.uniform(0.5, 5.0, (HEIGHT, WIDTH)).astype(np.float32),
        'normals': normals,
        'edge': rng.uniform(0, 1, (HEIGHT, WIDTH)).astype(np.float32),
    }


def header():
    value = Header(frame_id='camera_optical')
    value.stamp.sec, value.stamp.nanosec = 12, 345
    return value


def camera_info():
    info = CameraInfo(width=WIDTH, height=HEIGHT)
    info.k = [4.0, 0.0, 3.5, 0.0, 4.0, 2.5, 0.0, 0.0, 1.0]
    return info


def test_topics_of_a_model_follow_its_tasks():
    nyud = dict(output_topics(['semseg', 'depth', 'normals', 'edge']))
    assert nyud['semantic/labels'] is Image and nyud['points'] is PointCloud2
    assert set(nyud) == {'semantic/labels', 'semantic/color', 'depth/image', 'depth/color',
                         'normals', 'normals/color', 'edges', 'edges/color', 'points',
                         'depth/camera_info'}
    assert nyud['depth/camera_info'] is CameraInfo
    pascal = dict(output_topics(['semseg', 'human_parts', 'sal', 'normals', 'edge']))
    # No depth, no cloud.
    assert 'points' not in pascal and 'depth/camera_info' not in pascal
    assert {'human_parts/labels', 'saliency', 'saliency/color'} <= set(pascal)


def test_raw_encodings():
    assert raw_encoding(np.zeros((2, 2), np.uint8)) == 'mono8'
    assert raw_encoding(np.zeros((2, 2), np.uint16)) == 'mono16'
    assert raw_encoding(np.zeros((2, 2), np.float32)) == '32FC1'
    assert raw_encoding(np.zeros((2, 2, 3), np.float32)) == '32FC3'


def test_every_message_carries_the_header_and_the_values():
    outputs = nyud_outputs()
    rgb = np.full((HEIGHT, WIDTH, 3), 7, np.uint8)
    messages = list(OutputBuilder().messages(outputs, header(), rgb, camera_info()))
    topics = [m.topic for m in messages]
    assert topics == ['semantic/labels', 'semantic/color', 'depth/image', 'depth/camera_info',
                      'depth/color', 'normals', 'normals/color', 'edges', 'edges/color',
                      'points']
    by_topic = {m.topic: m for m in messages}
    for message in messages:
        assert message.msg.header.stamp.sec == 12 and message.msg.header.stamp.nanosec == 345
        assert message.msg.header.frame_id == 'camera_optical'
        assert (message.msg.height, message.msg.width) == (HEIGHT, WIDTH)
    assert by_topic['depth/image'].kind == 'raw' and by_topic['depth/color'].kind == 'color'
    np.testing.assert_array_equal(image_msg_to_numpy(by_topic['depth/image'].msg),
                                  outputs['depth'])
    np.testing.assert_array_equal(image_msg_to_numpy(by_topic['semantic/labels'].msg),
                                  outputs['semseg'])
    np.testing.assert_array_equal(image_msg_to_numpy(by_topic['semantic/color'].msg),
                                  colorize('semseg', outputs['semseg']))
    cloud = cloud_msg_to_numpy(by_topic['points'].msg)
    np.testing.assert_allclose(cloud[..., 2], outputs['depth'])
    # Pixel (u=0, v=0) lies at ((0 - cx) / fx, (0 - cy) / fy) * z.
    np.testing.assert_allclose(cloud[0, 0, :2], np.array([-3.5, -2.5]) / 4.0 *
                               outputs['depth'][0, 0], rtol=1e-6)


def test_only_wanted_messages_are_built():
    asked = []

    def wanted(topic):
        asked.append(topic)
        return topic in ('depth/image', 'points')

    messages = list(OutputBuilder().messages(nyud_outputs(), header(), None, camera_info(),
                                             OutputOptions(publish_color=False),
                                             wanted=wanted))
    assert [m.topic for m in messages] == ['depth/image', 'points']
    # With colour off, colour topics are not even asked about.
    assert not [topic for topic in asked if topic.endswith('/color')]


def test_points_problems_are_reported_not_raised():
    problems = []
    outputs = nyud_outputs()
    builder = OutputBuilder()

    def report(kind, text):
        problems.append((kind, text))

    assert not [m for m in builder.messages(outputs, header(), None, None,
                                            wanted=lambda t: t == 'points',
                                            on_problem=report)]
    assert problems[-1][0] == 'points_info' and 'camera_info' in problems[-1][1]
    del outputs['depth']
    assert not list(builder.messages(outputs, header(), None, camera_info(),
                                     wanted=lambda t: t == 'points', on_problem=report))
    assert problems[-1][0] == 'points_depth'
    bad = camera_info()
    bad.k = [0.0] * 9
    assert not list(builder.messages(nyud_outputs(), header(), None, bad,
                                     wanted=lambda t: t == 'points', on_problem=report))
    assert problems[-1][0] == 'points_info' and 'K' in problems[-1][1]


def test_semantic_point_colours():
    outputs = nyud_outputs()
    options = OutputOptions(points_color='semantic')
    messages = {m.topic: m.msg for m in OutputBuilder().messages(
        outputs, header(), np.zeros((HEIGHT, WIDTH, 3), np.uint8), camera_info(), options,
        wanted=lambda t: t == 'points')}
    cloud = cloud_msg_to_numpy(messages['points'])
    np.testing.assert_array_equal(unpack_rgb(cloud[..., 3]),
                                  colorize('semseg', outputs['semseg']))


def test_rectified_input_uses_p_for_the_cloud_and_depth_camera_info():
    info = camera_info()
    info.d = [-0.2, 0.05, 0.0, 0.0, 0.0]
    info.distortion_model = 'plumb_bob'
    info.p = [5.0, 0.0, 3.0, 0.0, 0.0, 6.0, 2.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    outputs = nyud_outputs()
    by_topic = {m.topic: m.msg for m in OutputBuilder().messages(
        outputs, header(), None, info, OutputOptions(camera_rectified=True),
        wanted=lambda t: t in ('points', 'depth/camera_info'))}
    depth_info = by_topic['depth/camera_info']
    assert list(depth_info.d) == [0.0] * 5
    assert list(depth_info.k) == [5.0, 0.0, 3.0, 0.0, 6.0, 2.0, 0.0, 0.0, 1.0]
    assert depth_info.header.frame_id == 'camera_optical'
    cloud = cloud_msg_to_numpy(by_topic['points'])
    z = outputs['depth'][HEIGHT - 1, WIDTH - 1]
    np.testing.assert_allclose(cloud[HEIGHT - 1, WIDTH - 1, :2],
                               [(WIDTH - 1 - 3.0) / 5.0 * z, (HEIGHT - 1 - 2.0) / 6.0 * z],
                               rtol=1e-6)
    # Unrectified: depth/camera_info is the input's calibration as it is.
    plain = {m.topic: m.msg for m in OutputBuilder().messages(
        outputs, header(), None, info, wanted=lambda t: t == 'depth/camera_info')}
    assert list(plain['depth/camera_info'].d) == list(info.d)
    assert list(plain['depth/camera_info'].k) == list(info.k)
