"""The ``perception_node`` executable: camera images in, dense predictions out.

Subscribes to ``image`` (or ``image/compressed``) and ``camera_info``; publishes, with the
input's header and size, per enabled task: ``semantic/labels`` + ``semantic/color``,
``depth`` + ``depth/color``, ``normals`` + ``normals/color``, ``edges`` + ``edges/color``,
``human_parts/labels`` + ``human_parts/color``, ``saliency`` + ``saliency/color``, and the
point cloud ``points``. See DESIGN.md and README.md for the full interface.

Threads: the executor thread only stores the newest frame in a one-slot buffer (an older
frame still waiting there is dropped and counted) and serves parameters and timers; one
inference thread takes the newest frame, converts it, runs the engine, and publishes.
So a slow model never builds a backlog, and memory stays bounded at any input rate.
"""

import logging
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, replace
from typing import Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from mtdp_ros.ros import colormaps, parameters
from mtdp_ros.ros.conversions import (ImageRejected, compressed_msg_to_rgb, image_msg_to_rgb,
                                      numpy_to_image_msg)
from mtdp_ros.ros.monitoring import Counters, RateMeter, Samples, WarningThrottle
from mtdp_ros.ros.pointcloud import RayCache, depth_to_points, points_to_msg
from mtdp_ros.ros.qos import describe_qos, qos_profile

NODE_NAME = 'mtdp_perception'
# task -> (raw topic, colour topic), relative names so that namespaces and remapping work.
OUTPUT_TOPICS = {
    'semseg': ('semantic/labels', 'semantic/color'),
    'depth': ('depth', 'depth/color'),
    'human_parts': ('human_parts/labels', 'human_parts/color'),
    'sal': ('saliency', 'saliency/color'),
    'normals': ('normals', 'normals/color'),
    'edge': ('edges', 'edges/color'),
}
LABEL_TASKS = ('semseg', 'human_parts')
POINTS_TOPIC = 'points'
# Seconds the inference thread may take to finish its frame at shutdown.
STOP_TIMEOUT = 3.0
# Milliseconds per nanosecond.
MS_PER_NS = 1e-6


class StartupError(Exception):
    """A configuration the node cannot start with (the message says what to change)."""


@dataclass(frozen=True)
class Settings:
    """The values the inference thread reads per frame (replaced whole on a change)."""

    tasks: Tuple[str, ...]
    steps: int
    seed: int
    publish_color: bool
    publish_points: bool
    points_stride: int
    points_color: str
    depth_color_min: float
    depth_color_max: float
    max_pixels: int
    watchdog_timeout: float


SETTING_OF_PARAMETER = {
    'tasks': 'tasks', 'diffusion.steps': 'steps', 'diffusion.seed': 'seed',
    'publish.color': 'publish_color', 'publish.points': 'publish_points',
    'points.stride': 'points_stride', 'points.color': 'points_color',
    'depth.color_min': 'depth_color_min', 'depth.color_max': 'depth_color_max',
    'input.max_pixels': 'max_pixels', 'watchdog.timeout': 'watchdog_timeout',
}

FLOAT_SETTINGS = ('depth_color_min', 'depth_color_max', 'watchdog_timeout')
# Stages of a frame whose times the node keeps (reported in /diagnostics as <stage>_p50_ms):
# message -> RGB, the engine's letterbox + resizing back, and building and publishing the
# raw outputs, the colour images and the point cloud.
# node_own is their sum without the engine: the cost of the node itself.
STAGES = ('convert', 'engine_pre_post', 'publish_raw', 'publish_color', 'publish_points',
          'node_own')


