"""The ``perception_node`` executable: camera images in, dense predictions out.

Subscribes to ``image`` (or ``image/compressed``) and ``camera_info``; publishes, with the
input's header and size, per enabled task: ``semantic/labels`` + ``semantic/color``,
``depth`` + ``depth/color``, ``normals`` + ``normals/color``, ``edges`` + ``edges/color``,
``human_parts/labels`` + ``human_parts/color``, ``saliency`` + ``saliency/color``, and the
point cloud ``points`` (models with depth only). See DESIGN.md and README.md for the full
interface.

A managed (lifecycle) node: unconfigured -> configure (create the engine, warm it up at
the camera's size when camera_info is known) -> inactive -> activate (subscribe, publish)
-> active; deactivate stops the outputs, cleanup releases the engine, shutdown works from
any state. Parameter ``autostart`` (default true) configures and activates at start-up.

Threads: the executor thread stores the newest frame in a one-slot buffer (an older frame
still waiting there is dropped and counted) and serves parameters, transitions and timers;
one inference thread takes the newest frame, converts it, runs the engine, and publishes.
So a slow model never builds a backlog, and memory stays bounded at any input rate.

Stops: SIGINT and SIGTERM only set an event (later signals do nothing), the main thread
leaves the executor loop and shuts down once; see :mod:`mtdp_ros.ros.stops`.
"""

import functools
import gc
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from mtdp_ros.ros import parameters
from mtdp_ros.ros.camera import CameraInfoCheck, FocalCorrection
from mtdp_ros.ros.conversions import ImageRejected, compressed_msg_to_rgb, image_msg_to_rgb
from mtdp_ros.ros.diagnostics import (MS_PER_NS, STAGES, FrameStatistics,
                                      InputWatchdog, build_status)
from mtdp_ros.ros.monitoring import WarningThrottle
from mtdp_ros.ros.outputs import KINDS, OUTPUT_TOPICS, OutputBuilder, OutputOptions, \
    output_topics
from mtdp_ros.ros.qos import describe_qos, qos_profile
from mtdp_ros.ros.runtime_log import RuntimeLogBridge
from mtdp_ros.ros.stops import StopSignals

__all__ = ['NODE_NAME', 'OUTPUT_TOPICS', 'STAGES', 'PerceptionNode', 'StartupError', 'main']

NODE_NAME = 'mtdp_perception'
# Seconds the inference thread may take to finish its frame at shutdown.
STOP_TIMEOUT = 3.0
# Seconds a deactivate/cleanup transition waits for the frame in flight (a large model on
# a CPU takes seconds per frame; the engine must not be released under it).
TRANSITION_TIMEOUT = 60.0
SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE
ERROR = TransitionCallbackReturn.ERROR


# When this module was loaded: the program's start where /proc cannot say it.
MODULE_LOADED = time.monotonic()


