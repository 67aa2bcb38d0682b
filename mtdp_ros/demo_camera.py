"""The ``demo_camera`` executable: a stand-in camera for demos and tests.

Publishes ``image`` (sensor_msgs/Image) and a matching ``camera_info`` at a chosen rate
from one of these sources (parameter ``source``):

- ``synthetic`` (default): rendered indoor scenes of ``mtdp_ros.training.synthetic`` (the
  kind the default model is trained on), rendered in the background and cycled, each held
  for ``synthetic.hold`` seconds; publishing starts with the first rendered scene, and
  where the renderer is unavailable the ``pattern`` source stands in;
- ``pattern``: a moving procedural pattern (no dependencies);
- a folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``, sorted by
  name) or a video file (anything OpenCV reads).

Frames are resized to ``width`` x ``height`` unless both are 0 (native size). The camera
matrix comes from the renderer for synthetic scenes, otherwise from ``horizontal_fov_deg``
(principal point at the centre, square pixels).
"""

import math
import os
import signal
import sys
import threading
import time

import cv2
import numpy as np
import rclpy
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from mtdp_ros.ros.image_input import SUPPORTED_ENCODINGS
from mtdp_ros.ros.image_output import rgb_to_image_msg
from mtdp_ros.ros.qos import qos_profile
from mtdp_ros.ros.stops import leave_now

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
# A source's next() returns this while it has nothing to publish yet.
NOT_READY = 'not ready'


def pinhole_intrinsics(width, height, horizontal_fov_deg):
    """(fx, fy, cx, cy) of a centred pinhole camera with square pixels."""
    fx = (width / 2.0) / math.tan(math.radians(horizontal_fov_deg) / 2.0)
    return fx, fx, (width - 1) / 2.0, (height - 1) / 2.0


