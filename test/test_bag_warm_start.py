"""``mtdp bag --warm-start``: TaskDiffusion frames start from the previous frame's map.

Input bags are written with rosbags (as in test_bag.py); the outputs are compared bit for
bit with a chain of engine calls made here with the engine API: cold frames equal the plain
cold call, warm frames equal ``engine.infer(init=<previous state>, strength=S)`` (several
cameras' frames run as one batch: equal within float noise).
"""

import json
import os

import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader, Writer
from rosbags.rosbag2.enums import StoragePlugin
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Image

from mtdp_ros.cli import main
from mtdp_ros.ros.image_output import image_msg_to_numpy
from mtdp_ros.runtime import create_engine
from ros_harness import pattern_image, TINY_MLORE, TINY_TASKDIFFUSION, write_config

# Slow (mtdp bag on whole bags): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
TOPIC = '/camera/image_raw'
EDGES = '/mtdp_perception/edges'
STRENGTH = 0.05
START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000          # 10 frames/s: well inside the default 0.5 s gap


def scene(kind, shift):
    """A 60 x 80 frame of scene ``kind`` (0 or 1), panned by ``shift`` pixels."""
    rgb = pattern_image(60, 80, seed=3)
    if kind:
        rgb = rgb[::-1, ::-1].copy()
    return np.roll(rgb, shift, axis=1)


