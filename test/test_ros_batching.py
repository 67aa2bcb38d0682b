"""Several camera streams, one engine, without a node: scheduling and running a batch.

The scheduler is driven by the streams' real latest-frame slots; the batch runs through
the tiny MLoRE (CPU) with collecting sinks, no ROS graph; warm start through the tiny
TaskDiffusion.
"""

import threading

import numpy as np
import pytest

from mtdp_ros.ros.batching import BatchScheduler, BatchStatistics, run_batch
from mtdp_ros.ros.camera import FocalCorrection
from mtdp_ros.ros.image_output import image_msg_to_numpy, rgb_to_image_msg
from mtdp_ros.ros.node_settings import Settings
from mtdp_ros.ros.outputs import OutputOptions
from mtdp_ros.ros.stream import CameraStream, FrameSettings
from mtdp_ros.runtime import create_engine
from mtdp_ros.runtime.warm_runner import WarmStartSettings

from ros_harness import (TINY_MLORE, TINY_TASKDIFFUSION, camera_info, pattern_image, raw_image,
                         write_checkpoint)
from test_ros_stream import Collect


def streams(names):
    return [CameraStream(name) for name in names]


def test_the_newest_frame_of_every_waiting_camera_forms_one_batch():
    cams = streams(['a', 'b', 'c'])
    scheduler = BatchScheduler(cams, max_batch=8)
    cams[0].on_image('a1', 0)
    cams[0].on_image('a2', 0)            # replaces a1 (dropped, counted)
    cams[2].on_image('c1', 0)
    batch = scheduler.take(timeout=1.0)
    assert [(s.name, item[0]) for s, item in batch] == [('a', 'a2'), ('c', 'c1')]
    assert cams[0].statistics.counters.get('dropped') == 1
    # Nothing waits: take times out empty; a camera that never sends holds nothing up.
    assert scheduler.take(timeout=0.05) == []


def test_every_camera_with_a_frame_is_in_the_batch():
    # Frames on every camera: all of them run together, whichever camera served last.
    cams = streams(['a', 'b', 'c'])
    scheduler = BatchScheduler(cams, max_batch=8)
    for round_index in range(4):
        for stream in cams:
            stream.on_image(f'{stream.name}{round_index}', 0)
        batch = scheduler.take(timeout=1.0)
        assert sorted(s.name for s, _ in batch) == ['a', 'b', 'c'], round_index
    cams[1].on_image('b9', 0)
    cams[2].on_image('c9', 0)
    assert sorted(s.name for s, _ in scheduler.take(timeout=1.0)) == ['b', 'c']


def test_beyond_max_batch_cameras_take_turns():
    cams = streams(['a', 'b', 'c', 'd', 'e'])
    scheduler = BatchScheduler(cams, max_batch=2)
    served = {s.name: 0 for s in cams}
    for round_index in range(10):
        for stream in cams:
            stream.on_image(f'{stream.name}{round_index}', 0)
        batch = scheduler.take(timeout=1.0)
        assert len(batch) == 2
        for stream, _ in batch:
            served[stream.name] += 1
    # Every camera is served (none starves), as evenly as 2-frame batches allow.
    assert set(served.values()) == {4}


def test_take_wakes_on_a_frame_from_any_camera():
    cams = streams(['a', 'b'])
    scheduler = BatchScheduler(cams)
    got = []
    taker = threading.Thread(target=lambda: got.append(scheduler.take(timeout=30)))
    taker.start()
    cams[1].on_image('b1', 0)
    taker.join(30)
    assert [(s.name, item[0]) for s, item in got[0]] == [('b', 'b1')]
    scheduler.close()
    assert scheduler.take(timeout=30) == []


@pytest.fixture(scope='module')
def engine(tmp_path_factory):
    checkpoint = write_checkpoint(tmp_path_factory.mktemp('batching'),
                                  {**TINY_MLORE, 'train_focal_px': 80.0})
    engine = create_engine(checkpoint, device='cpu')
    yield engine
    engine.close()


def camera(name, width, height, problems):
    stream = CameraStream(name, sink=Collect(),
                          focal=FocalCorrection(True, False, f'{name}/camera_info',
                                                lambda text: None),
                          input_topic=f'/{name}/image',
                          on_reject=lambda kind, exc: problems.append((name, kind, str(exc))))
    stream.on_camera_info(camera_info(width, height, fx=width * 0.8))
    return stream


def frame(width, height, stamp, seed=0):
    msg = rgb_to_image_msg(pattern_image(height, width, seed=seed), 'rgb8')
    msg.header.stamp.sec = stamp
    msg.header.frame_id = f'frame{stamp}'
    return msg


SETTINGS = FrameSettings(tasks=('semseg', 'depth'), options=OutputOptions(publish_color=False))


