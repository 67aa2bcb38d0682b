"""``mtdp bag``: rosbag2 bags written by ``rosbags`` in, the node's outputs out.

Input bags are written with rosbags' own typestore and CDR serializer (independent of
rclpy), in both storage formats; the output is read back with rosbags and checked frame by
frame against what the engine computes for the same decoded image.
"""

import io
import os
import struct

import cv2
import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader, Writer
from rosbags.rosbag2.enums import StoragePlugin
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from mtdp_ros.cli import main
from mtdp_ros.cli.bag import Progress
from mtdp_ros.ros.image_output import image_msg_to_numpy
from mtdp_ros.ros.pointcloud import cloud_msg_to_numpy
from ros_harness import TINY_MLORE, pattern_image, write_checkpoint, write_config

# Slow (mtdp bag on whole bags, console commands): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
NAMESPACE = '/mtdp_perception'
# Node-relative output topics of the NYUD tasks of the tiny model.
IMAGE_OUTPUTS = ('semantic/labels', 'semantic/color', 'depth/image', 'depth/color', 'normals',
                 'normals/color', 'edges', 'edges/color')
# Frame sizes differ from the model's 64 x 96 input, and from one another.
FRAME_SIZES = ((48, 80), (60, 60), (48, 80))
FRAME_ID = 'camera_optical_frame'
# Bag times apart from the header stamps: the output must keep both as they were.
BAG_TIMES = (1_700_000_000_000_000_000, 1_700_000_000_100_000_000, 1_700_000_000_250_000_000)


def _header(index):
    time = TYPESTORE.types['builtin_interfaces/msg/Time'](sec=1000 + index,
                                                          nanosec=12345 * (index + 1))
    return TYPESTORE.types['std_msgs/msg/Header'](stamp=time, frame_id=FRAME_ID)


def _image_msg(rgb, encoding, index):
    if encoding == 'jpeg':
        ok, data = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        return TYPESTORE.types['sensor_msgs/msg/CompressedImage'](
            header=_header(index), format='jpeg', data=data.reshape(-1))
    pixels = rgb if encoding == 'rgb8' else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    return TYPESTORE.types['sensor_msgs/msg/Image'](
        header=_header(index), height=rgb.shape[0], width=rgb.shape[1], encoding=encoding,
        is_bigendian=0, step=rgb.shape[1] * 3, data=np.ascontiguousarray(pixels).reshape(-1))