def camera_info_msg(width, height, intrinsics, frame_id):
    """A CameraInfo of an undistorted camera (plumb_bob with zero coefficients)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    info = CameraInfo()
    info.header.frame_id = frame_id
    info.width, info.height = int(width), int(height)
    info.distortion_model = 'plumb_bob'
    info.d = [0.0] * 5
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def pattern_frame(index, width, height):
    """Frame ``index`` of the procedural source: a drifting gradient with moving shapes."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = index * 0.05
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = (127 + 100 * np.sin(xs / width * 6.0 + phase)).astype(np.uint8)
    image[..., 1] = (127 + 100 * np.sin(ys / height * 4.0 - phase)).astype(np.uint8)
    image[..., 2] = (127 + 100 * np.cos((xs + ys) / (width + height) * 5.0)).astype(np.uint8)
    scale = min(width, height)
    centre = (int(width / 2 + width / 3 * math.cos(phase)),
              int(height / 2 + height / 4 * math.sin(phase * 1.3)))
    cv2.circle(image, centre, max(2, scale // 8), (240, 240, 240), -1)
    corner = (int(width / 4 + width / 5 * math.sin(phase * 0.7)), int(height / 2))
    cv2.rectangle(image, corner, (corner[0] + scale // 4, corner[1] + scale // 3),
                  (30, 60, 200), -1)
    return image


class PatternSource:
    """The procedural source."""

    def __init__(self, width, height, fov):
        self.width, self.height = width or 640, height or 480
        self.intrinsics = pinhole_intrinsics(self.width, self.height, fov)
        self.index = 0

    def next(self):
        """(RGB frame, intrinsics), or None when the source is exhausted."""
        self.index += 1
        return pattern_frame(self.index, self.width, self.height), self.intrinsics


class SyntheticSource:
    """Rendered scenes, produced by a background thread, each shown ``hold_frames`` times."""

    def __init__(self, width, height, fov, scenes, seed, hold_frames, logger):
        self.width, self.height = width or 640, height or 480
        self.hold_frames = max(1, hold_frames)
        self._fallback = PatternSource(self.width, self.height, fov)
        self._use_fallback = False
        self._scenes = []
        self._lock = threading.Lock()
        self._logger = logger
        self._stop = threading.Event()
        self._thread = None
        self.index = 0
        try:
            from mtdp_ros.training.synthetic import render_scene
        except ImportError as exc:
            logger.warning(f'synthetic scenes unavailable ({exc}); publishing a pattern')
            self._use_fallback = True
            return
        self._thread = threading.Thread(target=self._render, daemon=True,
                                        args=(render_scene, scenes, seed))
        self._thread.start()

    def _render(self, render_scene, count, seed):
        for number in range(count):
            if self._stop.is_set():
                return
            try:
                scene = render_scene(seed + number, self.height, self.width)
            except Exception as exc:  # noqa: B902 - keep publishing what exists
                self._logger.warning(f'rendering scene {seed + number} failed: {exc}')
                with self._lock:
                    self._use_fallback = not self._scenes
                return
            with self._lock:
                self._scenes.append((scene['image'], tuple(scene['intrinsics'])))

    def close(self, timeout=3.0):
        """Stop rendering; True when the render thread has ended (within ``timeout`` s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def next(self):
        """(RGB frame, intrinsics), or NOT_READY until the first scene is rendered."""
        with self._lock:
            scenes = list(self._scenes)
            use_fallback = self._use_fallback
        if use_fallback:
            return self._fallback.next()
        if not scenes:
            return NOT_READY
        frame = scenes[(self.index // self.hold_frames) % len(scenes)]
        self.index += 1
        return frame


class FolderSource:
    """Images of a folder, sorted by name."""

    def __init__(self, folder, width, height, fov, loop):
        self.paths = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                            if name.lower().endswith(IMAGE_EXTENSIONS))
        if not self.paths:
            raise ValueError(f'{folder} holds no images ({", ".join(IMAGE_EXTENSIONS)})')
        self.size = (width, height)
        self.fov = fov
        self.loop = loop
        self.index = 0

    def next(self):
        """(RGB frame, intrinsics), or None after the last image when not looping."""
        for _ in range(len(self.paths)):
            if self.index >= len(self.paths):
                if not self.loop:
                    return None
                self.index = 0
            path = self.paths[self.index]
            self.index += 1
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is not None:
                return fit(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), self.size, self.fov)
        raise ValueError('no image of the folder could be read')


class VideoSource:
    """Frames of a video file."""

    def __init__(self, path, width, height, fov, loop):
        self.path = path
        self.capture = cv2.VideoCapture(path)
        if not self.capture.isOpened():
            raise ValueError(f'cannot open video {path}')
        self.size = (width, height)
        self.fov = fov
        self.loop = loop

    def next(self):
        """(RGB frame, intrinsics), or None at the end when not looping."""
        ok, image = self.capture.read()
        if not ok and self.loop:
            self.capture.release()
            self.capture = cv2.VideoCapture(self.path)
            ok, image = self.capture.read()
        if not ok:
            return None
        return fit(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), self.size, self.fov)


def fit(image, size, fov):
    """The image resized to ``size`` (unless it is (0, 0)) and its intrinsics."""
    width, height = size
    if width and height and (image.shape[1], image.shape[0]) != (width, height):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image, pinhole_intrinsics(image.shape[1], image.shape[0], fov)


class DemoCamera(Node):
    """Publishes ``image`` and ``camera_info`` from a source at ``rate`` Hz."""

    def __init__(self):
        super().__init__('demo_camera')

        def declare(name, default, description, **ranges):
            descriptor = ParameterDescriptor(description=description,
                                             read_only=name != 'rate')
            if 'ints' in ranges:
                descriptor.integer_range = [IntegerRange(
                    from_value=ranges['ints'][0], to_value=ranges['ints'][1], step=1)]
            if 'floats' in ranges:
                descriptor.floating_point_range = [FloatingPointRange(
                    from_value=ranges['floats'][0], to_value=ranges['floats'][1], step=0.0)]
            return self.declare_parameter(name, default, descriptor).value

        source = declare('source', 'synthetic',
                         "'synthetic', 'pattern', a folder of images or a video file")
        self.rate = declare('rate', 10.0, 'Frames per second.', floats=(0.1, 1000.0))
        width = declare('width', 640, 'Frame width (0 with height 0: native size).',
                        ints=(0, 16384))
        height = declare('height', 480, 'Frame height (0 with width 0: native size).',
                         ints=(0, 16384))
        self.frame_id = declare('frame_id', 'camera_optical_frame', 'Header frame_id.')
        self.encoding = declare('encoding', 'rgb8', 'Image encoding: ' +
                                ', '.join(SUPPORTED_ENCODINGS))
        fov = declare('horizontal_fov_deg', 60.0, 'Field of view of folder/video/pattern '
                      'sources.', floats=(1.0, 179.0))
        loop = declare('loop', True, 'Start again at the end of a folder or video.')
        self.max_frames = declare('max_frames', 0, 'Stop after this many frames (0: never).',
                                  ints=(0, 2 ** 31 - 1))
        scenes = declare('synthetic.scenes', 4, 'Synthetic scenes to render and cycle.',
                         ints=(1, 1000))
        seed = declare('synthetic.seed', 0, 'First synthetic scene seed.', ints=(0, 2 ** 31 - 1))
        hold = declare('synthetic.hold', 2.0, 'Seconds each synthetic scene is shown.',
                       floats=(0.0, 3600.0))
        qos = declare('qos', 'reliable', "'reliable' (what the node subscribes with by "
                      "default) or 'sensor_data'.")
        self.wait_for_subscribers = declare(
            'wait_for_subscribers', 0, 'Publish the first frame only once the image topic has '
            'this many subscribers (0: start at once), so a short source is seen whole.',
            ints=(0, 1000))
        self.reliable = qos == 'reliable'
        if self.encoding not in SUPPORTED_ENCODINGS:
            raise ValueError(f'encoding must be one of {list(SUPPORTED_ENCODINGS)}, '
                             f'got {self.encoding!r}')
        if qos not in ('sensor_data', 'reliable'):
            raise ValueError(f"qos must be 'sensor_data' or 'reliable', got {qos!r}")
        if self.encoding.startswith(('yuv', 'uyvy')) and width % 2:
            raise ValueError(f'{self.encoding} needs an even width')
        if source == 'synthetic':
            self.source = SyntheticSource(width, height, fov, scenes, seed,
                                          int(round(hold * self.rate)), self.get_logger())
        elif source == 'pattern':
            self.source = PatternSource(width, height, fov)
        elif os.path.isdir(source):
            self.source = FolderSource(source, width, height, fov, loop)
        elif os.path.isfile(source):
            self.source = VideoSource(source, width, height, fov, loop)
        else:
            raise ValueError(f"source must be 'synthetic', 'pattern', a folder or a video "
                             f"file; {source!r} is none of these")
        profile = qos_profile(qos, 5)
        self.image_publisher = self.create_publisher(Image, 'image', profile)
        self.info_publisher = self.create_publisher(CameraInfo, 'camera_info', profile)
        self.published = 0
        self.finished = False
        self._timer = self.create_timer(1.0 / self.rate, self._tick)
        self.add_on_set_parameters_callback(self._on_set)
        self._source_name = source
        # "publishing" is logged with the first frame: a synthetic scene takes 20-40 s to
        # render on a CPU, and a camera subscriber may not be matched yet.
        waits = (f' and {self.wait_for_subscribers} subscriber(s) are matched'
                 if self.wait_for_subscribers else '')
        self.get_logger().info(f'{source} source ready; the first frame goes to '
                               f'{self.image_publisher.topic_name} once it exists{waits}')

    def _on_set(self, changed):
        for parameter in changed:
            if parameter.name == 'rate':
                self.rate = float(parameter.value)
                self._timer.cancel()
                self._timer = self.create_timer(1.0 / self.rate, self._tick)
        return SetParametersResult(successful=True)

    def _tick(self):
        if self.finished or not self.context.ok():
            return
        if (not self.published and self.image_publisher.get_subscription_count()
                < self.wait_for_subscribers):
            return      # the source is not advanced: no frame is spent before discovery
        frame = self.source.next()
        if frame is NOT_READY:
            return
        if frame is None:
            self.get_logger().info('source exhausted')
            self.finished = True
            return
        rgb, intrinsics = frame
        stamp = self.get_clock().now().to_msg()
        height, width = rgb.shape[:2]
        if self.encoding.startswith(('yuv', 'uyvy')) and width % 2:
            rgb = rgb[:, :width - 1]
            width -= 1
        msg = rgb_to_image_msg(rgb, self.encoding)
        msg.header.stamp = stamp
        msg.header.frame_id = self.frame_id
        info = camera_info_msg(width, height, intrinsics, self.frame_id)
        info.header.stamp = stamp
        self.info_publisher.publish(info)
        self.image_publisher.publish(msg)
        self.published += 1
        if self.published == 1:
            self.get_logger().info(f'publishing {self._source_name} frames on '
                                   f'{self.image_publisher.topic_name} at {self.rate:g} Hz '
                                   f'(first frame {width}x{height})')
        if self.max_frames and self.published >= self.max_frames:
            self.finished = True


def main(args=None):
    """Console entry point; returns the exit code."""
    rclpy.init(args=args)
    try:
        camera = DemoCamera()
    except (ValueError, rclpy.exceptions.ParameterException) as exc:
        rclpy.logging.get_logger('demo_camera').error(str(exc))
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(camera)
    try:
        while rclpy.ok() and not camera.finished:
            executor.spin_once(timeout_sec=0.1)
        # Let the last messages leave before the process ends: a reliable publisher waits
        # until its subscribers acknowledged them (bounded), a best-effort one briefly.
        if camera.reliable and rclpy.ok():
            for publisher in (camera.image_publisher, camera.info_publisher):
                publisher.wait_for_all_acked(Duration(seconds=5.0))
        deadline = time.monotonic() + 0.5
        while rclpy.ok() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise               # a real error; otherwise Ctrl-C raced a publish
    finally:
        # Under `ros2 launch`, Ctrl-C reaches us twice (the terminal's SIGINT to the group,
        # then launch's own): a second one must not interrupt the clean-up below.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        rendering_ended = camera.source.close() if hasattr(camera.source, 'close') else True
        camera.destroy_node()
        rclpy.try_shutdown()
    if not rendering_ended:
        leave_now(0)        # a scene is still being rendered by PyTorch threads
    return 0


if __name__ == '__main__':
    sys.exit(main())
