"""The camera stream without a node: one frame through a real engine, rejections, names.

A :class:`CameraStream` is what the node and ``mtdp bag`` both run per frame; here it
runs on the tiny reference MLoRE (CPU) with a collecting sink, no ROS graph.
"""

import subprocess
import sys

import numpy as np
import pytest

from mtdp_ros.ros.camera import FocalCorrection
from mtdp_ros.ros.image_input import ImageRejected
from mtdp_ros.ros.image_output import image_msg_to_numpy, rgb_to_image_msg
from mtdp_ros.ros.outputs import OutputBuilder, OutputOptions
from mtdp_ros.ros.stream import CameraStream, FrameSettings, Sink
from mtdp_ros.runtime import create_engine

from ros_harness import REPO, TINY_MLORE, camera_info, pattern_image, write_checkpoint


class Collect(Sink):
    """Keeps every message; ``wanted`` answers from a set of topics (None: all)."""

    def __init__(self, wanted=None):
        self.topics = wanted
        self.messages = []

    def wanted(self, topic):
        return self.topics is None or topic in self.topics

    def publish(self, topic, msg):
        self.messages.append((topic, msg))


class Log:
    def __init__(self):
        self.lines = []

    def info(self, text):
        self.lines.append(('info', text))

    def warning(self, text):
        self.lines.append(('warning', text))


@pytest.fixture(scope='module')
def engine(tmp_path_factory):
    # A tiny MLoRE with positive depth, stating a training focal length (80 px).
    checkpoint = write_checkpoint(tmp_path_factory.mktemp('stream'),
                                  {**TINY_MLORE, 'train_focal_px': 80.0})
    engine = create_engine(checkpoint, device='cpu')
    yield engine
    engine.close()


def frame_msg(rgb, sec=5):
    msg = rgb_to_image_msg(rgb, 'bgr8')
    msg.header.stamp.sec = sec
    msg.header.frame_id = 'cam'
    return msg


def test_process_publishes_what_the_output_builder_builds(engine):
    rgb = pattern_image(48, 64)
    sink = Collect()
    stream = CameraStream(sink=sink)
    stream.camera_info = camera_info(64, 48)
    stream.activated()
    settings = FrameSettings(tasks=tuple(engine.tasks), options=OutputOptions())
    result = stream.process(engine, frame_msg(rgb), settings, received_ns=1)
    assert result is not None and result.first and result.published == len(sink.messages)
    expected = list(OutputBuilder().messages(engine.infer(rgb), frame_msg(rgb).header, rgb,
                                             camera_info(64, 48)))
    assert [topic for topic, _ in sink.messages] == [m.topic for m in expected]
    for (topic, got), want in zip(sink.messages, expected):
        assert got.header.frame_id == 'cam' and got.header.stamp.sec == 5, topic
        if want.kind != 'points' and topic != 'depth/camera_info':
            np.testing.assert_array_equal(image_msg_to_numpy(got),
                                          image_msg_to_numpy(want.msg))
    statistics = stream.statistics
    assert statistics.output_rate.total == 1 and len(statistics.stage_ms['convert']) == 1
    # A second frame is not the first output any more; unwanted topics are not built.
    stream.sink = Collect(wanted={'depth/image'})
    again = stream.process(engine, frame_msg(rgb), settings)
    assert not again.first and [t for t, _ in stream.sink.messages] == ['depth/image']


def test_rejected_frames_are_counted_by_kind_and_reported(engine):
    log = Log()
    stream = CameraStream(log=log, input_topic='/cam/image')
    settings = FrameSettings(tasks=tuple(engine.tasks))
    bad = frame_msg(pattern_image(48, 64))
    bad.encoding = 'bayer_rggb8'
    assert stream.process(engine, bad, settings) is None
    counters = stream.statistics.counters
    assert counters.get('rejected') == 1 and counters.get('rejected_encoding') == 1
    assert any(level == 'warning' and '/cam/image' in text and 'bayer_rggb8' in text
               for level, text in log.lines)
    # on_reject replaces the warning (mtdp bag raises).
    seen = []
    strict = CameraStream(on_reject=lambda kind, exc: seen.append((kind, exc)))
    assert strict.process(engine, bad, settings) is None
    assert seen[0][0] == 'encoding' and isinstance(seen[0][1], ImageRejected)