def _camera_info_msg(height, width, index):
    fx = 0.9 * width
    return TYPESTORE.types['sensor_msgs/msg/CameraInfo'](
        header=_header(index), height=height, width=width, distortion_model='plumb_bob',
        d=np.zeros(5), k=np.array([fx, 0, width / 2, 0, fx, height / 2, 0, 0, 1.0]),
        r=np.eye(3).reshape(-1), p=np.array([fx, 0, width / 2, 0, 0, fx, height / 2, 0,
                                             0, 0, 1.0, 0]),
        binning_x=0, binning_y=0,
        roi=TYPESTORE.types['sensor_msgs/msg/RegionOfInterest'](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def write_input_bag(path, storage, encoding, camera_info=False):
    """A bag of FRAME_SIZES pattern frames on /camera/image_raw (or .../compressed)."""
    topic = '/camera/image_raw/compressed' if encoding == 'jpeg' else '/camera/image_raw'
    msgtype = ('sensor_msgs/msg/CompressedImage' if encoding == 'jpeg'
               else 'sensor_msgs/msg/Image')
    frames = []
    with Writer(path, version=9, storage_plugin=STORAGES[storage]) as writer:
        image_connection = writer.add_connection(topic, msgtype, typestore=TYPESTORE)
        info_connection = None
        if camera_info:
            info_connection = writer.add_connection('/camera/camera_info',
                                                    'sensor_msgs/msg/CameraInfo',
                                                    typestore=TYPESTORE)
        for index, ((height, width), bag_time) in enumerate(zip(FRAME_SIZES, BAG_TIMES)):
            rgb = pattern_image(height, width, seed=index)
            if info_connection is not None:
                # Recorded just before its frame, so that each frame has its own.
                writer.write(info_connection, bag_time - 1000, TYPESTORE.serialize_cdr(
                    _camera_info_msg(height, width, index), 'sensor_msgs/msg/CameraInfo'))
            writer.write(image_connection, bag_time,
                         TYPESTORE.serialize_cdr(_image_msg(rgb, encoding, index), msgtype))
            frames.append(rgb)
    return topic, frames


def read_bag(path):
    """{topic: [(bag time, raw bytes, msgtype)]} of a bag, in time order."""
    topics = {}
    with Reader(path) as reader:
        for connection, timestamp, raw in reader.messages():
            topics.setdefault(connection.topic, []).append(
                (timestamp, bytes(raw), connection.msgtype))
    return topics


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


def run_bag(model, *args):
    """``mtdp bag`` with the tiny model on the CPU; returns the exit code."""
    return main(['bag', *args, '--model', model[0], '--checkpoint', model[1],
                 '--device', 'cpu', '--no-progress'])


def decoded_frames(frames, encoding):
    """The RGB images the node would decode from the frames (JPEG is lossy)."""
    if encoding != 'jpeg':
        return frames
    decoded = []
    for rgb in frames:
        _, data = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        decoded.append(cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return decoded


CASES = [('mcap', 'rgb8', False, 'mcap'), ('sqlite3', 'bgr8', True, 'sqlite3'),
         ('mcap', 'jpeg', True, 'sqlite3'), ('sqlite3', 'jpeg', False, 'mcap')]


@pytest.mark.parametrize('in_storage, encoding, camera_info, out_storage', CASES)
def test_every_frame_on_every_topic(tmp_path, model, engine, in_storage, encoding,
                                    camera_info, out_storage):
    in_path = str(tmp_path / 'in')
    topic, frames = write_input_bag(in_path, in_storage, encoding, camera_info)
    out_path = str(tmp_path / 'out')
    args = [in_path, '--out', out_path, '--image-topic', topic, '--storage', out_storage]
    if camera_info:
        args += ['--camera-info-topic', '/camera/camera_info']
    assert run_bag(model, *args) == 0

    with Reader(out_path) as reader:
        assert {c.topic for c in reader.connections} == {
            f'{NAMESPACE}/{t}' for t in
            IMAGE_OUTPUTS + (('points', 'depth/camera_info') if camera_info else ())}
        for connection in reader.connections:
            assert connection.digest == TYPESTORE.hash_rihs01(connection.msgtype)
    stored_file = [f for f in os.listdir(out_path) if f != 'metadata.yaml']
    assert stored_file == [f'out.{"mcap" if out_storage == "mcap" else "db3"}']

    topics = read_bag(out_path)
    expected = [engine.infer(rgb) for rgb in decoded_frames(frames, encoding)]
    raw_topics = {'semantic/labels': 'semseg', 'depth/image': 'depth', 'normals': 'normals',
                  'edges': 'edge'}
    for relative in IMAGE_OUTPUTS:
        records = topics[f'{NAMESPACE}/{relative}']
        assert [t for t, _, _ in records] == list(BAG_TIMES)
        for index, (_, raw, msgtype) in enumerate(records):
            assert msgtype == 'sensor_msgs/msg/Image'
            msg = deserialize_message(raw, Image)
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (
                1000 + index, 12345 * (index + 1))
            assert msg.header.frame_id == FRAME_ID
            assert (msg.height, msg.width) == FRAME_SIZES[index]
            values = image_msg_to_numpy(msg)
            if relative in raw_topics:
                reference = expected[index][raw_topics[relative]]
                np.testing.assert_array_equal(values, reference)
    if camera_info:
        records = topics[f'{NAMESPACE}/points']
        assert [t for t, _, _ in records] == list(BAG_TIMES)
        for index, (_, raw, _) in enumerate(records):
            cloud = deserialize_message(raw, PointCloud2)
            assert (cloud.height, cloud.width) == FRAME_SIZES[index]
            points = cloud_msg_to_numpy(cloud)
            np.testing.assert_array_equal(points[..., 2], expected[index]['depth'])
        # depth/camera_info beside every depth image, with its header and size.
        records = topics[f'{NAMESPACE}/depth/camera_info']
        assert [t for t, _, _ in records] == list(BAG_TIMES)
        for index, (_, raw, msgtype) in enumerate(records):
            assert msgtype == 'sensor_msgs/msg/CameraInfo'
            info = deserialize_message(raw, CameraInfo)
            assert (info.height, info.width) == FRAME_SIZES[index]
            assert info.header.frame_id == FRAME_ID


def test_copy_input_carries_input_topics(tmp_path, model):
    in_path = str(tmp_path / 'in')
    topic, _ = write_input_bag(in_path, 'mcap', 'rgb8', camera_info=True)
    out_path = str(tmp_path / 'out')
    assert run_bag(model, in_path, '--out', out_path, '--image-topic', topic,
                   '--camera-info-topic', '/camera/camera_info', '--copy-input',
                   '--namespace', '/robot/perception', '--tasks', 'depth') == 0
    inputs = read_bag(in_path)
    outputs = read_bag(out_path)
    assert set(outputs) == {topic, '/camera/camera_info', '/robot/perception/depth/image',
                            '/robot/perception/depth/color', '/robot/perception/points',
                            '/robot/perception/depth/camera_info'}
    for copied in (topic, '/camera/camera_info'):
        assert outputs[copied] == inputs[copied]


def test_errors_leave_no_output(tmp_path, model, capsys):
    in_path = str(tmp_path / 'in')
    topic, _ = write_input_bag(in_path, 'sqlite3', 'rgb8', camera_info=True)
    out_path = str(tmp_path / 'out')
    not_a_bag = tmp_path / 'not_a_bag'
    not_a_bag.mkdir()
    (not_a_bag / 'metadata.yaml').write_text('this: [is not rosbag2 metadata\n')
    empty_path = str(tmp_path / 'empty')
    with Writer(empty_path, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        writer.add_connection(topic, 'sensor_msgs/msg/Image', typestore=TYPESTORE)
    cases = [
        ([str(tmp_path / 'missing'), '--out', out_path, '--image-topic', topic],
         'input bag not found'),
        ([str(not_a_bag), '--out', out_path, '--image-topic', topic], 'cannot read bag'),
        ([in_path, '--out', out_path, '--image-topic', '/nope'],
         'image topic /nope is not in the bag'),
        ([in_path, '--out', out_path, '--image-topic', '/camera/camera_info'],
         'has type sensor_msgs/msg/CameraInfo'),
        ([in_path, '--out', out_path, '--image-topic', topic, '--camera-info-topic', topic],
         'camera info topic /camera/image_raw has type sensor_msgs/msg/Image'),
        ([in_path, '--out', out_path, '--image-topic', topic, '--namespace', 'rel/ns'],
         'is not an absolute ROS namespace'),
        ([in_path, '--out', out_path, '--image-topic', topic, '--tasks', 'saliency'],
         'saliency'),
        ([in_path, '--out', str(tmp_path / 'no_such_folder' / 'out'), '--image-topic', topic],
         'folder of the output'),
        ([empty_path, '--out', out_path, '--image-topic', topic],
         'image topic /camera/image_raw has no messages'),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert run_bag(model, *args) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith('mtdp bag: error: '), error
        assert message in error[0], error
        assert sorted(os.listdir(tmp_path)) == ['empty', 'in', 'not_a_bag'], args

    # --copy-input of an input topic that is also an output topic.
    clash_path = str(tmp_path / 'clash')
    with Writer(clash_path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection('/cam/depth/image', 'sensor_msgs/msg/Image',
                                           typestore=TYPESTORE)
        writer.write(connection, BAG_TIMES[0], TYPESTORE.serialize_cdr(
            _image_msg(pattern_image(48, 80), 'rgb8', 0), 'sensor_msgs/msg/Image'))
    capsys.readouterr()
    assert run_bag(model, clash_path, '--out', out_path, '--image-topic', '/cam/depth/image',
                   '--namespace', '/cam', '--copy-input') == 2
    error = capsys.readouterr().err.strip()
    assert '--copy-input would write /cam/depth/image twice' in error and '\n' not in error
    assert sorted(os.listdir(tmp_path)) == ['clash', 'empty', 'in', 'not_a_bag']

    existing = tmp_path / 'existing'
    existing.mkdir()
    capsys.readouterr()
    assert run_bag(model, in_path, '--out', str(existing), '--image-topic', topic) == 2
    error = capsys.readouterr().err.strip()
    assert 'exists already' in error and '\n' not in error
    assert os.listdir(existing) == []


def test_bad_frame_fails_and_removes_partial_bag(tmp_path, model, capsys):
    """A frame the node would reject stops the run; the half-written bag is removed."""
    in_path = str(tmp_path / 'in')
    with Writer(in_path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection('/camera/image_raw', 'sensor_msgs/msg/Image',
                                           typestore=TYPESTORE)
        good = _image_msg(pattern_image(48, 80), 'rgb8', 0)
        writer.write(connection, BAG_TIMES[0],
                     TYPESTORE.serialize_cdr(good, 'sensor_msgs/msg/Image'))
        bad = _image_msg(pattern_image(48, 80), 'rgb8', 1)
        bad.step = 80 * 3 + 1   # data is no longer step * height bytes
        writer.write(connection, BAG_TIMES[1],
                     TYPESTORE.serialize_cdr(bad, 'sensor_msgs/msg/Image'))
    out_path = str(tmp_path / 'out')
    assert run_bag(model, in_path, '--out', out_path, '--image-topic', '/camera/image_raw') == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and 'frame 1' in error[0] and 'step' in error[0], error
    assert sorted(os.listdir(tmp_path)) == ['in']


def test_output_options(tmp_path, model, engine, capsys):
    in_path = str(tmp_path / 'in')
    topic, frames = write_input_bag(in_path, 'mcap', 'rgb8', camera_info=True)
    out_path = str(tmp_path / 'raw_only')
    assert run_bag(model, in_path, '--out', out_path, '--image-topic', topic,
                   '--camera-info-topic', '/camera/camera_info', '--no-color',
                   '--points-stride', '2') == 0
    topics = read_bag(out_path)
    assert set(topics) == {f'{NAMESPACE}/{t}' for t in
                           ('semantic/labels', 'depth/image', 'depth/camera_info', 'normals',
                            'edges', 'points')}
    for index, (_, raw, _) in enumerate(topics[f'{NAMESPACE}/points']):
        cloud = cloud_msg_to_numpy(deserialize_message(raw, PointCloud2))
        depth = engine.infer(frames[index])['depth']
        np.testing.assert_array_equal(cloud[..., 2], depth[::2, ::2])

    # A fixed depth colour range: depth/color is the colour map of that range.
    out_path = str(tmp_path / 'range')
    assert run_bag(model, in_path, '--out', out_path, '--image-topic', topic,
                   '--tasks', 'depth', '--depth-color-min', '1', '--depth-color-max', '3') == 0
    from mtdp_ros.ros.colormaps import depth_to_color
    topics = read_bag(out_path)
    assert set(topics) == {f'{NAMESPACE}/depth/image', f'{NAMESPACE}/depth/color'}
    for index, (_, raw, _) in enumerate(topics[f'{NAMESPACE}/depth/color']):
        color = image_msg_to_numpy(deserialize_message(raw, Image))
        depth = engine.infer(frames[index])['depth']
        np.testing.assert_array_equal(color, depth_to_color(depth, 1.0, 3.0))

    # camera_info without the depth task: a warning, no points topic.
    out_path = str(tmp_path / 'no_depth')
    capsys.readouterr()
    assert run_bag(model, in_path, '--out', out_path, '--image-topic', topic,
                   '--camera-info-topic', '/camera/camera_info', '--tasks', 'semseg') == 0
    assert 'no points: the depth task is not among' in capsys.readouterr().err
    assert set(read_bag(out_path)) == {f'{NAMESPACE}/semantic/labels',
                                       f'{NAMESPACE}/semantic/color'}

    capsys.readouterr()
    assert run_bag(model, in_path, '--out', str(tmp_path / 'bad'), '--image-topic', topic,
                   '--depth-color-min', '3', '--depth-color-max', '1') == 2
    assert '--depth-color-max (1.0) must exceed --depth-color-min' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'bad')


def test_depth_is_corrected_for_the_camera_as_in_the_node(tmp_path):
    # A model that states its training focal length: depth is rescaled by the focal ratio
    # of the bag's camera as seen in the model's input (the node's depth.focal_correction).
    from mtdp_ros.runtime import create_engine
    train_focal_px = 40.0
    config = {**TINY_MLORE, 'train_focal_px': train_focal_px}
    checkpoint = write_checkpoint(tmp_path, config, name='focal.safetensors')
    engine = create_engine(checkpoint, device='cpu')
    in_path = str(tmp_path / 'in')
    topic, frames = write_input_bag(in_path, 'sqlite3', 'rgb8', camera_info=True)
    corrected, plain = str(tmp_path / 'corrected'), str(tmp_path / 'plain')
    common = ['--image-topic', topic, '--camera-info-topic', '/camera/camera_info',
              '--tasks', 'depth', '--no-color', '--device', 'cpu', '--no-progress']
    assert main(['bag', in_path, '--out', corrected, '--model', checkpoint] + common) == 0
    assert main(['bag', in_path, '--out', plain, '--model', checkpoint,
                 '--no-focal-correction'] + common) == 0
    corrected_depth = read_bag(corrected)[f'{NAMESPACE}/depth/image']
    plain_depth = read_bag(plain)[f'{NAMESPACE}/depth/image']
    for index, (height, width) in enumerate(FRAME_SIZES):
        fx = 0.9 * width     # _camera_info_msg's focal length; cx, cy at the centre
        intrinsics = (fx, fx, width / 2, height / 2)
        want = engine.infer(frames[index], tasks=['depth'], intrinsics=intrinsics)['depth']
        got = image_msg_to_numpy(deserialize_message(corrected_depth[index][1], Image))
        np.testing.assert_array_equal(got, want)
        # (depth.focal_correction's default rescales depth by the camera's focal ratio,
        # by its square root where the camera zooms in)
        unscaled = image_msg_to_numpy(deserialize_message(plain_depth[index][1], Image))
        np.testing.assert_array_equal(unscaled,
                                      engine.infer(frames[index], tasks=['depth'])['depth'])
        assert not np.allclose(got, unscaled, equal_nan=True)


def test_unusable_camera_info_fails(tmp_path, model, capsys):
    in_path = str(tmp_path / 'in')
    with Writer(in_path, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        images = writer.add_connection('/camera/image_raw', 'sensor_msgs/msg/Image',
                                       typestore=TYPESTORE)
        infos = writer.add_connection('/camera/camera_info', 'sensor_msgs/msg/CameraInfo',
                                      typestore=TYPESTORE)
        info = _camera_info_msg(48, 80, 0)
        info.k = np.zeros(9)
        writer.write(infos, BAG_TIMES[0], TYPESTORE.serialize_cdr(
            info, 'sensor_msgs/msg/CameraInfo'))
        writer.write(images, BAG_TIMES[0], TYPESTORE.serialize_cdr(
            _image_msg(pattern_image(48, 80), 'rgb8', 0), 'sensor_msgs/msg/Image'))
    assert run_bag(model, in_path, '--out', str(tmp_path / 'out'), '--image-topic',
                   '/camera/image_raw', '--camera-info-topic', '/camera/camera_info') == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and 'no usable camera matrix K' in error[0], error
    assert sorted(os.listdir(tmp_path)) == ['in']


def test_reads_a_single_storage_file(tmp_path, model, capsys):
    """A bare .mcap file (without its metadata.yaml) is an input too; the summary."""
    in_path = str(tmp_path / 'in')
    topic, _ = write_input_bag(in_path, 'mcap', 'rgb8')
    out_path = str(tmp_path / 'out')
    capsys.readouterr()
    assert run_bag(model, os.path.join(in_path, 'in.mcap'), '--out', out_path,
                   '--image-topic', topic, '--tasks', 'edge') == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == out_path
    assert f'mtdp bag: 3 frame(s) of {topic} -> {out_path} (mcap, 6 messages on 2 topics)' \
        in captured.err and ' fps (engine ' in captured.err
    topics = read_bag(out_path)
    assert [t for t, _, _ in topics[f'{NAMESPACE}/edges']] == list(BAG_TIMES)


def _damage_first_message_record(mcap_file):
    """Set the length of the first Message record inside the first Chunk beyond the file."""
    data = bytearray(open(mcap_file, 'rb').read())
    position = 8                                    # after the magic
    while data[position] != 0x06:                   # Chunk
        position += 9 + struct.unpack_from('<Q', data, position + 1)[0]
    # Chunk: start, end, uncompressed size (u64 each), crc (u32), compression (string),
    # records length (u64), records.
    inner = position + 9 + 8 + 8 + 8 + 4
    inner += 4 + struct.unpack_from('<I', data, inner)[0] + 8
    while data[inner] != 0x05:                      # Message
        inner += 9 + struct.unpack_from('<Q', data, inner + 1)[0]
    struct.pack_into('<Q', data, inner + 1, 2 ** 62)
    with open(mcap_file, 'wb') as handle:
        handle.write(data)


def test_damaged_bags_fail_cleanly(tmp_path, model, capsys):
    """Damage found on opening (truncation) or while reading records: one line, no output."""
    truncated = str(tmp_path / 'truncated')
    topic, _ = write_input_bag(truncated, 'mcap', 'rgb8')
    storage_file = os.path.join(truncated, 'truncated.mcap')
    with open(storage_file, 'r+b') as handle:
        handle.truncate(os.path.getsize(storage_file) // 2)
    damaged = str(tmp_path / 'damaged')
    write_input_bag(damaged, 'mcap', 'rgb8')
    _damage_first_message_record(os.path.join(damaged, 'damaged.mcap'))
    for path in (truncated, damaged):
        capsys.readouterr()
        assert run_bag(model, path, '--out', str(tmp_path / 'out'), '--image-topic', topic) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith(
            f'mtdp bag: error: cannot read bag {path}'), error
        assert sorted(os.listdir(tmp_path)) == ['damaged', 'truncated']


def test_progress_lines_without_a_terminal():
    stream = io.StringIO()
    progress = Progress(25, stream=stream)
    for done in range(1, 26):
        progress.update(done)
    lines = stream.getvalue().splitlines()
    # A line per tenth (every 2 frames of 25) and the last frame.
    assert [int(line.split('] ')[1].split('/')[0]) for line in lines] == \
        list(range(1, 25, 2)) + [25]
    assert lines[-1].startswith('[' + '#' * 30 + '] 25/25 frames, ')


def _seeded_checkpoint(directory, config, name):
    """Weights of a seeded random model (the same for the CLI and the reference engine)."""
    import torch
    from mtdp_ros.models import ModelConfig, build_model, save_checkpoint
    torch.manual_seed(0)
    path = str(directory / name)
    save_checkpoint(build_model(ModelConfig.from_dict(config)), path)
    return path


def test_pascal_and_diffusion_models(tmp_path):
    """A PASCAL model's topics (no depth: no points), and TaskDiffusion with --steps."""
    from mtdp_ros.runtime import create_engine
    in_path = str(tmp_path / 'in')
    topic, frames = write_input_bag(in_path, 'sqlite3', 'rgb8', camera_info=True)
    pascal = dict(TINY_MLORE, dataset='PASCALContext',
                  tasks=['semseg', 'human_parts', 'sal', 'normals', 'edge'],
                  num_outputs={'semseg': 21, 'human_parts': 7, 'sal': 2, 'normals': 3,
                               'edge': 1})
    config = write_config(tmp_path, pascal, 'tiny_pascal.json')
    weights = _seeded_checkpoint(tmp_path, pascal, 'tiny_pascal.safetensors')
    out_path = str(tmp_path / 'pascal')
    assert main(['bag', in_path, '--out', out_path, '--image-topic', topic,
                 '--camera-info-topic', '/camera/camera_info', '--model', config,
                 '--checkpoint', weights, '--device', 'cpu', '--no-progress']) == 0
    topics = read_bag(out_path)
    assert set(topics) == {f'{NAMESPACE}/{t}' for t in (
        'semantic/labels', 'semantic/color', 'human_parts/labels', 'human_parts/color',
        'saliency', 'saliency/color', 'normals', 'normals/color', 'edges', 'edges/color')}
    engine = create_engine(config, checkpoint=weights, device='cpu')
    for index, (timestamp, raw, _) in enumerate(topics[f'{NAMESPACE}/saliency']):
        assert timestamp == BAG_TIMES[index]
        np.testing.assert_array_equal(image_msg_to_numpy(deserialize_message(raw, Image)),
                                      engine.infer(frames[index])['sal'])

    from ros_harness import TINY_TASKDIFFUSION
    config = write_config(tmp_path, TINY_TASKDIFFUSION, 'tiny_td.json')
    weights = _seeded_checkpoint(tmp_path, TINY_TASKDIFFUSION, 'tiny_td.safetensors')
    out_path = str(tmp_path / 'diffusion')
    assert main(['bag', in_path, '--out', out_path, '--image-topic', topic, '--model', config,
                 '--checkpoint', weights, '--device', 'cpu', '--steps', '2', '--seed', '7',
                 '--tasks', 'depth,edge', '--no-progress']) == 0
    topics = read_bag(out_path)
    engine = create_engine(config, checkpoint=weights, device='cpu')
    for index, (_, raw, _) in enumerate(topics[f'{NAMESPACE}/edges']):
        expected = engine.infer(frames[index], tasks=['depth', 'edge'], steps=2, seed=7)
        np.testing.assert_array_equal(image_msg_to_numpy(deserialize_message(raw, Image)),
                                      expected['edge'])
