"""The node's output messages, built from an engine's outputs.

One code path for everything that turns predictions into ROS messages: the node publishes
what :meth:`OutputBuilder.messages` yields, and ``mtdp bag`` writes the same messages into
a bag. Topic names are relative (namespaces and remapping work); each message carries the
input image's header and size.
"""

from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from mtdp_ros.models.tasks import get_task, task_names
from mtdp_ros.ros import colormaps
from mtdp_ros.ros.camera import depth_camera_info
from mtdp_ros.ros.image_output import numpy_to_image_msg
from mtdp_ros.ros.pointcloud import RayCache, depth_to_points, points_to_msg

# task -> (raw topic, colour topic) of the built-in tasks (the task table has them all:
# use task_topics for tasks registered later).
OUTPUT_TOPICS = {name: (get_task(name).raw_topic, get_task(name).color_topic)
                 for name in task_names()}
POINTS_TOPIC = 'points'
# The calibration of the depth image (same header and size), beside it as an image_transport
# CameraSubscriber expects (<stem>/image + <stem>/camera_info), for depth_image_proc & co.
DEPTH_INFO_TOPIC = f"{get_task('depth').topic_stem}/camera_info"
# Kinds of output message, for per-kind statistics.
KINDS = ('raw', 'color', 'points')


@dataclass(frozen=True)
class OutputOptions:
    """How the outputs are drawn and which optional ones are built."""

    publish_color: bool = True
    publish_points: bool = True
    points_stride: int = 1
    points_color: str = 'image'
    depth_color_min: float = 0.0
    depth_color_max: float = 0.0
    # The input is rectified (image_rect): the cloud and depth/camera_info use P, not K + D.
    camera_rectified: bool = False


class OutputMessage(NamedTuple):
    """One message to publish: its kind (see KINDS), relative topic and the message."""

    kind: str
    topic: str
    msg: object


def task_topics(task):
    """(raw topic, colour topic) of ``task``, from the task table."""
    spec = get_task(task)
    return spec.raw_topic, spec.color_topic


def output_topics(tasks):
    """(relative topic, message type) of every output a model with ``tasks`` can publish.

    ``points`` and ``depth/camera_info`` exist only for models that predict depth.
    """
    topics = []
    for task in tasks:
        raw_topic, color_topic = task_topics(task)
        topics += [(raw_topic, Image), (color_topic, Image)]
    if 'depth' in tasks:
        topics += [(DEPTH_INFO_TOPIC, CameraInfo), (POINTS_TOPIC, PointCloud2)]
    return topics


def raw_encoding(values):
    """The sensor_msgs/Image encoding of a raw output array (labels, depth, normals...)."""
    if values.dtype == np.uint8:
        return 'mono8'
    if values.dtype == np.uint16:
        return 'mono16'
    return '32FC3' if values.ndim == 3 else '32FC1'


def _everything(topic):
    return True


def _ignore(kind, message):
    return None


class OutputBuilder:
    """Builds the output messages of one stream of frames (caches the camera's rays)."""

    def __init__(self):
        self._rays = RayCache()

    def messages(self, outputs, header, rgb, camera_info=None,
                 options: OutputOptions = OutputOptions(),
                 wanted: Callable[[str], bool] = _everything,
                 on_problem: Callable[[str, str], None] = _ignore
                 ) -> Iterator[OutputMessage]:
        """Yield the messages of one frame, lazily (each is built when the caller asks).

        ``outputs``: task -> array at the input size, as an engine returns them; ``rgb``:
        the input image (colours of the cloud); ``wanted(topic)``: whether anybody takes
        that topic (a message nobody takes is not built); ``on_problem(kind, text)``: told
        why a wanted cloud cannot be built (no depth task, no camera_info, bad camera).
        """
        semantic_rgb = None
        for task, values in outputs.items():
            raw_topic, color_topic = task_topics(task)
            if wanted(raw_topic):
                yield OutputMessage('raw', raw_topic,
                                    numpy_to_image_msg(values, raw_encoding(values), header))
            if task == 'depth' and camera_info is not None and wanted(DEPTH_INFO_TOPIC):
                info = self._depth_info(camera_info, header, values.shape, options, on_problem)
                if info is not None:
                    yield OutputMessage('raw', DEPTH_INFO_TOPIC, info)
            if options.publish_color and wanted(color_topic):
                colored = colormaps.colorize(task, values, options.depth_color_min,
                                             options.depth_color_max)
                if task == 'semseg':
                    semantic_rgb = colored
                yield OutputMessage('color', color_topic,
                                    numpy_to_image_msg(colored, 'rgb8', header))
        if options.publish_points and wanted(POINTS_TOPIC):
            cloud = self._points(outputs, rgb, semantic_rgb, camera_info, header, options,
                                 on_problem)
            if cloud is not None:
                yield OutputMessage('points', POINTS_TOPIC, cloud)

    @staticmethod
    def _depth_info(camera_info, header, shape, options, on_problem) -> Optional[CameraInfo]:
        height, width = shape
        try:
            return depth_camera_info(camera_info, header, width, height,
                                     options.camera_rectified)
        except ValueError as exc:
            on_problem('depth_info', f'cannot build {DEPTH_INFO_TOPIC}: {exc}')
            return None

    def _points(self, outputs, rgb, semantic_rgb, camera_info, header, options,
                on_problem) -> Optional[PointCloud2]:
        depth = outputs.get('depth')
        if depth is None:
            on_problem('points_depth', f'{POINTS_TOPIC} is wanted but the depth task is not '
                                       f'enabled (tasks: {list(outputs)})')
            return None
        if camera_info is None:
            on_problem('points_info', f'{POINTS_TOPIC} is wanted but no camera_info has '
                                      f'arrived yet')
            return None
        height, width = depth.shape
        try:
            rays = self._rays.rays(camera_info, width, height, options.points_stride,
                                   options.camera_rectified)
        except ValueError as exc:
            on_problem('points_info', f'cannot build points: {exc}')
            return None
        colors = rgb
        if options.points_color == 'semantic' and 'semseg' in outputs:
            colors = semantic_rgb if semantic_rgb is not None else \
                colormaps.labels_to_color(outputs['semseg'])
        points = depth_to_points(depth, rays, colors, options.points_stride)
        return points_to_msg(points, header)