def seconds_since_program_start():
    """Seconds since this process started (from /proc; else since this module loaded)."""
    try:
        with open('/proc/self/stat', encoding='ascii') as handle:
            # Field 22 (start time in clock ticks after boot) counts from after the
            # command name, which may hold spaces and parentheses.
            start_ticks = int(handle.read().rsplit(')', 1)[1].split()[19])
        with open('/proc/uptime', encoding='ascii') as handle:
            uptime = float(handle.read().split()[0])
        return uptime - start_ticks / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError):
        return time.monotonic() - MODULE_LOADED


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

    def clear(self):
        """Drop what waits (a deactivated node serves no old frame later)."""
        with self._condition:
            self._item = None

    def close(self):
        """Wake the taker for good."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


def _callback_returning(result_on_exception):
    """Wrap a transition callback: an exception is logged (rclpy would drop it silently)."""
    def decorator(method):
        @functools.wraps(method)
        def wrapper(self, state):
            try:
                return method(self, state)
            except Exception as exc:  # noqa: B902 - the transition reports it
                self._log.error(f'transition from {state.label} failed: '
                                f'{type(exc).__name__}: {exc}')
                return result_on_exception
        return wrapper
    return decorator


class PerceptionNode(LifecycleNode):
    """The perception node (see the module docstring).

    Constructing it declares the parameters and creates only the diagnostics, the
    camera_info subscription and the inference thread; the engine comes with configure.
    """

    def __init__(self, node_name=NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self._log = self.get_logger()
        parameters.declare_all(self)
        self.autostart = bool(self.get_parameter('autostart').value)
        self.engine = None
        self._settings = None
        self._model_tasks = ()
        self._is_diffusion = False
        self._output_publishers = {}
        self._image_subscription = None
        self._input_topic = ''
        self._input_qos = None
        self._input_qos_name = ''
        self._compressed = False
        self._active = False
        self._startup_to_first_output_s = None
        self.statistics = FrameStatistics()
        self._input_watchdog = InputWatchdog()
        self._throttle = WarningThrottle(period=5.0)
        self._outputs = OutputBuilder()
        self._runtime_log = RuntimeLogBridge(self._log)
        self._camera_info = None
        self._slot = LatestFrame()
        # Held by the inference thread for each frame: a transition that stops the outputs
        # or releases the engine takes it, so no frame is half-way through then.
        self._frame_lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = None            # set by stop(): whether the engine was released
        self._ready = threading.Event()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        self._create_camera_info_subscription()
        # Camera geometry (mtdp_ros/ros/camera.py): K + D or P, and depth's focal correction;
        # read-only parameters, needed by camera_info in every state.
        self._focal = FocalCorrection(self.get_parameter('depth.focal_correction').value,
                                      bool(self.get_parameter('camera.rectified').value),
                                      self.resolve_topic_name('camera_info'), self._log.info)
        self._camera_check = CameraInfoCheck(self._focal.rectified)
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics',
                                                            10)
        # A steady clock: under use_sim_time without /clock, ROS-time timers never fire.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(float(self.get_parameter('diagnostics.period').value),
                          self._publish_diagnostics, clock=steady)
        self.create_timer(1.0, self._watchdog, clock=steady)
        self._worker = threading.Thread(target=self._run_inference, name='mtdp_inference',
                                        daemon=True)
        self._worker.start()
        if not self.autostart:
            self._log.info('autostart is false: unconfigured, no engine; waiting for the '
                           'configure transition on ~/change_state')

    @property
    def state(self):
        """The lifecycle state's label ('unconfigured', 'inactive', 'active', ...)."""
        return self._state_machine.current_state[1]

    def run_autostart(self):
        """Configure and activate; True when both succeeded."""
        return self.trigger_configure() == SUCCESS and self.trigger_activate() == SUCCESS

    # ------------------------------------------------------------------ lifecycle
    @_callback_returning(ERROR)
    def on_configure(self, state):
        """Validate the parameters, create the engine and the publishers, warm up."""
        try:
            self._configure()
        except StartupError as exc:
            self._log.error(str(exc))
            self._release_engine()
            return FAILURE
        except Exception:
            self._release_engine()
            raise
        self._log.info('configured (inactive)')
        return SUCCESS

    @_callback_returning(ERROR)
    def on_activate(self, state):
        """Subscribe to the images; frames are processed and published from now on."""
        self.statistics.activated()
        self._input_watchdog.reset()
        self._active = True
        self._create_image_subscription()
        self._ready.set()
        self._log.info('ready (active): the first frame of a new size warms the engine up')
        return SUCCESS

    @_callback_returning(ERROR)
    def on_deactivate(self, state):
        """Unsubscribe, and wait for the frame in flight: no outputs after this."""
        self._deactivate(TRANSITION_TIMEOUT)
        self._log.info('deactivated (inactive): no outputs')
        return SUCCESS

    @_callback_returning(ERROR)
    def on_cleanup(self, state):
        """Release the engine and its (GPU) memory, destroy the output publishers."""
        if not self._release_engine(TRANSITION_TIMEOUT):
            self._log.error('cleanup: the frame in flight did not finish; engine kept')
            return FAILURE
        self._log.info('cleaned up (unconfigured): engine released')
        return SUCCESS

    def on_shutdown(self, state):
        """From any state: stop the outputs and the inference thread, release the engine."""
        released = self.stop()
        self._log.info(f'shut down (from {state.label}): ' +
                       ('engine released' if released else
                        'the frame in flight did not finish; the process ends under it'))
        return SUCCESS

    def on_error(self, state):
        """After a failed transition: release everything, back to unconfigured."""
        self._deactivate(STOP_TIMEOUT)
        self._release_engine(STOP_TIMEOUT)
        return SUCCESS

    def _configure(self):
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
        self._input_qos = qos_profile(values['input.qos'], values['input.qos_depth'])
        self._input_qos_name = values['input.qos']
        self._compressed = values['input.transport'] == 'compressed'
        self._input_topic = self.resolve_topic_name(
            'image/compressed' if self._compressed else 'image')
        self._create_publishers(values)
        info = self._camera_info
        if info is not None and info.width > 0 and info.height > 0:
            self._warm_up(info.height, info.width)

    def _deactivate(self, timeout):
        self._active = False
        self._ready.clear()
        if self._image_subscription is not None:
            self.destroy_subscription(self._image_subscription)
            self._image_subscription = None
        self._slot.clear()
        if self._frame_lock.acquire(timeout=timeout):
            self._frame_lock.release()
            return True
        return False

    def _release_engine(self, timeout=STOP_TIMEOUT):
        """Close the engine once no frame uses it; False when the frame in flight stays."""
        if not self._frame_lock.acquire(timeout=timeout):
            return False
        try:
            engine, self.engine = self.engine, None
            for publisher in self._output_publishers.values():
                self.destroy_publisher(publisher)
            self._output_publishers = {}
            self._settings = None
            self._outputs = OutputBuilder()
            if engine is not None:
                engine.close()
                del engine
                gc.collect()
        finally:
            self._frame_lock.release()
        self._runtime_log.detach()
        return True

    # ------------------------------------------------------------------ configure
    def _create_engine(self, values):
        from mtdp_ros.runtime import create_engine
        # The runtime reports fallbacks (CPU instead of CUDA, random weights...) through
        # its Python logger and as Python warnings: both reach the ROS log, once.
        self._runtime_log.attach()
        try:
            with self._runtime_log.forwarding_warnings() as said:
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
        # Only the outputs this model has are advertised (no points without depth).
        self._output_publishers = {
            topic: self.create_publisher(msg_type, topic, qos)
            for topic, msg_type in output_topics(self._model_tasks)}

    def _create_camera_info_subscription(self):
        # Listened to in every state (cheap), so that configure knows the camera's size.
        # With an invalid input.qos, configure fails and says why; nothing to listen to.
        name = self.get_parameter('input.qos').value
        try:
            qos = qos_profile(name, self.get_parameter('input.qos_depth').value)
        except ValueError:
            self._info_subscription = None
            return
        self._info_subscription = self.create_subscription(
            CameraInfo, 'camera_info', self._on_camera_info, qos)

    def _create_image_subscription(self):
        if self._compressed:
            self._image_subscription = self.create_subscription(
                CompressedImage, 'image/compressed', self._on_image, self._input_qos)
        else:
            self._image_subscription = self.create_subscription(
                Image, 'image', self._on_image, self._input_qos)
        self._log.info(f'waiting for images on {self._input_topic} '
                       f'({self._input_qos_name}: {describe_qos(self._input_qos)})')

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, changed):
        """Reject invalid values of the dynamic parameters with a reason.

        While unconfigured (no model yet) tasks and diffusion.steps are checked against
        the model at configure.
        """
        current = {name: self.get_parameter(name).value
                   for name in ('depth.color_min', 'depth.color_max')}
        engine = self.engine
        for parameter in changed:
            spec = parameters.SPEC_BY_NAME.get(parameter.name)
            if spec is None:
                continue
            value = parameter.value
            if parameter.name == 'tasks':
                reason = parameters.check_tasks(value or [], self._model_tasks) \
                    if engine is not None else parameters.check_tasks(value or [],
                                                                      value or [])
            elif parameter.name == 'diffusion.steps':
                reason = parameters.check_value(spec, value)
                if engine is not None and not reason:
                    reason = parameters.check_steps(value, self._is_diffusion,
                                                    engine.model_name)
                    if not reason and self._is_diffusion:
                        # What this engine cannot run (a fixed .onnx file's other counts).
                        reason = engine.check_steps(value or None)
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
        if self._settings is None:     # unconfigured: configure reads the parameters
            return
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
        self.statistics.frame_in()
        if self._slot.put((msg, self.get_clock().now().nanoseconds)):
            self.statistics.counters.add('dropped')

    def _on_camera_info(self, msg):
        problem = self._camera_check.problem(msg)
        if problem:        # e.g. NaN in D: the cloud would be all NaN
            self._warn('camera_info', f'ignoring camera_info from '
                                      f'{self._info_subscription.topic_name}: {problem}')
            return
        previous = self._camera_info
        self._camera_info = msg
        if previous is None or (previous.width, previous.height) != (msg.width, msg.height):
            self._log.info(f'camera_info: {msg.width}x{msg.height} '
                           f'(frame {msg.header.frame_id!r})')

    # ------------------------------------------------------------------ inference thread
    def _run_inference(self):
        while not self._stopping.is_set():
            item = self._slot.take(timeout=0.5)
            if item is None:
                continue
            with self._frame_lock:
                if not self._active or self.engine is None or self._stopping.is_set():
                    continue
                try:
                    self._process(*item)
                except Exception as exc:  # noqa: B902 - the node must keep serving
                    if self._stopping.is_set() or not self.context.ok():
                        return
                    self.statistics.counters.add('errors')
                    self._warn('error', f'frame failed: {type(exc).__name__}: {exc}')

    def _warm_up(self, height, width):
        """One inference at the camera's size (letterbox plan, allocations, CUDA graphs)."""
        started = time.perf_counter()
        settings = self._settings
        try:
            self.engine.infer(np.zeros((height, width, 3), np.uint8), tasks=settings.tasks,
                              steps=settings.steps or None, seed=settings.seed,
                              focal_correction=self._focal.mode,
                              intrinsics=self._focal.intrinsics(self._camera_info, width,
                                                                height))
        except Exception as exc:  # noqa: B902 - a real frame will report the problem
            self._log.warning(f'warm-up inference failed: {type(exc).__name__}: {exc}')
            return
        self._log.info(f'warmed up at the camera size {width}x{height} (from camera_info) '
                       f'in {time.perf_counter() - started:.2f} s')

    def _warn(self, kind, message):
        message = self._throttle.filter(kind, message)
        if message is not None:
            self._log.warning(message)

    def _reject(self, kind, message):
        self.statistics.counters.add('rejected')
        self.statistics.counters.add('rejected_' + kind)
        self._warn('rejected_' + kind, f'rejected a frame from {self._input_topic}: {message}')

    def _process(self, msg, received_ns):
        """Convert, infer and publish one frame; per-stage times go to the statistics."""
        clock = time.perf_counter
        started = clock()
        settings = self._settings
        try:
            if self._compressed:
                rgb = compressed_msg_to_rgb(msg, settings.max_pixels)
            else:
                rgb = image_msg_to_rgb(msg, settings.max_pixels)
        except ImageRejected as exc:
            self._reject(exc.kind, str(exc))
            return
        converted = clock()
        try:
            intrinsics = self._focal.intrinsics(self._camera_info, rgb.shape[1], rgb.shape[0])
            outputs = self.engine.infer(rgb, tasks=settings.tasks,
                                        steps=settings.steps or None, seed=settings.seed,
                                        intrinsics=intrinsics, focal_correction=self._focal.mode)
        except ValueError as exc:
            self._reject('engine', str(exc))
            return
        header = msg.header
        options = OutputOptions(
            publish_color=settings.publish_color, publish_points=settings.publish_points,
            points_stride=settings.points_stride, points_color=settings.points_color,
            depth_color_min=settings.depth_color_min, depth_color_max=settings.depth_color_max,
            camera_rectified=self._focal.rectified)
        publishers = self._output_publishers
        seconds = dict.fromkeys(KINDS, 0.0)
        mark = clock()
        # Each message is built when the loop asks for it, so its time is its kind's.
        for kind, topic, out in self._outputs.messages(
                outputs, header, rgb, self._camera_info, options,
                wanted=lambda name: publishers[name].get_subscription_count() > 0,
                on_problem=self._warn):
            publishers[topic].publish(out)
            now = clock()
            seconds[kind] += now - mark
            mark = now
        timing = self.engine.last_timing
        stage_ms = self.statistics.stage_ms
        model_ms = float(timing.get('model_ms', 0.0))
        stage_ms['convert'].add((converted - started) * 1000.0)
        stage_ms['engine_pre_post'].add(float(timing.get('preprocess_ms', 0.0)) +
                                        float(timing.get('postprocess_ms', 0.0)))
        for kind in KINDS:
            stage_ms['publish_' + kind].add(seconds[kind] * 1000.0)
        own = (converted - started) + sum(seconds.values())
        stage_ms['node_own'].add(own * 1000.0)
        self._record_frame(header, received_ns, started, model_ms)

    def _record_frame(self, header, received_ns, started, model_ms):
        now_ns = self.get_clock().now().nanoseconds
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        # A camera that leaves the stamp unset gets latency from reception instead.
        origin_ns = stamp_ns if stamp_ns > 0 else received_ns
        processing_ms = (time.perf_counter() - started) * 1000.0
        first = self.statistics.frame_out((now_ns - origin_ns) * MS_PER_NS, processing_ms,
                                          model_ms)
        if first:
            text = f'first output {self.statistics.first_output_s:.2f} s after activation'
            if self._startup_to_first_output_s is None:
                self._startup_to_first_output_s = seconds_since_program_start()
                text += f' ({self._startup_to_first_output_s:.2f} s after the program start)'
            self._log.info(text)

    # ------------------------------------------------------------------ monitoring
    def _publish_diagnostics(self):
        """Publish one DiagnosticStatus: lifecycle state, rates, latencies, the engine."""
        status = build_status(f'{self.get_name()}: perception', self.state, self.statistics,
                              engine=self.engine, settings=self._settings,
                              input_topic=self._input_topic, input_qos=self._input_qos_name,
                              startup_to_first_output_s=self._startup_to_first_output_s,
                              camera_info_problem=self._camera_check.last_problem)
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._diagnostics_publisher.publish(array)

    def _watchdog(self):
        """Warn when no frame arrives while active, naming topic, QoS and publishers."""
        if not self._active or self._settings is None:
            return
        text = self._input_watchdog.check(self, self.statistics,
                                          self._settings.watchdog_timeout,
                                          self._input_topic, self._input_qos,
                                          self._input_qos_name)
        if text is not None:
            self._log.warning(text)

    # ------------------------------------------------------------------ shutdown
    def stop(self):
        """Stop outputs and the inference thread, release the engine (idempotent).

        Waits up to STOP_TIMEOUT s for the frame in flight; when it does not finish the
        engine stays (the process is about to end: see ``inference_running``). True when
        the engine is released (or there was none).
        """
        if self._stopped is not None:     # the shutdown transition, then destroy_node
            return self._stopped
        deadline = time.monotonic() + STOP_TIMEOUT
        self._stopping.set()
        self._deactivate(STOP_TIMEOUT)
        self._slot.close()
        self._worker.join(max(0.0, deadline - time.monotonic()))
        self._stopped = not self._worker.is_alive() and self._release_engine(0.0)
        return self._stopped

    def inference_running(self):
        """True while the inference thread is still busy (after ``stop``)."""
        return self._worker.is_alive()

    def destroy_node(self):
        """Stop inference, release the engine, destroy the ROS entities."""
        self.stop()
        return super().destroy_node()


