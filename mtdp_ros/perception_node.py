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
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions

# First: sets GNU OpenMP's spin default before anything loads PyTorch.
from mtdp_ros.ros import openmp_spin  # noqa: F401, I100
from mtdp_ros.ros import (engine_setup, memory_return, node_monitoring, node_settings,
                          parameter_names, parameters)
from mtdp_ros.ros.batching import BatchScheduler, BatchStatistics, serve_batch
from mtdp_ros.ros.monitoring import STAGES, seconds_since_program_start
from mtdp_ros.ros.engine_handoff import EngineHandoff
from mtdp_ros.ros.engine_setup import StartupError
from mtdp_ros.ros.output_gate import OutputGate
from mtdp_ros.ros.outputs import OUTPUT_TOPICS
from mtdp_ros.ros.qos import deprecated_aliases, describe_qos
from mtdp_ros.ros.runtime_log import RuntimeLogBridge
from mtdp_ros.ros.stops import leave_now, StopSignals
from mtdp_ros.ros.stream import Sink
from mtdp_ros.ros.stream_endpoints import (camera_stream, configure_inputs, configure_outputs,
                                           PublisherSink, subscribe_images)

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


class PerceptionNode(parameter_names.NamesUndeclaredParameters, LifecycleNode):
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
        self.startup_to_first_output_s = None
        self._runtime_log = RuntimeLogBridge(self._log)
        # The inference thread's frame lock; an engine released during a frame is closed
        # by that thread when the frame ends.
        self._engines = EngineHandoff()
        # Closed by every transition that stops the outputs: a frame in flight then
        # publishes nothing more (see output_gate).
        self._gate = OutputGate()
        # Memory of a rare large frame goes back when frames are small again.
        self._large_frames = memory_return.LargeFrameMemory()
        self._stopping = threading.Event()
        self._stopped = None            # set by stop(): whether the engine was released
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        # Invalid camera names: one unnamed stream, and configure fails saying why.
        values = parameters.current_values(self)
        self.camera_names = [n for n in parameters.camera_names(values) if n]
        self.streams = [camera_stream(self, name) for name in self.camera_names or ['']]
        self._set_max_pixels(values['input.max_pixels'])
        self.max_batch = int(values['cameras.max_batch'])
        self._scheduler = BatchScheduler(self.streams, self.max_batch)
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
        parameter_names.warn_unmatched(self, sys.argv[1:] + list(kwargs.get('cli_args') or []))
        if not self.autostart:
            self._log.info('autostart is false: unconfigured, no engine; waiting for the '
                           'configure transition on ~/change_state')

    @property
    def state(self):
        """The lifecycle state's label ('unconfigured', 'inactive', 'active', ...)."""
        return self._state_machine.current_state[1]

    @property
    def settings(self):
        """The frame settings while configured (None otherwise)."""
        return self._settings

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
        configure_inputs(self, self.streams, values)
        self.engine = engine_setup.in_passing_thread(engine_setup.create_engine, values,
                                                     self._runtime_log, self._log)
        self._model_tasks = tuple(self.engine.tasks)
        self._is_diffusion = self.engine.diffusion
        engine_setup.check_model_values(values, self.engine)
        if values['tasks'] is None:
            self.set_parameters([Parameter('tasks', Parameter.Type.STRING_ARRAY,
                                           list(self._model_tasks))])
            values['tasks'] = list(self._model_tasks)
        self._settings = node_settings.settings_from(values, self._model_tasks)
        configure_outputs(self, self.streams, values, self._model_tasks, self._gate)
        self._warmed_size = engine_setup.in_passing_thread(
            engine_setup.warm_up_cameras, self.engine, self._settings, self.streams, self._log)

    def _deactivate(self):
        """Stop the outputs now; True when a frame is still in flight (it publishes nothing)."""
        self._active = False
        self._gate.close()
        for subscription in self._image_subscriptions:
            self.destroy_subscription(subscription)
        self._image_subscriptions = []
        for stream in self.streams:
            stream.reset('deactivate')
        return self._engines.busy()

    def _release_engine(self, timeout=TRANSITION_WAIT):
        """Release the engine; False when a frame still uses it (closed when it ends).

        The outputs are stopped already (the gate is closed), so the publishers go now.
        """
        engine, self.engine = self.engine, None
        held = self._engines.release(engine, timeout, self._drop_outputs)
        self._runtime_log.detach()
        return held

    def _drop_outputs(self):
        self._settings = None
        self._warmed_size = None
        for stream in self.streams:
            if isinstance(stream.sink, PublisherSink):
                stream.sink.destroy(self)
            stream.sink = Sink()
            stream.reset('cleanup')
            stream.release_outputs()

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
            with self._engines.frame_lock:
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
                        stream.frame_failed(exc)
                # Every camera's latest frame: one camera's large frames are no burst.
                if self._large_frames.after_frames(max(s.frame_pixels for s in self.streams)):
                    self._log.debug('frames are small again: freed heap memory given back')
            # Cleanup came during the frame: the engine is no one's now.
            self._engines.after_frame(self._log)

    def _process(self, batch, engine, settings):
        """The frames of ``batch`` through the engine (batching.serve_batch); first outputs."""
        for stream in serve_batch(engine, batch, settings, self.streams, self._gate,
                                  self.batch_statistics, self._log.info):
            text = f'first output {stream.statistics.first_output_s:.2f} s after activation'
            if stream.name:
                text = f'camera {stream.name}: {text}'
            if self.startup_to_first_output_s is None:
                self.startup_to_first_output_s = seconds_since_program_start()
                text += f' ({self.startup_to_first_output_s:.2f} s after the program start)'
            self._log.info(text)

    # ------------------------------------------------------------------ monitoring
    def _publish_diagnostics(self):
        """Publish the DiagnosticStatus of each camera (and of the engine, with several)."""
        self._diagnostics_publisher.publish(node_monitoring.diagnostic_array(self))

    def _watchdog(self):
        """Warn when no frame arrives while active (see node_monitoring.watch_streams)."""
        if self._active and self._settings is not None:
            node_monitoring.watch_streams(self, self._settings.watchdog_timeout)

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
