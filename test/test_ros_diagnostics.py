"""The node's statistics, diagnostics status, input watchdog and runtime-log bridge (no DDS)."""

import logging
import math
import warnings
from types import SimpleNamespace

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.qos import ReliabilityPolicy

from mtdp_ros.ros.diagnostics import (STAGES, STARTUP_GRACE, FrameStatistics, InputWatchdog,
                                      build_status)
from mtdp_ros.ros.qos import qos_profile
from mtdp_ros.ros.runtime_log import RUNTIME_LOGGER, RuntimeLogBridge


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class RecordingLogger:
    """Stands in for a ROS logger: records (level, message)."""

    def __init__(self):
        self.records = []

    def info(self, message):
        self.records.append(('info', message))

    def warning(self, message):
        self.records.append(('warning', message))

    def error(self, message):
        self.records.append(('error', message))


def fake_engine(random_weights=False):
    config = SimpleNamespace(family='mlore', is_diffusion=False, trained_steps=None)
    return SimpleNamespace(device='cpu', backend='torch', precision='fp32', diffusion=False,
                           model_name='tiny', config=config, random_weights=random_weights)


def fake_settings():
    return SimpleNamespace(tasks=('semseg', 'depth'), steps=0, watchdog_timeout=3.0)


def values_of(status):
    return {kv.key: kv.value for kv in status.values}


def test_time_to_first_output_counts_from_activation_once():
    clock = FakeClock()
    statistics = FrameStatistics(clock=clock)
    assert statistics.frame_out(10.0, 20.0, 15.0) is False     # not active yet
    statistics.activated()
    clock.now += 2.5
    statistics.frame_in()
    assert statistics.frame_out(10.0, 20.0, 15.0) is True
    clock.now += 1.0
    assert statistics.frame_out(10.0, 20.0, 15.0) is False
    assert statistics.first_output_s == 2.5
    statistics.activated()                      # a new activation measures again
    assert statistics.first_output_s is None


def test_status_of_an_unconfigured_node_names_the_state_and_no_engine():
    status = build_status('node: perception', 'unconfigured', FrameStatistics())
    assert status.level == DiagnosticStatus.OK
    assert values_of(status) == {'lifecycle_state': 'unconfigured'}
    assert 'no engine' in status.message


def test_status_of_an_active_node_reports_every_key_and_the_level():
    clock = FakeClock()
    statistics = FrameStatistics(clock=clock)
    statistics.activated()
    statistics.frame_in()
    status = build_status('node: perception', 'active', statistics, fake_engine(),
                          fake_settings(), '/image', 'reliable')
    assert status.message == 'warming up (first frame)'
    clock.now += 0.5
    statistics.frame_out(5.0, 8.0, 6.0)
    status = build_status('node: perception', 'active', statistics, fake_engine(),
                          fake_settings(), '/image', 'reliable', startup_to_first_output_s=9.0)
    values = values_of(status)
    assert status.level == DiagnosticStatus.OK and status.message == 'running'
    assert values['lifecycle_state'] == 'active'
    assert float(values['time_to_first_output_s']) == 0.5
    assert float(values['startup_to_first_output_s']) == 9.0
    assert values['tasks'] == 'semseg,depth' and values['input_topic'] == '/image'
    for stage in STAGES:
        assert f'{stage}_p50_ms' in values
    clock.now += 10.0                   # silence beyond watchdog.timeout
    status = build_status('node: perception', 'active', statistics, fake_engine(),
                          fake_settings())
    assert status.level == DiagnosticStatus.WARN and 'no input frame' in status.message
    inactive = build_status('node: perception', 'inactive', statistics, fake_engine(),
                            fake_settings())
    assert inactive.level == DiagnosticStatus.OK and inactive.message.startswith('inactive')
    # No output yet: 'nan', not a number that looks measured.
    fresh = build_status('n', 'active', FrameStatistics(), fake_engine(), fake_settings())
    assert math.isnan(float(values_of(fresh)['time_to_first_output_s']))