def _leave_now(code):
    # The frame in flight (a large model on a CPU can take seconds) runs in PyTorch threads
    # that cannot be interrupted; a normal interpreter exit would abort under them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(args=None):
    """Console entry point; returns the process exit code (0 on SIGINT / SIGTERM)."""
    signals = StopSignals()
    signals.install()
    node = None
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        node = PerceptionNode()
        if node.autostart and not node.run_autostart():
            # The failed transition logged its reason.
            node.destroy_node()
            rclpy.try_shutdown()
            return 1
        signals.interrupt_startup = False
    except KeyboardInterrupt:
        _leave_now(0)
    except rclpy.exceptions.ParameterException as exc:
        rclpy.logging.get_logger(NODE_NAME).error(f'invalid parameter: {exc}')
        rclpy.try_shutdown()
        return 1
    if signals.requested.is_set():      # a signal came as the start-up ended
        _leave_now(0)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        # The handlers only set the event; spin in short slices to see it.
        while not signals.requested.is_set():
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    # From here on the process only ends: later signals must not interrupt that.
    signals.ignore_further()
    node.get_logger().info('stopping')
    if node.state not in ('finalized', 'shuttingdown'):
        try:
            node.trigger_shutdown()
        except Exception as exc:  # noqa: B902 - stop anyway (destroy_node below)
            node.get_logger().warning(f'shutdown transition failed: {exc}')
    node.destroy_node()
    executor.shutdown(timeout_sec=1.0)
    rclpy.try_shutdown()
    if node.inference_running():
        _leave_now(0)
    return 0


if __name__ == '__main__':
    sys.exit(main())
