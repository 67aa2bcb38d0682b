"""The ``perception_node`` executable: camera images in, dense predictions out.

Subscribes to ``image`` (or ``image/compressed``) and ``camera_info``; publishes, with the
input's header and size, per enabled task: ``semantic/labels`` + ``semantic/color``,
``depth`` + ``depth/color``, ``normals`` + ``normals/color``, ``edges`` + ``edges/color``,
``human_parts/labels`` + ``human_parts/color``, ``saliency`` + ``saliency/color``, and the
point cloud ``points`` (models with depth only). README.md gives the full interface.

A managed (lifecycle) node: unconfigured -> configure (create the engine, warm it up at
the camera's size when camera_info is known) -> inactive -> activate (subscribe, publish)
-> active; deactivate stops the outputs, cleanup releases the engine, shutdown works from
any state. Parameter ``autostart`` (default true) configures and activates at start-up.

Threads: the executor thread stores the newest frame in a one-slot buffer (an older frame
still waiting there is dropped and counted) and serves parameters, transitions and timers;
one inference thread takes the newest frame, converts it, runs the engine, and publishes.
So a slow model never builds a backlog, and memory stays bounded at any input rate.

Everything of one camera (the slot, camera_info and focal correction, the output messages
and publishers, statistics, the per-frame pipeline) is a
:class:`~mtdp_ros.ros.stream.CameraStream` (``mtdp bag`` runs the same one); the node
keeps a list of them and owns the lifecycle, the parameters, the engine they share, the
inference thread and diagnostics.

Several cameras (parameter ``cameras``, e.g. ``[front,left]``): one stream per name, its
topics under ``<name>/``; the inference thread takes the newest waiting frame of every
camera (at most ``cameras.max_batch``, round-robin beyond) and runs them as one batch
through the one engine (:mod:`mtdp_ros.ros.batching`); /diagnostics has a status per
camera plus the engine's.

Transitions never wait long for a frame: deactivate closes the
:class:`~mtdp_ros.ros.output_gate.OutputGate` (nothing of the frame in flight is published
after it) and returns; cleanup waits up to TRANSITION_WAIT s, then leaves the engine's
release to the inference thread at the end of that frame. So parameters, diagnostics and
transitions keep being served while a frame takes seconds.

Stops: SIGINT and SIGTERM only set an event (later signals do nothing), the main thread
leaves the executor loop and shuts down once; see :mod:`mtdp_ros.ros.stops`.
"""

import functools
import gc
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.exceptions import ParameterNotDeclaredException
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions

from mtdp_ros.ros import (engine_setup, memory_return, node_settings, parameter_names,
                          parameters)
from mtdp_ros.ros.batching import BatchScheduler, BatchStatistics, run_batch
from mtdp_ros.ros.diagnostics import build_engine_status, build_status
from mtdp_ros.ros.monitoring import STAGES, seconds_since_program_start
from mtdp_ros.ros.engine_setup import StartupError
from mtdp_ros.ros.output_gate import OutputGate
from mtdp_ros.ros.outputs import OUTPUT_TOPICS
from mtdp_ros.ros.qos import deprecated_aliases, describe_qos, qos_profile
from mtdp_ros.ros.runtime_log import RuntimeLogBridge
from mtdp_ros.ros.stops import leave_now, StopSignals
from mtdp_ros.ros.stream import Sink
from mtdp_ros.ros.stream_endpoints import (PublisherSink, QoSOverrideError, camera_stream,
                                           input_qos, subscribe_images)

__all__ = ['NODE_NAME', 'OUTPUT_TOPICS', 'STAGES', 'PerceptionNode', 'StartupError', 'main']

