"""Statistics, /diagnostics status and the input watchdog of the perception node.

:class:`~mtdp_ros.ros.monitoring.FrameStatistics` (a camera stream's) collects what is
measured per frame. :func:`build_status` turns it, with the engine and the current
settings, into one DiagnosticStatus, and :class:`InputWatchdog` words the warning when
no frame arrives. Both are driven by steady-clock timers of the node, so they keep
running under ``use_sim_time`` without a /clock.
"""

import time

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rclpy.qos import ReliabilityPolicy

from mtdp_ros.ros.monitoring import (MS_PER_NS, STAGES, FrameStatistics,  # noqa: F401
                                     seconds_since_program_start)
from mtdp_ros.ros.qos import describe_qos, override_name


def _fmt(value):
    return 'nan' if value != value else f'{value:.2f}'


def build_status(name, state, statistics, engine=None, settings=None, input_topic='',
                 input_qos='', startup_to_first_output_s=None, camera_info_problem=None,
                 engine_state=None):
    """One DiagnosticStatus: lifecycle state, rates, latencies, counters and the engine.

    ``engine`` and ``settings`` are None while the node is unconfigured.
    ``camera_info_problem``: why the last camera_info was refused (None: it was used);
    reported as ``camera_info_problem`` (in every state: configure warms up at its size)
    and, while active, as a warning, since the cloud and depth/camera_info stop (or keep
    an older calibration) because of it. ``engine_state``: the camera stream's (its
    ``report()``, e.g. the warm start's last decision, is shown).
    """
    status = DiagnosticStatus()
    status.name = name
    values = {'lifecycle_state': state}
    if camera_info_problem:
        values['camera_info_problem'] = camera_info_problem
    if engine is None:
        status.level, status.message = DiagnosticStatus.OK, f'{state}: no engine'
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        return status
    status.hardware_id = engine.device
    idle = statistics.seconds_without_frames()
    if state != 'active':
        level, message = DiagnosticStatus.OK, f'{state}: not processing frames'
    elif statistics.first_output_s is None and statistics.last_frame_time is not None:
        level, message = DiagnosticStatus.OK, 'warming up (first frame)'
    elif idle > settings.watchdog_timeout:
        level, message = DiagnosticStatus.WARN, f'no input frame for {idle:.0f} s'
    elif camera_info_problem:
        level, message = DiagnosticStatus.WARN, f'camera_info refused: {camera_info_problem}'
    elif engine.random_weights:
        level, message = DiagnosticStatus.WARN, 'running with random weights'
    else:
        level, message = DiagnosticStatus.OK, 'running'
    status.level, status.message = level, message
    counters = statistics.counters.snapshot()
    values.update({
        'input_rate_hz': _fmt(statistics.input_rate.rate()),
        'output_rate_hz': _fmt(statistics.output_rate.rate()),
        'latency_p50_ms': _fmt(statistics.latency_ms.percentile(50)),
        'latency_p95_ms': _fmt(statistics.latency_ms.percentile(95)),
        'processing_p50_ms': _fmt(statistics.processing_ms.percentile(50)),
        'model_p50_ms': _fmt(statistics.model_ms.percentile(50)),
        'node_overhead_p50_ms': _fmt(statistics.overhead_ms.percentile(50)),
    })
    values.update({f'{stage}_p50_ms': _fmt(samples.percentile(50))
                   for stage, samples in statistics.stage_ms.items()})
    first = statistics.first_output_s
    values.update({
        'time_to_first_output_s': 'nan' if first is None else f'{first:.3f}',
        'startup_to_first_output_s': 'nan' if startup_to_first_output_s is None
        else f'{startup_to_first_output_s:.3f}',
        'frames_in': str(statistics.input_rate.total),
        'frames_out': str(statistics.output_rate.total),
        'dropped': str(counters.get('dropped', 0)),
        # Frames in flight when a transition stopped the outputs (their outputs dropped).
        'abandoned': str(counters.get('abandoned', 0)),
        # Frames replaced in the subscription's history before the callback saw them.
        'lost_before_callback': str(counters.get('lost_before_callback', 0)),
        'rejected': str(counters.get('rejected', 0)),
        'errors': str(counters.get('errors', 0)),
        'device': engine.device,
        'backend': engine.backend,
        'precision': engine.precision,
        'model': engine.model_name,
        'family': engine.config.family,
        'random_weights': str(engine.random_weights).lower(),
        'tasks': ','.join(settings.tasks),
        'input_topic': input_topic,
        'input_qos': input_qos,
    })
    if engine.diffusion:
        # What runs, which is not what was asked while ONNX Runtime exports a new count in
        # the background or after that export failed: both are said.
        requested = settings.steps or engine.config.trained_steps
        running = engine.running_steps(settings.steps or None)
        values['diffusion_steps'] = str(running)
        if running != requested:
            values['diffusion_steps_requested'] = str(requested)
            values['diffusion_steps_status'] = engine.steps_status(requested)
        # (Settings without warm-start fields, e.g. a caller's own: warm start off.)
        if getattr(settings, 'warm_start', False):
            values['warm_start'] = 'true'
            values['warm_strength'] = f'{settings.warm_strength:g}'
        else:
            values['warm_start'] = 'false'
    if engine_state is not None and hasattr(engine_state, 'report'):
        values.update(engine_state.report())
    if camera_info_problem:
        values['camera_info_problem'] = camera_info_problem
    for key in sorted(counters):
        if key.startswith('rejected_'):
            values[key] = str(counters[key])
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    return status