def write_bag(path, frames, first_ns=START_NS, stamped=True, topics=(TOPIC,)):
    """A bag of ``frames`` PERIOD_NS apart (header stamps = bag times, or 0).

    With several ``topics`` the frames go to them in turn, each topic's PERIOD_NS apart.
    """
    msgtype = 'sensor_msgs/msg/Image'
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = [writer.add_connection(topic, msgtype, typestore=TYPESTORE)
                       for topic in topics]
        for index, rgb in enumerate(frames):
            connection = connections[index % len(topics)]
            bag_ns = first_ns + index * PERIOD_NS // len(topics)
            stamp_ns = bag_ns if stamped else 0
            time = TYPESTORE.types['builtin_interfaces/msg/Time'](
                sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
            header = TYPESTORE.types['std_msgs/msg/Header'](stamp=time, frame_id='cam')
            msg = TYPESTORE.types['sensor_msgs/msg/Image'](
                header=header, height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8',
                is_bigendian=0, step=rgb.shape[1] * 3, data=rgb.reshape(-1))
            writer.write(connection, bag_ns, TYPESTORE.serialize_cdr(msg, msgtype))
    return path


def edges(path, topic=EDGES):
    """The edge maps of an output bag, in order."""
    with Reader(path) as reader:
        return [image_msg_to_numpy(deserialize_message(bytes(raw), Image))
                for connection, _, raw in reader.messages() if connection.topic == topic]


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """(config, seeded weights, the engine the command makes of them)."""
    import torch
    from mtdp_ros.models import ModelConfig, build_model, save_checkpoint
    directory = tmp_path_factory.mktemp('warm_model')
    config = write_config(directory, TINY_TASKDIFFUSION, 'tiny_td.json')
    torch.manual_seed(0)
    weights = save_checkpoint(build_model(ModelConfig.from_dict(TINY_TASKDIFFUSION)),
                              str(directory / 'tiny_td.safetensors'))
    return config, weights, create_engine(config, checkpoint=weights, device='cpu')


def run_bag(model, *args):
    return main(['bag', *args, '--image-topic', TOPIC, '--model', model[0], '--checkpoint',
                 model[1], '--device', 'cpu', '--steps', '1', '--tasks', 'edge',
                 '--no-progress'])


def chain(engine, frames, warm, seed=0):
    """Edge maps of ``frames`` run by hand: cold where ``warm[i]`` is False, else warm."""
    maps, state = [], None
    for rgb, is_warm in zip(frames, warm):
        if is_warm:
            out, state = engine.infer(rgb, tasks=['edge'], steps=1, seed=seed, init=state,
                                      strength=STRENGTH, return_state=True)
        else:
            out, state = engine.infer(rgb, tasks=['edge'], steps=1, seed=seed,
                                      return_state=True)
        maps.append(out['edge'])
    return maps


def test_warm_start_on_and_off_over_a_bag_with_a_scene_cut(tmp_path, model, capsys):
    frames = [scene(0, 0), scene(0, 1), scene(0, 2), scene(1, 0), scene(1, 1)]
    bag = write_bag(str(tmp_path / 'in'), frames)
    engine = model[2]
    assert run_bag(model, bag, '--out', str(tmp_path / 'cold')) == 0
    cold = edges(str(tmp_path / 'cold'))
    for got, rgb in zip(cold, frames):
        np.testing.assert_array_equal(got, engine.infer(rgb, tasks=['edge'], steps=1)['edge'])
    capsys.readouterr()
    assert run_bag(model, bag, '--out', str(tmp_path / 'warm'), '--warm-start',
                   '--warm-strength', str(STRENGTH)) == 0
    assert ('mtdp bag: warm start: 3 warm, 2 cold frame(s) (last cold: scene cut: image '
            'change') in capsys.readouterr().err
    warm = edges(str(tmp_path / 'warm'))
    expected = chain(engine, frames, [False, True, True, False, True])
    assert len(warm) == len(frames)
    for index, (got, want) in enumerate(zip(warm, expected)):
        np.testing.assert_array_equal(got, want, err_msg=f'frame {index}')
    # Cold frames (the first, the cut) are the cold path's; warm ones differ from it.
    for index in (0, 3):
        np.testing.assert_array_equal(warm[index], cold[index])
    for index in (1, 2, 4):
        assert np.abs(warm[index] - cold[index]).max() > 1e-6, index


def test_frames_without_stamps_are_timed_by_the_bag(tmp_path, model, capsys):
    frames = [scene(0, 0), scene(0, 1), scene(0, 2)]
    bag = write_bag(str(tmp_path / 'in'), frames, stamped=False)
    assert run_bag(model, bag, '--out', str(tmp_path / 'warm'), '--warm-start',
                   '--warm-strength', str(STRENGTH)) == 0
    assert 'warm start: 2 warm, 1 cold' in capsys.readouterr().err
    # A gap of 0.1 s is too long for --warm-max-gap 0.05: every frame cold.
    assert run_bag(model, bag, '--out', str(tmp_path / 'gap'), '--warm-start',
                   '--warm-max-gap', '0.05') == 0
    assert 'warm start: 0 warm, 3 cold frame(s) (last cold: time gap 0.100 s' in \
        capsys.readouterr().err


def test_each_camera_of_a_bag_keeps_its_own_map(tmp_path, model, capsys):
    """Two cameras, frames interleaved, each its own scene: one shared map would cut."""
    front = [scene(0, 0), scene(0, 1), scene(0, 2)]
    rear = [scene(1, 0), scene(1, 1), scene(1, 2)]
    bag = write_bag(str(tmp_path / 'in'), [f for pair in zip(front, rear) for f in pair],
                    topics=('/front/image_raw', '/rear/image_raw'))
    out = str(tmp_path / 'out')
    assert main(['bag', bag, '--out', out, '--cameras', 'front=/front/image_raw',
                 'rear=/rear/image_raw', '--model', model[0], '--checkpoint', model[1],
                 '--device', 'cpu', '--steps', '1', '--tasks', 'edge', '--no-progress',
                 '--warm-start', '--warm-strength', str(STRENGTH)]) == 0
    err = capsys.readouterr().err
    for name in ('front', 'rear'):
        assert f'warm start of camera {name}: 2 warm, 1 cold frame(s)' in err
    # Each pair of frames (one per camera) ran as one batch of the engine.
    assert 'batch sizes 2:3)' in err
    engine = model[2]
    # Camera i draws its noise from --seed + i, as in the node. The two cameras' frames
    # run as one batch (warm ones included): equal to the frames alone within float noise
    # (~1e-7), far below what a warm frame changes (~4e-2, checked).
    for seed, (name, frames) in enumerate((('front', front), ('rear', rear))):
        got = edges(out, f'/mtdp_perception/{name}/edges')
        want = chain(engine, frames, [False, True, True], seed=seed)
        cold = chain(engine, frames, [False, False, False], seed=seed)
        for index, (a, b, c) in enumerate(zip(got, want, cold)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5,
                                       err_msg=f'{name} frame {index}')
            assert index == 0 or np.abs(b - c).max() > 1e-2


def test_every_bag_starts_cold_on_a_shared_engine(tmp_path, model):
    """Two bags in one run (one engine): the second continues the first in time and picture.

    Only the per-bag reset keeps its first frame cold.
    """
    frames = [scene(0, 0), scene(0, 1), scene(0, 2)]
    inputs = tmp_path / 'inputs'
    inputs.mkdir()
    write_bag(str(inputs / 'a'), frames)
    write_bag(str(inputs / 'b'), frames[2:] + frames[:2],
              first_ns=START_NS + len(frames) * PERIOD_NS)
    out = str(tmp_path / 'out')
    assert run_bag(model, str(inputs), '--out', out, '--warm-start', '--warm-strength',
                   str(STRENGTH)) == 0
    engine = model[2]
    second = edges(os.path.join(out, 'b'))
    expected = chain(engine, frames[2:] + frames[:2], [False, True, True])
    for index, (got, want) in enumerate(zip(second, expected)):
        np.testing.assert_array_equal(got, want, err_msg=f'frame {index}')
    manifest = json.load(open(os.path.join(out, 'b', 'mtdp_manifest.json')))
    settings = manifest['key']['settings']
    assert (settings['warm_start'], settings['warm_strength'], settings['warm_max_gap'],
            settings['cut_threshold']) == (True, STRENGTH, 0.5, 0.5)
    # Another strength is another output: the re-run redoes both bags.
    assert run_bag(model, str(inputs), '--out', out, '--warm-start') == 0
    manifest = json.load(open(os.path.join(out, 'b', 'mtdp_manifest.json')))
    assert manifest['key']['settings']['warm_strength'] == 0.01


def test_warm_start_errors_name_the_option(tmp_path, model, capsys):
    bag = write_bag(str(tmp_path / 'in'), [scene(0, 0)])
    mlore = write_config(tmp_path, TINY_MLORE, 'tiny_mlore.json')
    out = str(tmp_path / 'out')
    cases = [
        (['--warm-strength', '0.1'], '--warm-strength needs --warm-start'),
        (['--cut-threshold', '0.1'], '--cut-threshold needs --warm-start'),
        (['--warm-start', '--warm-strength', '0'], '--warm-strength must be 0 < S <= 1, got 0'),
        (['--warm-start', '--warm-strength', '1.5'], '--warm-strength must be 0 < S <= 1'),
        (['--warm-start', '--warm-max-gap', '-1'], '--warm-max-gap must be a positive number'),
        (['--warm-start', '--backend', 'onnxruntime'],
         '--warm-start needs --backend torch: the onnxruntime engine serves cold starts only'),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert run_bag(model, bag, '--out', out, *extra) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and message in error[0], (extra, error)
    capsys.readouterr()
    assert main(['bag', bag, '--out', out, '--image-topic', TOPIC, '--model', mlore,
                 '--device', 'cpu', '--no-progress', '--warm-start']) == 2
    error = capsys.readouterr().err
    assert '--warm-start: warm start applies to TaskDiffusion models only' in error
    assert sorted(os.listdir(tmp_path)) == ['in', 'tiny_mlore.json']