def test_a_batch_publishes_each_camera_its_own_outputs(engine):
    problems = []
    sizes = {'a': (64, 48), 'b': (161, 97), 'c': (90, 120)}
    cams = [camera(name, *size, problems) for name, size in sizes.items()]
    statistics = BatchStatistics()
    entries = [(s, SETTINGS, frame(*sizes[s.name], stamp=i + 1, seed=i), 0)
               for i, s in enumerate(cams)]
    results = run_batch(engine, entries, statistics=statistics)
    assert [s.name for s, _ in results] == ['a', 'b', 'c'] and not problems
    assert statistics.histogram() == '3:1'
    for index, stream in enumerate(cams):
        width, height = sizes[stream.name]
        depth = [m for t, m in stream.sink.messages if t == 'depth/image'][0]
        assert (depth.width, depth.height) == (width, height)
        assert depth.header.stamp.sec == index + 1
        # The same frame alone gives the same depth (its own focal correction included).
        alone = engine.infer(pattern_image(height, width, seed=index), tasks=['depth'],
                             intrinsics=(width * 0.8, width * 0.8, (width - 1) / 2,
                                         (height - 1) / 2))
        np.testing.assert_allclose(image_msg_to_numpy(depth), alone['depth'], rtol=1e-4)


def test_a_bad_frame_is_rejected_by_its_camera_only(engine):
    problems = []
    cams = [camera(name, 64, 48, problems) for name in ('a', 'b', 'c')]
    bad = raw_image('bayer_rggb8', 64, 48, 64, bytes(64 * 48), frame(64, 48, 9).header.stamp)
    entries = [(cams[0], SETTINGS, frame(64, 48, 1), 0), (cams[1], SETTINGS, bad, 0),
               (cams[2], SETTINGS, frame(64, 48, 3), 0)]
    results = run_batch(engine, entries)
    assert [s.name for s, _ in results] == ['a', 'c']
    assert [(name, kind) for name, kind, _ in problems] == [('b', 'encoding')]
    assert cams[1].statistics.counters.get('rejected') == 1 and not cams[1].sink.messages
    assert cams[0].statistics.counters.get('rejected') == 0


def test_a_failing_sink_costs_the_other_cameras_nothing(engine):
    problems, errors = [], []
    cams = [camera(name, 64, 48, problems) for name in ('a', 'b')]

    def broken(topic, msg):
        raise RuntimeError('publisher gone')

    cams[0].sink.publish = broken
    results = run_batch(engine, [(s, SETTINGS, frame(64, 48, i), 0) for i, s in enumerate(cams)],
                        on_error=lambda stream, exc: errors.append((stream.name, str(exc))))
    assert [s.name for s, _ in results] == ['b'] and errors == [('a', 'publisher gone')]
    assert cams[1].sink.messages


def test_each_camera_draws_its_own_noise_seed():
    settings = Settings(tasks=('depth',), steps=0, seed=7, publish_color=True,
                        publish_points=True, points_stride=1, points_color='image',
                        depth_color_min=0.0, depth_color_max=0.0, max_pixels=100,
                        watchdog_timeout=3.0)
    assert [settings.for_frames(False, i).seed for i in range(3)] == [7, 8, 9]


def stamped(rgb, seconds):
    msg = rgb_to_image_msg(rgb, 'rgb8')
    msg.header.stamp.sec = int(seconds)
    msg.header.stamp.nanosec = int(round((seconds - int(seconds)) * 1e9))
    return msg


def test_warm_start_runs_the_cameras_as_one_batch():
    """Each camera starts warm or cold by its own map, all in one engine call."""
    engine = create_engine(TINY_TASKDIFFUSION, device='cpu')
    warm = WarmStartSettings(True, strength=0.05, max_gap_s=0.5, cut_threshold=0.5)
    images = {'a': pattern_image(60, 80, seed=1), 'b': pattern_image(48, 64, seed=2),
              'c': pattern_image(60, 80, seed=3)}
    cams = [CameraStream(name, sink=Collect()) for name in images]
    alone = [CameraStream(name) for name in images]
    statistics = BatchStatistics()
    for stamp in (10.0, 10.1, 10.2):
        if stamp == 10.2:
            # A reset (deactivate) of camera b: only its frame starts cold.
            cams[1].reset('deactivate')
            alone[1].reset('deactivate')
        entries = [(s, FrameSettings(tasks=('edge',), steps=1, seed=i, warm=warm),
                    stamped(images[s.name], stamp), 0) for i, s in enumerate(cams)]
        results = run_batch(engine, entries, statistics=statistics)
        assert [s.name for s, _ in results] == ['a', 'b', 'c']
        for index, ((stream, result), single) in enumerate(zip(results, alone)):
            want = single.process(engine, entries[index][2], entries[index][1]).outputs
            np.testing.assert_allclose(result.outputs['edge'], want['edge'], atol=1e-5)
            assert stream.engine_state.report() == single.engine_state.report()
    assert statistics.histogram() == '3:3'
    lasts = [s.engine_state.report()['warm_start_last'] for s in cams]
    assert lasts == ['warm', 'cold', 'warm']
    assert cams[1].engine_state.report()['warm_start_last_cold_reason'] == \
        'no previous map (deactivate)'
    engine.close()