# Seconds the watchdog waits for the first frame from a matching publisher (a camera
# that is starting) before it warns; problems it can name (no publisher, a QoS mismatch)
# are reported after watchdog.timeout as always.
STARTUP_GRACE = 60.0


def build_engine_status(name, state, engine, batches, cameras, max_batch):
    """The engine's DiagnosticStatus of a node with several cameras.

    ``batches``: the node's :class:`~mtdp_ros.ros.batching.BatchStatistics` (batch-size
    histogram, model and engine milliseconds per batch); ``cameras``: their names.
    """
    status = DiagnosticStatus()
    status.name = name
    values = {'lifecycle_state': state, 'cameras': ','.join(cameras),
              'max_batch': str(max_batch)}
    if engine is None:
        status.level, status.message = DiagnosticStatus.OK, f'{state}: no engine'
    else:
        status.hardware_id = engine.device
        status.level, status.message = DiagnosticStatus.OK, (
            f'one engine, {len(cameras)} cameras')
        values.update({
            'batches': str(batches.batches()),
            'batch_size_histogram': batches.histogram(),
            'model_per_batch_p50_ms': _fmt(batches.model_ms.percentile(50)),
            'model_per_batch_p95_ms': _fmt(batches.model_ms.percentile(95)),
            'engine_per_batch_p50_ms': _fmt(batches.engine_ms.percentile(50)),
            # false: the engine runs a batch's frames one after another (a batch-1 graph).
            'batch_in_one_pass': str(engine.batches_in_one_pass).lower(),
            'device': engine.device, 'backend': engine.backend,
            'precision': engine.precision, 'model': engine.model_name,
        })
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    return status


class InputWatchdog:
    """Words a warning when no frame arrives: topic, QoS, and who publishes there."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._last_warning = None

    def check(self, node, statistics, timeout, topic, qos, qos_name=None):
        """The warning to log now, or None (at most one per ``max(timeout, 5)`` s).

        ``topic``: the fully qualified input topic; ``qos``: its subscription's profile
        (``qos_name``: unused, kept for callers that pass it).
        """
        idle = statistics.seconds_without_frames()
        if idle < timeout:
            self._last_warning = None
            return None
        now = self._clock()
        if self._last_warning is not None and now - self._last_warning < max(timeout, 5.0):
            return None
        publishers = node.get_publishers_info_by_topic(topic)
        mismatch = any(info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
                       for info in publishers) and qos.reliability == ReliabilityPolicy.RELIABLE
        if (publishers and not mismatch and statistics.last_frame_time is None
                and idle < max(timeout, STARTUP_GRACE)):
            # A matching publisher, no frame yet since activation: a camera starting up
            # (the demo renders its first scene for 20-40 s on a CPU) is not yet a fault.
            return None
        self._last_warning = now
        text = (f'no image received on {topic} for {idle:.0f} s (subscribed with QoS '
                f'{describe_qos(qos)}); ')
        if not publishers:
            return text + ('no publisher exists on this topic: check the topic name, '
                           'namespace and remapping (e.g. image:=/camera/image_raw)')
        best_effort = [info.node_name for info in publishers
                       if info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT]
        text += f'{len(publishers)} publisher(s) exist'
        if best_effort and qos.reliability == ReliabilityPolicy.RELIABLE:
            parameter = override_name(topic, 'subscription', 'reliability')
            return text + (f', but {", ".join(best_effort)} publish best_effort, which a '
                           f'reliable subscription never receives: set {parameter} to '
                           f'best_effort (launch argument input_reliability:=best_effort)')
        if statistics.last_frame_time is None:
            return text + f': none has sent a frame for {idle:.0f} s since activation; is the ' \
                'camera streaming?'
        return text + ': is the camera streaming?'

    def reset(self):
        """Forget the last warning (after a reactivation)."""
        self._last_warning = None