class LatestFrame:
    """A one-slot buffer: ``put`` replaces what waits there; ``take`` blocks for a frame."""

    def __init__(self):
        self._condition = threading.Condition()
        self._item = None
        self._closed = False

    def put(self, item):
        """Store ``item``; True when it replaced (dropped) an unprocessed one."""
        with self._condition:
            dropped = self._item is not None
            self._item = item
            self._condition.notify()
            return dropped

    def take(self, timeout):
        """The waiting item (removing it), or None after ``timeout`` s or once closed."""
        with self._condition:
            if self._item is None and not self._closed:
                self._condition.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self):
        """Wake the taker for good."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class _RosLogHandler(logging.Handler):
    """Forwards the runtime's Python log records (fallback warnings) to the node's logger."""

    def __init__(self, logger):
        super().__init__(logging.INFO)
        self._logger = logger
        self.messages = []

    def emit(self, record):
        message = record.getMessage()
        if len(self.messages) < 100:
            self.messages.append(message)
        if record.levelno >= logging.ERROR:
            self._logger.error(message)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(message)
        else:
            self._logger.info(message)


class PerceptionNode(Node):
    """The perception node (see the module docstring)."""

    def __init__(self, node_name=NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self._log = self.get_logger()
        parameters.declare_all(self)
        values = parameters.current_values(self)
        problems = parameters.validate_startup(values)
        if problems:
            raise StartupError('invalid parameters: ' + '; '.join(problems))
        self.engine = self._create_engine(values)
        self._model_tasks = tuple(self.engine.tasks)
        self._is_diffusion = bool(self.engine.config.is_diffusion)
        self._check_startup_model_values(values)
        if values['tasks'] is None:
            self.set_parameters([Parameter('tasks', Parameter.Type.STRING_ARRAY,
                                           list(self._model_tasks))])
            values['tasks'] = list(self._model_tasks)
        self._settings = self._settings_from(values)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)

        self._counters = Counters()
        self._input_rate = RateMeter()
        self._output_rate = RateMeter()
        self._latency_ms = Samples()
        self._processing_ms = Samples()
        self._model_ms = Samples()
        self._overhead_ms = Samples()
        self._stage_ms = {name: Samples() for name in STAGES}
        self._throttle = WarningThrottle(period=5.0)
        self._rays = RayCache()
        self._camera_info = None
        self._slot = LatestFrame()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._last_frame_time = None
        self._start_time = time.monotonic()
        self._last_watchdog_warning = None

        self._create_publishers(values)
        self._create_subscriptions(values)
        self.create_timer(float(values['diagnostics.period']), self._publish_diagnostics)
        self.create_timer(1.0, self._watchdog)
        self._worker = threading.Thread(target=self._run_inference, name='mtdp_inference',
                                        daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ start-up
    def _create_engine(self, values):
        from mtdp_ros.runtime import create_engine
        # The runtime reports fallbacks (CPU instead of CUDA, random weights...) through
        # its Python logger and as Python warnings: both reach the ROS log, once.
        handler = self._runtime_log_handler = _RosLogHandler(self._log)
        runtime_logger = logging.getLogger('mtdp_ros.runtime')
        runtime_logger.addHandler(handler)
        runtime_logger.propagate = False
        runtime_logger.setLevel(logging.INFO)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                engine = create_engine(model=values['model.preset'],
                                       checkpoint=values['model.checkpoint'] or None,
                                       backend=values['engine.backend'],
                                       device=values['engine.device'],
                                       precision=values['engine.precision'],
                                       seed=values['diffusion.seed'],
                                       reparameterize=values['engine.reparameterize'])
        except Exception as exc:  # noqa: B902 - every failure here is a start-up error
            raise StartupError(f'cannot create the engine for model.preset '
                               f'{values["model.preset"]!r} (checkpoint '
                               f'{values["model.checkpoint"] or "none"}, backend '
                               f'{values["engine.backend"]}, device '
                               f'{values["engine.device"]}): {type(exc).__name__}: {exc}') \
                from exc
        said = set(handler.messages)
        for warning in caught:
            if str(warning.message) not in said:
                said.add(str(warning.message))
                self._log.warning(str(warning.message))
        if engine.random_weights and not any('random' in text for text in said):
            self._log.warning(f'model {engine.model_name}: no trained weights were found or '
                              f'given; the weights are RANDOM and the outputs meaningless '
                              f'(set model.checkpoint or model.preset to trained weights)')
        self._log.info(f'engine: model {engine.model_name} ({engine.config.family}, input '
                       f'{engine.config.image_size[0]}x{engine.config.image_size[1]}, tasks '
                       f'{list(engine.tasks)}), backend {engine.backend}, device '
                       f'{engine.device}, precision {engine.precision}')
        return engine

    def _check_startup_model_values(self, values):
        # diffusion.steps is not handed to the engine: 0 must keep meaning the trained
        # steps after any change, so every call passes its own step count.
        problems = []
        if values['tasks'] is not None:
            reason = parameters.check_tasks(values['tasks'], self._model_tasks)
            if reason:
                problems.append(reason)
        reason = parameters.check_steps(values['diffusion.steps'], self._is_diffusion,
                                        self.engine.model_name)
        if not reason and self._is_diffusion:
            reason = self.engine.check_steps(values['diffusion.steps'] or None)
            if not reason:
                self.engine.prepare_steps(values['diffusion.steps'] or None)
        if reason:
            problems.append(reason)
        if problems:
            self.engine.close()
            raise StartupError('invalid parameters: ' + '; '.join(problems))

    def _settings_from(self, values):
        fields = {setting: values[name] for name, setting in SETTING_OF_PARAMETER.items()}
        fields['tasks'] = tuple(t for t in self._model_tasks if t in fields['tasks'])
        for setting in FLOAT_SETTINGS:
            fields[setting] = float(fields[setting])
        return Settings(**fields)

    def _create_publishers(self, values):
        reliability = values['output.qos']
        depth = values['output.qos_depth']
        qos = qos_profile(reliability, depth)
        self._raw_publishers = {}
        self._color_publishers = {}
        for task in self._model_tasks:
            raw_topic, color_topic = OUTPUT_TOPICS[task]
            self._raw_publishers[task] = self.create_publisher(Image, raw_topic, qos)
            self._color_publishers[task] = self.create_publisher(Image, color_topic, qos)
        self._points_publisher = self.create_publisher(PointCloud2, POINTS_TOPIC, qos)
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics',
                                                            10)

    def _create_subscriptions(self, values):
        self._input_qos = qos_profile(values['input.qos'], values['input.qos_depth'])
        self._input_qos_name = values['input.qos']
        self._compressed = values['input.transport'] == 'compressed'
        if self._compressed:
            self._image_subscription = self.create_subscription(
                CompressedImage, 'image/compressed', self._on_image, self._input_qos)
        else:
            self._image_subscription = self.create_subscription(
                Image, 'image', self._on_image, self._input_qos)
        self._info_subscription = self.create_subscription(
            CameraInfo, 'camera_info', self._on_camera_info, self._input_qos)
        self._log.info(f'waiting for images on {self._image_subscription.topic_name} '
                       f'({self._input_qos_name}: {describe_qos(self._input_qos)})')

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, changed):
        """Reject invalid values of the dynamic parameters with a reason."""
        current = {name: self.get_parameter(name).value
                   for name in ('depth.color_min', 'depth.color_max')}
        for parameter in changed:
            spec = parameters.SPEC_BY_NAME.get(parameter.name)
            if spec is None:
                continue
            value = parameter.value
            if parameter.name == 'tasks':
                reason = parameters.check_tasks(value or [], self._model_tasks)
            elif parameter.name == 'diffusion.steps':
                reason = parameters.check_steps(value, self._is_diffusion,
                                                self.engine.model_name)
                if not reason and self._is_diffusion:
                    # What this engine cannot run (a fixed .onnx file's other counts).
                    reason = self.engine.check_steps(value or None)
            else:
                reason = parameters.check_value(spec, value)
            if parameter.name in current:
                current[parameter.name] = value
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        reason = parameters.check_depth_range(current['depth.color_min'],
                                              current['depth.color_max'])
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, changed):
        updates = {}
        for parameter in changed:
            setting = SETTING_OF_PARAMETER.get(parameter.name)
            if setting is None:
                continue
            value = parameter.value
            if setting == 'tasks':
                value = tuple(t for t in self._model_tasks if t in value)
            elif setting == 'steps' and self._is_diffusion:
                # ONNX Runtime exports a new count in the background; the old one serves.
                self.engine.prepare_steps(value or None)
            elif setting in FLOAT_SETTINGS:
                value = float(value)
            updates[setting] = value
        if updates:
            self._settings = replace(self._settings, **updates)
            self._log.info('now: ' + ', '.join(f'{k}={v}' for k, v in updates.items()))

    # ------------------------------------------------------------------ inputs
    def _on_image(self, msg):
        self._last_frame_time = time.monotonic()
        self._input_rate.tick()
        if self._slot.put((msg, self.get_clock().now().nanoseconds)):
            self._counters.add('dropped')

    def _on_camera_info(self, msg):
        self._camera_info = msg

    # ------------------------------------------------------------------ inference thread
    def _run_inference(self):
        self._warm_up()
        while not self._stopping.is_set():
            item = self._slot.take(timeout=0.5)
            if item is None:
                continue
            try:
                self._process(*item)
            except Exception as exc:  # noqa: B902 - the node must keep serving
                if self._stopping.is_set() or not self.context.ok():
                    return
                self._counters.add('errors')
                self._warn('error', f'frame failed: {type(exc).__name__}: {exc}')

    def _warm_up(self):
        """One inference before the first frame (allocations, kernel selection)."""
        height, width = self.engine.config.image_size
        try:
            self.engine.infer(np.zeros((height, width, 3), np.uint8),
                              tasks=self._settings.tasks)
        except Exception as exc:  # noqa: B902 - a real frame will report the problem
            self._log.warning(f'warm-up inference failed: {type(exc).__name__}: {exc}')
        self._ready.set()
        self._log.info('ready')

    def _warn(self, kind, message):
        message = self._throttle.filter(kind, message)
        if message is not None:
            self._log.warning(message)

    def _reject(self, kind, message):
        self._counters.add('rejected')
        self._counters.add('rejected_' + kind)
        self._warn('rejected_' + kind, f'rejected a frame from '
                                       f'{self._image_subscription.topic_name}: {message}')

    def _process(self, msg, received_ns):
        """Convert, infer and publish one frame; per-stage times go to the statistics."""
        clock = time.perf_counter
        started = clock()
        stages = {}
        settings = self._settings
        try:
            if self._compressed:
                rgb = compressed_msg_to_rgb(msg, settings.max_pixels)
            else:
                rgb = image_msg_to_rgb(msg, settings.max_pixels)
        except ImageRejected as exc:
            self._reject(exc.kind, str(exc))
            return
        stages['convert'] = clock()
        try:
            outputs = self.engine.infer(rgb, tasks=settings.tasks,
                                        steps=settings.steps or None, seed=settings.seed)
        except ValueError as exc:
            self._reject('engine', str(exc))
            return
        stages['engine'] = clock()
        header = msg.header
        semantic_rgb = None
        raw_seconds = color_seconds = 0.0
        for task, values in outputs.items():
            mark = clock()
            raw_publisher = self._raw_publishers[task]
            if raw_publisher.get_subscription_count():
                raw_publisher.publish(numpy_to_image_msg(values, self._raw_encoding(values),
                                                         header))
            between = clock()
            raw_seconds += between - mark
            color_publisher = self._color_publishers[task]
            if settings.publish_color and color_publisher.get_subscription_count():
                colored = self._colorize(task, values, settings)
                if task == 'semseg':
                    semantic_rgb = colored
                color_publisher.publish(numpy_to_image_msg(colored, 'rgb8', header))
            color_seconds += clock() - between
        mark = clock()
        if settings.publish_points and self._points_publisher.get_subscription_count():
            self._publish_points(outputs, rgb, semantic_rgb, header, settings)
        finished = clock()
        timing = self.engine.last_timing
        model_ms = float(timing.get('model_ms', 0.0))
        self._stage_ms['convert'].add((stages['convert'] - started) * 1000.0)
        self._stage_ms['engine_pre_post'].add(float(timing.get('preprocess_ms', 0.0)) +
                                              float(timing.get('postprocess_ms', 0.0)))
        self._stage_ms['publish_raw'].add(raw_seconds * 1000.0)
        self._stage_ms['publish_color'].add(color_seconds * 1000.0)
        self._stage_ms['publish_points'].add((finished - mark) * 1000.0)
        own = (stages['convert'] - started) + raw_seconds + color_seconds + (finished - mark)
        self._stage_ms['node_own'].add(own * 1000.0)
        self._record_frame(header, received_ns, started, model_ms)

    @staticmethod
    def _raw_encoding(values):
        if values.dtype == np.uint8:
            return 'mono8'
        if values.dtype == np.uint16:
            return 'mono16'
        return '32FC3' if values.ndim == 3 else '32FC1'

    @staticmethod
    def _colorize(task, values, settings):
        if task in LABEL_TASKS:
            return colormaps.labels_to_color(values)
        if task == 'depth':
            return colormaps.depth_to_color(values, settings.depth_color_min,
                                            settings.depth_color_max)
        if task == 'normals':
            return colormaps.normals_to_color(values)
        return colormaps.probability_to_color(values)

    def _publish_points(self, outputs, rgb, semantic_rgb, header, settings):
        depth = outputs.get('depth')
        if depth is None:
            self._warn('points_depth', f'{self._points_publisher.topic_name} has subscribers '
                                       f'but the depth task is not enabled (tasks: '
                                       f'{list(settings.tasks)})')
            return
        info = self._camera_info
        if info is None:
            self._warn('points_info', f'{self._points_publisher.topic_name} has subscribers '
                                      f'but nothing arrived on '
                                      f'{self._info_subscription.topic_name} yet')
            return
        height, width = depth.shape
        try:
            rays = self._rays.rays(info, width, height, settings.points_stride)
        except ValueError as exc:
            self._warn('points_info', f'cannot build points: {exc}')
            return
        colors = rgb
        if settings.points_color == 'semantic' and 'semseg' in outputs:
            colors = semantic_rgb if semantic_rgb is not None else \
                colormaps.labels_to_color(outputs['semseg'])
        points = depth_to_points(depth, rays, colors, settings.points_stride)
        self._points_publisher.publish(points_to_msg(points, header))

    def _record_frame(self, header, received_ns, started, model_ms):
        now_ns = self.get_clock().now().nanoseconds
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        # A camera that leaves the stamp unset gets latency from reception instead.
        origin_ns = stamp_ns if stamp_ns > 0 else received_ns
        self._latency_ms.add((now_ns - origin_ns) * MS_PER_NS)
        processing_ms = (time.perf_counter() - started) * 1000.0
        self._processing_ms.add(processing_ms)
        self._model_ms.add(model_ms)
        self._overhead_ms.add(processing_ms - model_ms)
        self._output_rate.tick()

    # ------------------------------------------------------------------ monitoring
    def _publish_diagnostics(self):
        """Publish one DiagnosticStatus with rates, latencies, counters and the engine."""
        counters = self._counters.snapshot()
        status = DiagnosticStatus()
        status.name = f'{self.get_name()}: perception'
        status.hardware_id = self.engine.device
        level, message = DiagnosticStatus.OK, 'running'
        idle = self._seconds_without_frames()
        if not self._ready.is_set():
            level, message = DiagnosticStatus.OK, 'warming up'
        elif idle is not None and idle > self._settings.watchdog_timeout:
            level, message = DiagnosticStatus.WARN, f'no input frame for {idle:.0f} s'
        elif self.engine.random_weights:
            level, message = DiagnosticStatus.WARN, 'running with random weights'
        status.level, status.message = level, message

        def fmt(value):
            return 'nan' if value != value else f'{value:.2f}'

        values = {
            'input_rate_hz': fmt(self._input_rate.rate()),
            'output_rate_hz': fmt(self._output_rate.rate()),
            'latency_p50_ms': fmt(self._latency_ms.percentile(50)),
            'latency_p95_ms': fmt(self._latency_ms.percentile(95)),
            'processing_p50_ms': fmt(self._processing_ms.percentile(50)),
            'model_p50_ms': fmt(self._model_ms.percentile(50)),
            'node_overhead_p50_ms': fmt(self._overhead_ms.percentile(50)),
        }
        values.update({f'{name}_p50_ms': fmt(samples.percentile(50))
                       for name, samples in self._stage_ms.items()})
        values.update({
            'frames_in': str(self._input_rate.total),
            'frames_out': str(self._output_rate.total),
            'dropped': str(counters.get('dropped', 0)),
            'rejected': str(counters.get('rejected', 0)),
            'errors': str(counters.get('errors', 0)),
            'device': self.engine.device,
            'backend': self.engine.backend,
            'precision': self.engine.precision,
            'model': self.engine.model_name,
            'family': self.engine.config.family,
            'random_weights': str(self.engine.random_weights).lower(),
            'tasks': ','.join(self._settings.tasks),
            'input_topic': self._image_subscription.topic_name,
            'input_qos': self._input_qos_name,
        })
        if self._is_diffusion:
            steps = self._settings.steps or self.engine.config.trained_steps
            values['diffusion_steps'] = str(steps)
        for key in sorted(counters):
            if key.startswith('rejected_'):
                values[key] = str(counters[key])
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._diagnostics_publisher.publish(array)

    def _seconds_without_frames(self):
        last = self._last_frame_time if self._last_frame_time is not None \
            else self._start_time
        return time.monotonic() - last

    def _watchdog(self):
        """Warn when no frame arrives, naming topic, QoS and what publishes there."""
        timeout = self._settings.watchdog_timeout
        idle = self._seconds_without_frames()
        if idle < timeout:
            self._last_watchdog_warning = None
            return
        now = time.monotonic()
        if self._last_watchdog_warning is not None and \
                now - self._last_watchdog_warning < max(timeout, 5.0):
            return
        self._last_watchdog_warning = now
        topic = self._image_subscription.topic_name
        publishers = self.get_publishers_info_by_topic(topic)
        text = (f'no image received on {topic} for {idle:.0f} s (subscribed with QoS '
                f'{self._input_qos_name}: {describe_qos(self._input_qos)}); ')
        if not publishers:
            text += ('no publisher exists on this topic: check the topic name, namespace '
                     'and remapping (e.g. image:=/camera/image_raw)')
        else:
            best_effort = [info.node_name for info in publishers
                           if info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT]
            text += f'{len(publishers)} publisher(s) exist'
            if best_effort and self._input_qos.reliability == ReliabilityPolicy.RELIABLE:
                text += (f', but {", ".join(best_effort)} publish best_effort, which a '
                         f'reliable subscription never receives: set input.qos to '
                         f'sensor_data')
            else:
                text += ': is the camera streaming?'
        self._log.warning(text)

    # ------------------------------------------------------------------ shutdown
    def stop(self):
        """Stop the inference thread (waits up to STOP_TIMEOUT s for the current frame)."""
        self._stopping.set()
        self._slot.close()
        self._worker.join(STOP_TIMEOUT)

    def inference_running(self):
        """True while the inference thread is still busy (after ``stop``)."""
        return self._worker.is_alive()

    def destroy_node(self):
        """Stop inference, release the engine, destroy the ROS entities."""
        self.stop()
        if not self._worker.is_alive():
            self.engine.close()
        logging.getLogger('mtdp_ros.runtime').removeHandler(self._runtime_log_handler)
        return super().destroy_node()


def main(args=None):
    """Console entry point; returns the process exit code (0 on Ctrl-C)."""
    rclpy.init(args=args)
    node = None
    try:
        node = PerceptionNode()
    except StartupError as exc:
        rclpy.logging.get_logger(NODE_NAME).error(str(exc))
    except rclpy.exceptions.ParameterException as exc:
        rclpy.logging.get_logger(NODE_NAME).error(f'invalid parameter: {exc}')
    except (KeyboardInterrupt, ExternalShutdownException):
        rclpy.try_shutdown()
        return 0
    except Exception:
        if not rclpy.ok():      # Ctrl-C during start-up invalidates the context
            return 0
        raise
    if node is None:
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        executor.shutdown(timeout_sec=1.0)
        rclpy.try_shutdown()
    if node.inference_running():
        # The frame in flight (a large model on a CPU can take seconds) runs in PyTorch
        # threads that cannot be interrupted; a normal interpreter exit would abort under
        # them, so leave now: Ctrl-C must end the node promptly and with code 0.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == '__main__':
    sys.exit(main())