NODE_NAME = 'mtdp_perception'
# Seconds the inference thread may take to finish its frame at shutdown.
STOP_TIMEOUT = 3.0
# Seconds cleanup waits for the frame in flight before leaving the engine's release to the
# inference thread (a large model on a CPU takes seconds per frame; the executor must not
# stall that long, and the engine must not be released under the frame).
TRANSITION_WAIT = 1.0
SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE
ERROR = TransitionCallbackReturn.ERROR


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

    Constructing it declares the parameters and creates only the diagnostics, the camera
    stream with its camera_info subscription, and the inference thread; the engine comes
    with configure. Everything of one camera lives in its
    :class:`~mtdp_ros.ros.stream.CameraStream` (``streams``: one per camera); the node keeps the
    lifecycle, the parameters, the shared engine, the inference thread and diagnostics.
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
        self._image_subscriptions = []
        self._active = False
        self._warmed_size = None        # 'WxH' of the warm-up at configure, if any
        self._startup_to_first_output_s = None
        self._runtime_log = RuntimeLogBridge(self._log)
        # Held by the inference thread for each frame: a transition that stops the outputs
        # or releases the engine takes it, so no frame is half-way through then.
        self._frame_lock = threading.Lock()
        # Closed by every transition that stops the outputs: a frame in flight then
        # publishes nothing more (see output_gate).
        self._gate = OutputGate()
        # An engine released by cleanup while a frame still used it: the inference thread
        # closes it when that frame ends.
        self._engine_to_close = None
        self._handoff = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = None            # set by stop(): whether the engine was released
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        # Invalid camera names: one unnamed stream, and configure fails saying why.
        values = parameters.current_values(self)
        self.camera_names = [n for n in parameters.camera_names(values) if n]
        self.streams = [camera_stream(self, name) for name in self.camera_names or ['']]
        self._set_max_pixels(values['input.max_pixels'])
        self._max_batch = int(values['cameras.max_batch'])
        self._scheduler = BatchScheduler(self.streams, self._max_batch)
        self.batch_statistics = BatchStatistics()
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
        # Last: every parameter (per-camera ones included) is declared by now.
        self._warn_unmatched_parameters(sys.argv[1:] + list(kwargs.get('cli_args') or []))
        if not self.autostart:
            self._log.info('autostart is false: unconfigured, no engine; waiting for the '
                           'configure transition on ~/change_state')

    @property
    def state(self):
        """The lifecycle state's label ('unconfigured', 'inactive', 'active', ...)."""
        return self._state_machine.current_state[1]

    @property
    def statistics(self):
        """The (first) camera stream's FrameStatistics."""
        return self.streams[0].statistics

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
        for stream in self.streams:
            stream.activated()
        self._active = True
        self._gate.open()
        for stream in self.streams:
            subscription = subscribe_images(self, stream, stream.input_qos)
            self._image_subscriptions.append(subscription)
            self._log.info(f'waiting for images on {stream.input_topic} '
                           f'({describe_qos(subscription.qos_profile)})')
        if self._warmed_size is None:
            self._log.info('ready (active): the first frame warms the engine up (no '
                           'camera_info at configure)')
        else:
            self._log.info(f'ready (active): warmed up at {self._warmed_size}; a frame of '
                           f'another size warms the engine up again')
        return SUCCESS

    @_callback_returning(ERROR)
    def on_deactivate(self, state):
        """Unsubscribe and close the output gate: no outputs after this (no waiting)."""
        busy = self._deactivate()
        self._log.info('deactivated (inactive): no outputs' +
                       ('; the frame in flight runs to its end, its outputs dropped'
                        if busy else ''))
        return SUCCESS

    @_callback_returning(ERROR)
    def on_cleanup(self, state):
        """Release the engine and its (GPU) memory, destroy the output publishers."""
        if self._release_engine(TRANSITION_WAIT):
            self._log.info('cleaned up (unconfigured): engine released')
        else:
            self._log.info('cleaned up (unconfigured): the engine is released when the '
                           'frame in flight ends')
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
        self._deactivate()
        self._release_engine(TRANSITION_WAIT)
        return SUCCESS

    def _configure(self):
        values = parameters.current_values(self)
        problems = parameters.validate_startup(values)
        if problems:
            raise StartupError('invalid parameters: ' + '; '.join(problems))
        for warning in deprecated_aliases(values):
            self._log.warning(warning)
        # QoS (qos_overrides.* over the defaults) is checked before the model loads.
        input_default = qos_profile(values['input.qos'], values['input.qos_depth'])
        try:
            for stream in self.streams:
                stream.compressed = values['input.transport'] == 'compressed'
                stream.input_topic = self.resolve_topic_name(stream.image_topic)
                stream.input_qos = input_qos(self, stream.input_topic, input_default)
                input_qos(self, stream.info_topic, input_default)
        except QoSOverrideError as exc:
            raise StartupError(f'invalid QoS override: {exc}') from None
        self.engine = engine_setup.create_engine(values, self._runtime_log, self._log)
        self._model_tasks = tuple(self.engine.tasks)
        self._is_diffusion = self.engine.diffusion
        engine_setup.check_model_values(values, self.engine)
        if values['tasks'] is None:
            self.set_parameters([Parameter('tasks', Parameter.Type.STRING_ARRAY,
                                           list(self._model_tasks))])
            values['tasks'] = list(self._model_tasks)
        self._settings = node_settings.settings_from(values, self._model_tasks)
        output_qos = qos_profile(values['output.qos'], values['output.qos_depth'])
        try:
            for stream in self.streams:
                stream.sink = PublisherSink(self, stream, self._model_tasks, output_qos,
                                            gate=self._gate)
        except QoSOverrideError as exc:
            raise StartupError(f'invalid QoS override: {exc}') from None
        warmed = []
        for stream in self.streams:
            info = stream.camera_info
            if info is None or info.width <= 0 or info.height <= 0:
                continue
            # One warm-up per camera geometry (size and focal plan: canonical letterboxes
            # differ by focal length).
            geometry = (info.height, info.width, tuple(info.k))
            if geometry in warmed:
                continue
            warmed.append(geometry)
            if info.width * info.height > self._settings.max_pixels:
                # input.max_pixels was lowered after this camera_info came.
                self._log.warning(f'no warm-up at the camera size {info.width}x{info.height}: '
                                  f'more than input.max_pixels ({self._settings.max_pixels})')
                continue
            if engine_setup.warm_up(self.engine, self._settings, info.height, info.width,
                                    self._log, stream.focal, info):
                size = f'{info.width}x{info.height}'
                self._warmed_size = size if self._warmed_size is None else \
                    f'{self._warmed_size}, {size}'

    def _deactivate(self):
        """Stop the outputs now; True when a frame is still in flight (it publishes nothing)."""
        self._active = False
        self._gate.close()
        for subscription in self._image_subscriptions:
            self.destroy_subscription(subscription)
        self._image_subscriptions = []
        for stream in self.streams:
            stream.reset('deactivate')
        return self._frame_lock.locked()

    def _release_engine(self, timeout=TRANSITION_WAIT):
        """Release the engine; False when a frame still uses it (closed when it ends).

        The outputs are stopped already (the gate is closed), so the publishers go now.
        """
        held = self._frame_lock.acquire(timeout=timeout)
        try:
            engine, self.engine = self.engine, None
            self._settings = None
            for stream in self.streams:
                if isinstance(stream.sink, PublisherSink):
                    stream.sink.destroy(self)
                stream.sink = Sink()
                stream.reset('cleanup')
                stream.release_outputs()
            self._warmed_size = None
            if not held:
                with self._handoff:
                    self._engine_to_close = engine
                # The frame may have ended meanwhile, before it could see the handoff.
                held = self._frame_lock.acquire(blocking=False)
                engine = self._take_engine_to_close() if held else None
            _close(engine)
        finally:
            if held:
                self._frame_lock.release()
        self._runtime_log.detach()
        return held

    def _take_engine_to_close(self):
        with self._handoff:
            engine, self._engine_to_close = self._engine_to_close, None
            return engine

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, changed):
        """Reject invalid values of the dynamic parameters with a reason."""
        for parameter in changed:
            reason = parameters.check_unconfigured_only(parameter.name, self.state)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        current = {name: self.get_parameter(name).value
                   for name in ('depth.color_min', 'depth.color_max')}
        reason = node_settings.check_changes(changed, current, self.engine, self._model_tasks)
        return SetParametersResult(successful=not reason, reason=reason or '')

    def _warn_unmatched_parameters(self, args):
        """Warn about overrides no parameter takes and params files for other nodes."""
        declared = self._parameters.keys()
        unknown = parameter_names.unknown_names(self._parameter_overrides, declared)
        if unknown:
            self._log.warning('ignored: no parameter of this node is named ' +
                              parameter_names.describe_unknown(unknown, declared))
        for path in parameter_names.params_files(args):
            problem = parameter_names.params_file_problem(
                path, self.get_fully_qualified_name())
            if problem:
                self._log.warning(problem)

    def _check_undeclared_parameters(self, parameter_list):
        # rclpy's own lists the names as [] (a generator consumed by any()).
        unknown = [p.name for p in parameter_list if p.name not in self._parameters]
        if unknown:
            raise ParameterNotDeclaredException(
                parameter_names.describe_unknown(unknown, self._parameters.keys()))
        super()._check_undeclared_parameters(parameter_list)

    def _set_max_pixels(self, max_pixels):
        for stream in self.streams:
            stream.max_pixels = int(max_pixels)

    def _after_set_parameters(self, changed):
        for parameter in changed:
            if parameter.name == 'input.max_pixels':
                self._set_max_pixels(parameter.value)
        if self._settings is None:     # unconfigured: configure reads the parameters
            return
        self._settings, updates = node_settings.apply_changes(
            self._settings, changed, self.engine, self._model_tasks, self._is_diffusion)
        if updates:
            self._log.info('now: ' + ', '.join(f'{k}={v}' for k, v in updates.items()))

    # ------------------------------------------------------------------ inference thread
    def _run_inference(self):
        while not self._stopping.is_set():
            batch = self._scheduler.take(timeout=0.5)
            if not batch:
                continue
            with self._frame_lock:
                engine, settings = self.engine, self._settings
                if not self._active or engine is None or self._stopping.is_set():
                    continue
                self._gate.begin_frame()
                try:
                    self._process(batch, engine, settings)
                except Exception as exc:  # noqa: B902 - the node must keep serving
                    if self._stopping.is_set() or not self.context.ok():
                        return
                    for stream, _ in batch:
                        self._frame_failed(stream, exc)
            # Cleanup came during the frame: the engine is no one's now.
            engine = self._take_engine_to_close()
            if engine is not None:
                _close(engine)
                self._log.info('engine released (the frame in flight at cleanup ended)')

    def _frame_failed(self, stream, exc):
        stream.statistics.counters.add('errors')
        stream.warn('error', f'frame from {stream.input_topic} failed: '
                             f'{type(exc).__name__}: {exc}')

    def _process(self, batch, engine, settings):
        """The frames of ``batch`` ([(stream, item)]) through the engine; logs first outputs.

        Their outputs go out only while the gate lets these frames publish: a transition
        during them drops the rest (counted as ``abandoned``).
        """
        entries = [(stream, settings.for_frames(stream.focal.rectified,
                                                self.streams.index(stream)), *item)
                   for stream, item in batch]
        results = run_batch(engine, entries, on_error=self._frame_failed,
                            statistics=self.batch_statistics)
        if not self._gate.frame_allowed():
            # A transition came during the frames: the gate refused their outputs.
            for stream, _ in batch:
                stream.statistics.counters.add('abandoned')
            self._log.info(f'the outputs of {len(batch)} frame(s) in flight when the outputs '
                           f'stopped were dropped')
            return
        for stream, result in results:
            if result.first:
                self._first_output(stream)

    def _first_output(self, stream):
        text = f'first output {stream.statistics.first_output_s:.2f} s after activation'
        if stream.name:
            text = f'camera {stream.name}: {text}'
        if self._startup_to_first_output_s is None:
            self._startup_to_first_output_s = seconds_since_program_start()
            text += f' ({self._startup_to_first_output_s:.2f} s after the program start)'
        self._log.info(text)

    # ------------------------------------------------------------------ monitoring
    def _publish_diagnostics(self):
        """Publish the DiagnosticStatus of each camera (and of the engine, with several)."""
        # With the namespace: two nodes named alike in two namespaces must not collide.
        node_name = self.get_fully_qualified_name().lstrip('/')
        statuses = []
        for stream in self.streams:
            name = f'{node_name}: perception'
            if stream.name:
                name += f' {stream.name}'
            statuses.append(build_status(
                name, self.state, stream.statistics, engine=self.engine,
                settings=self._settings, input_topic=stream.input_topic,
                input_qos=describe_qos(stream.input_qos) if stream.input_qos else '',
                startup_to_first_output_s=self._startup_to_first_output_s,
                camera_info_problem=stream.camera_info_problem,
                engine_state=stream.engine_state))
        if self.camera_names:
            statuses.append(build_engine_status(
                f'{node_name}: engine', self.state, self.engine,
                self.batch_statistics, self.camera_names, self._max_batch))
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = statuses
        self._diagnostics_publisher.publish(array)

    def _watchdog(self):
        """Warn when no frame arrives while active; count losses only with one publisher."""
        if not self._active or self._settings is None:
            return
        for stream in self.streams:
            if stream.sequence_gaps is not None:
                stream.sequence_gaps.publishers_changed(self.count_publishers(stream.input_topic))
            text = stream.watchdog.check(self, stream.statistics,
                                         self._settings.watchdog_timeout, stream.input_topic,
                                         stream.input_qos)
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
        self._deactivate()
        for stream in self.streams:
            stream.slot.close()
        self._scheduler.close()
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


def _close(engine):
    """Close ``engine`` (None: nothing) and return its memory."""
    if engine is not None:
        engine.close()
        del engine
        gc.collect()


def main(args=None):
    """Console entry point; returns the process exit code (0 on SIGINT / SIGTERM)."""
    signals = StopSignals()
    signals.install()
    node = None
    # Before the middleware starts: memory of a rare large frame goes back afterwards.
    returned = memory_return.prepare()
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        node = PerceptionNode()
        if returned:
            node.get_logger().info(f'large-frame memory given back: {returned}')
        if node.autostart and not node.run_autostart():
            # The failed transition logged its reason.
            node.destroy_node()
            rclpy.try_shutdown()
            return 1
        signals.interrupt_startup = False
    except KeyboardInterrupt:
        leave_now(0)
    except rclpy.exceptions.ParameterException as exc:
        rclpy.logging.get_logger(NODE_NAME).error(f'invalid parameter: {exc}')
        rclpy.try_shutdown()
        return 1
    if signals.requested.is_set():      # a signal came as the start-up ended
        leave_now(0)
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
        leave_now(0)
    return 0


if __name__ == '__main__':
    sys.exit(main())