def test_watchdog_names_the_qos_mismatch_and_throttles():
    clock = FakeClock()
    statistics = FrameStatistics(clock=clock)
    statistics.activated()
    publisher = SimpleNamespace(node_name='camera',
                                qos_profile=SimpleNamespace(
                                    reliability=ReliabilityPolicy.BEST_EFFORT))
    node = SimpleNamespace(get_publishers_info_by_topic=lambda topic: [publisher])
    watchdog = InputWatchdog(clock=clock)
    qos = qos_profile('reliable', 5)
    assert watchdog.check(node, statistics, 3.0, '/image', qos, 'reliable') is None
    clock.now += 4.0
    text = watchdog.check(node, statistics, 3.0, '/image', qos, 'reliable')
    assert 'no image received on /image for 4 s' in text
    assert 'camera publish best_effort' in text
    assert 'set qos_overrides./image.subscription.reliability to best_effort' in text
    assert 'input_reliability:=best_effort' in text
    clock.now += 1.0
    assert watchdog.check(node, statistics, 3.0, '/image', qos, 'reliable') is None
    clock.now += 5.0
    assert watchdog.check(node, statistics, 3.0, '/image', qos, 'reliable') is not None


def test_watchdog_gives_a_starting_camera_time_before_its_first_frame():
    # A matching publisher that has not sent a frame yet (the demo camera renders its
    # first scene for 20-40 s): no "is the camera streaming?" during start-up.
    clock = FakeClock()
    statistics = FrameStatistics(clock=clock)
    statistics.activated()
    camera = SimpleNamespace(node_name='camera', qos_profile=SimpleNamespace(
        reliability=ReliabilityPolicy.RELIABLE))
    node = SimpleNamespace(get_publishers_info_by_topic=lambda topic: [camera])
    watchdog = InputWatchdog(clock=clock)
    qos = qos_profile('reliable', 5)
    warnings = []
    for _ in range(int(STARTUP_GRACE) - 1):
        clock.now += 1.0
        warnings.append(watchdog.check(node, statistics, 3.0, '/image', qos))
    assert warnings == [None] * len(warnings)
    clock.now += 1.0
    text = watchdog.check(node, statistics, 3.0, '/image', qos)
    assert text.endswith(f'none has sent a frame for {STARTUP_GRACE:.0f} s since activation; '
                         'is the camera streaming?')
    # Once frames came, silence is reported after the timeout as before.
    statistics.frame_in()
    clock.now += 6.0            # past the timeout and the 5 s between two warnings
    assert watchdog.check(node, statistics, 3.0, '/image', qos).endswith(
        '1 publisher(s) exist: is the camera streaming?')


def test_runtime_log_bridge_forwards_records_and_warnings_once_until_detached():
    logger = RecordingLogger()
    bridge = RuntimeLogBridge(logger)
    configured = logging.getLogger(RUNTIME_LOGGER)
    before = (configured.propagate, configured.level, list(configured.handlers))
    bridge.attach()
    bridge.attach()                             # idempotent: one handler
    runtime = logging.getLogger(RUNTIME_LOGGER + '.engine')
    # As the runtime's own child loggers: `launch`, imported by other tests of this process
    # (colcon test), makes every later logger non-propagating.
    runtime.propagate = True
    try:
        with bridge.forwarding_warnings() as said:
            runtime.warning('CUDA is not available')
            warnings.warn('CUDA is not available')      # the same text: said once
            warnings.warn('weights are random')
        assert said == {'CUDA is not available', 'weights are random'}
        assert logger.records == [('warning', 'CUDA is not available'),
                                  ('warning', 'weights are random')]
        runtime.error('broken')
        assert logger.records[-1] == ('error', 'broken')
    finally:
        bridge.detach()
    runtime.warning('after detach')
    assert ('warning', 'after detach') not in logger.records
    # The process's own logging configuration is back (records reach the root again).
    assert (configured.propagate, configured.level, list(configured.handlers)) == before


def test_diffusion_steps_report_what_runs_not_what_was_asked():
    # ONNX Runtime exporting 2 steps in the background: 1 step keeps running.
    config = SimpleNamespace(family='taskdiffusion', is_diffusion=True, trained_steps=3)
    engine = SimpleNamespace(device='cpu', backend='onnxruntime', precision='fp32', diffusion=True,
                             model_name='tiny', config=config, random_weights=False,
                             running_steps=lambda steps: 1,
                             steps_status=lambda steps: 'preparing')
    settings = SimpleNamespace(tasks=('depth',), steps=2, watchdog_timeout=3.0)
    values = values_of(build_status('n', 'active', FrameStatistics(), engine, settings))
    assert values['diffusion_steps'] == '1'
    assert values['diffusion_steps_requested'] == '2'
    assert values['diffusion_steps_status'] == 'preparing'
    engine.running_steps = lambda steps: 2
    values = values_of(build_status('n', 'active', FrameStatistics(), engine, settings))
    assert values['diffusion_steps'] == '2' and 'diffusion_steps_requested' not in values
