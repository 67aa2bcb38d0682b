"""``mtdp bag`` with several cameras: each camera's outputs under NS/NAME/, batched.

Input bags hold two cameras of different sizes (written with rosbags' own typestore);
the output is read back and checked frame by frame against the engine on the same image.
"""

import os

import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import StoragePlugin
from sensor_msgs.msg import Image

from mtdp_ros.ros.image_output import image_msg_to_numpy
from ros_harness import TINY_MLORE, pattern_image, write_checkpoint, write_config
from test_bag import BAG_TIMES, NAMESPACE, TYPESTORE, _camera_info_msg, _image_msg, read_bag, \
    run_bag

# Slow (mtdp bag on whole bags): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

# (height, width) of each camera's frames.
CAMERAS = {'cam_front': (48, 80), 'cam_left': (60, 60)}
IMAGE = 'sensor_msgs/msg/Image'
INFO = 'sensor_msgs/msg/CameraInfo'


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """The tiny MLoRE config and a checkpoint whose depth is positive."""
    directory = tmp_path_factory.mktemp('model')
    return write_config(directory, TINY_MLORE), write_checkpoint(directory, TINY_MLORE)


@pytest.fixture(scope='module')
def engine(model):
    """The engine the CLI creates for the tiny model (the reference for the values)."""
    from mtdp_ros.runtime import create_engine
    return create_engine(model[0], checkpoint=model[1], device='cpu')


def write_cameras_bag(path, bad=None):
    """Three frames per camera, interleaved in bag time; ``bad``: (camera, frame) broken."""
    frames = {}
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {}
        for camera in CAMERAS:
            connections[camera] = (
                writer.add_connection(f'/{camera}/image_raw', IMAGE, typestore=TYPESTORE),
                writer.add_connection(f'/{camera}/camera_info', INFO, typestore=TYPESTORE))
        for index, bag_time in enumerate(BAG_TIMES):
            for offset, (camera, (height, width)) in enumerate(CAMERAS.items()):
                rgb = pattern_image(height, width, seed=index * 10 + offset)
                image, info = connections[camera]
                writer.write(info, bag_time + offset - 1000, TYPESTORE.serialize_cdr(
                    _camera_info_msg(height, width, index), INFO))
                msg = _image_msg(rgb, 'rgb8', index)
                if bad == (camera, index):
                    msg.step += 1
                writer.write(image, bag_time + offset, TYPESTORE.serialize_cdr(msg, IMAGE))
                frames.setdefault(camera, []).append(rgb)
    return frames


def test_each_camera_is_written_under_its_name(tmp_path, model, engine, capsys):
    in_path = str(tmp_path / 'in')
    frames = write_cameras_bag(in_path)
    out_path = str(tmp_path / 'out')
    args = []
    for camera in CAMERAS:
        args += ['--image-topic', f'/{camera}/image_raw']
    for camera in CAMERAS:
        args += ['--camera-info-topic', f'/{camera}/camera_info']
    assert run_bag(model, in_path, '--out', out_path, *args) == 0, capsys.readouterr().err
    summary = capsys.readouterr().err
    # One frame of each camera per batch: three batches of two.
    assert 'batch sizes 2:3' in summary, summary
    topics = read_bag(out_path)
    for offset, (camera, (height, width)) in enumerate(CAMERAS.items()):
        depth = topics[f'{NAMESPACE}/{camera}/depth/image']
        assert [t for t, _, _ in depth] == [b + offset for b in BAG_TIMES]
        assert len(topics[f'{NAMESPACE}/{camera}/points']) == len(BAG_TIMES)
        for index, (_, raw, _) in enumerate(depth):
            msg = deserialize_message(raw, Image)
            assert (msg.width, msg.height) == (width, height)
            assert msg.header.stamp.sec == 1000 + index
            fx = 0.9 * width
            expected = engine.infer(frames[camera][index], tasks=['depth'],
                                    intrinsics=(fx, fx, width / 2, height / 2))['depth']
            np.testing.assert_allclose(image_msg_to_numpy(msg), expected, rtol=1e-4)
    assert not any(topic.startswith(f'{NAMESPACE}/depth') for topic in topics)


def test_cameras_by_name(tmp_path, model, capsys):
    in_path = str(tmp_path / 'in')
    write_cameras_bag(in_path)
    out_path = str(tmp_path / 'out')
    assert run_bag(model, in_path, '--out', out_path, '--max-batch', '1', '--cameras',
                   'front=/cam_front/image_raw,/cam_front/camera_info',
                   'left=/cam_left/image_raw') == 0, capsys.readouterr().err
    assert 'batch sizes 1:6' in capsys.readouterr().err
    topics = read_bag(out_path)
    assert len(topics[f'{NAMESPACE}/front/points']) == 3
    assert len(topics[f'{NAMESPACE}/left/semantic/labels']) == 3
    # No camera_info given for 'left': no cloud there.
    assert f'{NAMESPACE}/left/points' not in topics


@pytest.mark.parametrize('args, words', [
    (['--cameras', 'front'], 'NAME=TOPIC'),
    (['--cameras', '1x=/cam_front/image_raw'], "'1x'"),
    (['--cameras', 'a=/cam_front/image_raw', 'a=/cam_left/image_raw'], 'twice'),
    (['--cameras', 'a=/cam_front/image_raw', '--image-topic', '/cam_left/image_raw'],
     'not both'),
    (['--image-topic', '/cam_front/image_raw', '--image-topic', '/cam_left/image_raw',
      '--camera-info-topic', '/cam_front/camera_info'], 'one per --image-topic'),
    (['--image-topic', '/cam_front/image_raw', '--image-topic', '/cam_front/image_raw'],
     'given twice'),
    (['--cameras', 'a=/cam_front/image_raw', 'b=/nope'], 'image topic /nope is not in'),
])
def test_bad_camera_options_fail_in_one_line(tmp_path, model, capsys, args, words):
    in_path = str(tmp_path / 'in')
    write_cameras_bag(in_path)
    capsys.readouterr()
    assert run_bag(model, in_path, '--out', str(tmp_path / 'out'), *args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith('mtdp bag: error: '), error
    assert words in error[0], error
    assert os.listdir(tmp_path) == ['in']


def test_a_bad_frame_names_its_camera(tmp_path, model, capsys):
    in_path = str(tmp_path / 'in')
    write_cameras_bag(in_path, bad=('cam_left', 1))
    assert run_bag(model, in_path, '--out', str(tmp_path / 'out'), '--cameras',
                   'front=/cam_front/image_raw', 'left=/cam_left/image_raw') == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and '/cam_left/image_raw: frame 1' in error[0], error
    assert f'bag time {BAG_TIMES[1] + 1} ns' in error[0] and 'step' in error[0], error
    assert os.listdir(tmp_path) == ['in']