def test_serialized_frames_are_deserialized_when_taken(engine):
    # The node's subscriptions hand over wire bytes (SerializedImage): the frame a stream
    # takes gives the outputs of the message itself; bytes that are no image are rejected.
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    from mtdp_ros.ros.stream_endpoints import SerializedImage
    rgb = pattern_image(48, 64)
    settings = FrameSettings(tasks=tuple(engine.tasks), options=OutputOptions())
    direct, wired = Collect(), Collect()
    CameraStream(sink=direct).process(engine, frame_msg(rgb), settings)
    stream = CameraStream(sink=wired)
    result = stream.process(engine, SerializedImage(serialize_message(frame_msg(rgb)), Image),
                            settings)
    assert result is not None
    assert [t for t, _ in wired.messages] == [t for t, _ in direct.messages]
    for (topic, got), (_, want) in zip(wired.messages, direct.messages):
        assert got.header == want.header, topic
        if isinstance(want, Image):
            np.testing.assert_array_equal(image_msg_to_numpy(got), image_msg_to_numpy(want))
    seen = []
    strict = CameraStream(on_reject=lambda kind, exc: seen.append(kind))
    assert strict.process(engine, SerializedImage(b'\x00\x01 not cdr', Image), settings) is None
    assert seen == ['message'] and strict.statistics.counters.get('rejected_message') == 1


def test_focal_correction_uses_the_stream_camera_info(engine):
    rgb = pattern_image(48, 64)
    settings = FrameSettings(tasks=('depth',))
    sink = Collect(wanted={'depth/image'})
    stream = CameraStream(sink=sink, focal=FocalCorrection(True, False, 'camera_info',
                                                           lambda text: None))
    stream.camera_info = camera_info(64, 48, fx=200.0)
    stream.process(engine, frame_msg(rgb), settings)
    expected = engine.infer(rgb, tasks=['depth'], intrinsics=(200.0, 200.0, 31.5, 23.5))
    assert engine.last_focal_factor != pytest.approx(1.0)
    assert np.isfinite(expected['depth']).all()
    np.testing.assert_array_equal(image_msg_to_numpy(sink.messages[0][1]), expected['depth'])


def test_camera_info_problems_are_refused_and_named():
    log = Log()
    stream = CameraStream(log=log, info_topic='/cam/camera_info')
    info = camera_info(64, 48)
    info.d = [float('nan')] * 5
    assert 'NaN' in stream.on_camera_info(info)
    assert stream.camera_info is None
    assert any('/cam/camera_info' in text for _, text in log.lines)
    assert stream.on_camera_info(camera_info(64, 48)) is None and stream.camera_info.width == 64


def test_a_camera_info_over_max_pixels_is_refused_and_the_good_one_kept():
    stream = CameraStream(log=Log(), info_topic='/cam/camera_info')
    assert stream.max_pixels == 4096 * 3072     # input.max_pixels' default
    assert stream.on_camera_info(camera_info(640, 480)) is None
    problem = stream.on_camera_info(camera_info(9000, 9000))
    assert '9000x9000' in problem and 'input.max_pixels' in problem
    assert stream.camera_info.width == 640 and stream.camera_info_problem == problem
    stream.max_pixels = 640 * 480 - 1
    assert 'input.max_pixels (307199)' in stream.on_camera_info(camera_info(640, 480))
    assert stream.on_camera_info(camera_info(320, 240)) is None
    assert stream.camera_info.width == 320 and stream.camera_info_problem is None


def test_named_stream_topics_and_per_stream_state():
    single, front = CameraStream(), CameraStream('front', compressed=True)
    assert single.topic('depth') == 'depth' and single.image_topic == 'image'
    assert front.topic('depth') == 'front/depth'
    assert front.image_topic == 'front/image/compressed'
    front.engine_state = 'previous map'
    front.on_image('frame 1', 1)
    front.on_image('frame 2', 2)                # replaces the waiting one: dropped
    assert front.statistics.counters.get('dropped') == 1
    assert single.slot.take(0.0) is None and single.engine_state is None
    front.reset()
    assert front.slot.take(0.0) is None and front.engine_state is None


def test_the_stream_needs_no_rclpy():
    code = ('import sys; import mtdp_ros.ros.stream; '
            'print(sorted(m for m in sys.modules if m.split(".")[0] == "rclpy"))')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[]'
