"""Warm start through the camera stream, its resets, and its parameters (no ROS graph).

The node and ``mtdp bag`` both run frames through :class:`CameraStream`; with warm start
on, its ``engine_state`` (a :class:`WarmStartRunner`) decides warm or cold per frame. Here
a tiny TaskDiffusion (random weights, CPU) runs for real; every cold frame must equal the
plain cold call bit for bit, every warm frame differ from it.
"""

import numpy as np
import pytest
from rclpy.parameter import Parameter

from mtdp_ros.ros import engine_setup, node_settings, parameters
from mtdp_ros.ros.image_output import rgb_to_image_msg
from mtdp_ros.ros.stream import CameraStream, FrameSettings
from mtdp_ros.runtime import create_engine
from mtdp_ros.runtime.warm_runner import WarmStartRunner, WarmStartSettings

from ros_harness import pattern_image, TINY_MLORE, TINY_TASKDIFFUSION

TASKS = ('semseg', 'normals', 'edge')
WARM = WarmStartSettings(True, strength=0.05, max_gap_s=0.5, cut_threshold=0.5)


@pytest.fixture(scope='module')
def engine():
    engine = create_engine(TINY_TASKDIFFUSION, device='cpu')
    yield engine
    engine.close()


def frame(rgb, seconds):
    msg = rgb_to_image_msg(rgb, 'rgb8')
    msg.header.stamp.sec = int(seconds)
    msg.header.stamp.nanosec = int(round((seconds - int(seconds)) * 1e9))
    return msg


def settings(warm=WARM, tasks=TASKS, steps=1):
    return FrameSettings(tasks=tasks, steps=steps, seed=0, warm=warm)


def cold(engine, rgb, tasks=TASKS, steps=1):
    """The plain cold call (what the node ran before warm start existed)."""
    return engine.infer(rgb, tasks=tasks, steps=steps, seed=0)


def same(a, b):
    return set(a) == set(b) and all(np.array_equal(a[t], b[t], equal_nan=True) for t in a)


def last(stream):
    report = stream.engine_state.report()
    return report['warm_start_last'], report['warm_start_last_cold_reason']


def test_warm_start_off_is_the_plain_call_and_keeps_no_state(engine):
    stream = CameraStream()
    rgb = pattern_image(60, 80, seed=1)
    for second in (10.0, 10.1):
        result = stream.process(engine, frame(rgb, second), settings(WarmStartSettings()))
        assert same(result.outputs, cold(engine, rgb))
    assert stream.engine_state is None


def test_warm_frames_differ_from_cold_and_switching_off_restores_cold(engine):
    stream = CameraStream()
    rgb = pattern_image(60, 80, seed=1)
    want = cold(engine, rgb)
    first = stream.process(engine, frame(rgb, 10.0), settings()).outputs
    assert same(first, want)                    # no previous map: the cold start exactly
    assert last(stream) == ('cold', 'no previous map (start)')
    second = stream.process(engine, frame(rgb, 10.1), settings()).outputs
    assert last(stream)[0] == 'warm'
    assert not same(second, want)
    # The map is the previous frame's: a warm frame from it is reproducible.
    third = stream.process(engine, frame(rgb, 10.2), settings()).outputs
    assert not same(third, want)
    off = stream.process(engine, frame(rgb, 10.3), settings(WarmStartSettings())).outputs
    assert same(off, want)
    assert last(stream) == ('cold', 'warm start off')
    assert not stream.engine_state.state.has_state
    again = stream.process(engine, frame(rgb, 10.4), settings()).outputs
    assert same(again, want)
    assert last(stream) == ('cold', 'no previous map (warm start off)')
    report = stream.engine_state.report()
    assert report['warm_start_warm_frames'] == '2' and report['warm_start_cold_frames'] == '3'


def _warm_stream(engine, rgb):
    stream = CameraStream()
    for second in (10.0, 10.1):
        stream.process(engine, frame(rgb, second), settings())
    assert last(stream)[0] == 'warm'
    return stream


@pytest.mark.parametrize('change, reason', [
    ('gap', 'time gap 0.900 s > max_gap_s 0.5 s'),
    ('backwards', 'time went backwards'),
    ('cut', 'scene cut: image change'),
    ('tasks', "run changed: ('semseg', 'normals', 'edge') -> ('normals', 'edge')"),
    ('steps', 'run changed: 1 -> 2'),
    ('size', 'run changed: (60, 80) -> (48, 64)'),
    ('deactivate', 'no previous map (deactivate)'),
    ('cleanup', 'no previous map (cleanup)'),
])
def test_each_reset_condition_starts_cold(engine, change, reason):
    rgb = pattern_image(60, 80, seed=1)
    stream = _warm_stream(engine, rgb)
    second, image, tasks, steps = 11.0 if change == 'gap' else 10.2, rgb, TASKS, 1
    if change == 'backwards':
        second = 9.0
    elif change == 'cut':
        image = pattern_image(60, 80, seed=1)[::-1, ::-1].copy()
    elif change == 'tasks':
        tasks = ('normals', 'edge')
    elif change == 'steps':
        steps = 2
    elif change == 'size':
        image = pattern_image(48, 64, seed=1)
    elif change in ('deactivate', 'cleanup'):
        stream.reset(change)
    run = settings(tasks=tasks, steps=steps)
    outputs = stream.process(engine, frame(image, second), run).outputs
    assert last(stream)[0] == 'cold'
    assert reason in last(stream)[1]
    assert same(outputs, cold(engine, image, tasks, steps))
    # ... and the frame after starts warm again from the new map.
    stream.process(engine, frame(image, second + 0.1), run)
    assert last(stream)[0] == 'warm'


def test_small_motion_stays_warm_and_thresholds_apply_per_frame(engine):
    rgb = pattern_image(60, 80, seed=1)
    stream = _warm_stream(engine, rgb)
    shifted = np.roll(rgb, 1, axis=1)
    stream.process(engine, frame(shifted, 10.2), settings())
    assert last(stream)[0] == 'warm'
    change = float(stream.engine_state.report()['warm_start_image_change'])
    assert 0 < change < 0.5
    strict = WarmStartSettings(True, 0.05, max_gap_s=0.05, cut_threshold=0.5)
    stream.process(engine, frame(rgb, 10.3), settings(strict))
    assert last(stream) == ('cold', 'time gap 0.100 s > max_gap_s 0.05 s')
    tight = WarmStartSettings(True, 0.05, max_gap_s=0.5, cut_threshold=change / 2)
    stream.process(engine, frame(shifted, 10.4), settings(tight))
    assert 'scene cut' in last(stream)[1]


class ResetDuringInference:
    """The real engine, but the stream is reset (deactivate) while a frame runs."""

    def __init__(self, engine, stream):
        self._engine, self._stream = engine, stream

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def infer(self, *args, **kwargs):
        self._stream.reset('deactivate')
        return self._engine.infer(*args, **kwargs)


def test_a_reset_during_a_frame_drops_that_frames_map(engine):
    rgb = pattern_image(60, 80, seed=1)
    stream = _warm_stream(engine, rgb)
    stream.process(ResetDuringInference(engine, stream), frame(rgb, 10.2), settings())
    assert not stream.engine_state.state.has_state
    stream.process(engine, frame(rgb, 10.3), settings())
    assert last(stream) == ('cold', 'no previous map (deactivate)')


def test_frames_without_a_stamp_use_their_arrival_time(engine):
    rgb = pattern_image(60, 80, seed=1)
    stream = CameraStream()
    msg = frame(rgb, 0.0)
    stream.process(engine, msg, settings(), received_ns=10_000_000_000)
    stream.process(engine, msg, settings(), received_ns=10_100_000_000)
    assert last(stream)[0] == 'warm'
    stream.process(engine, msg, settings(), received_ns=12_000_000_000)
    assert 'time gap 1.900 s' in last(stream)[1]


def test_settings_are_validated_and_the_runner_reports():
    with pytest.raises(ValueError, match='strength'):
        WarmStartSettings.checked(True, strength=0.0)
    with pytest.raises(ValueError, match='max_gap_s'):
        WarmStartSettings.checked(True, max_gap_s=-1)
    with pytest.raises(ValueError, match='cut_threshold'):
        WarmStartSettings.checked(True, cut_threshold=float('nan'))
    with pytest.raises(ValueError, match='true or false'):
        WarmStartSettings.checked('yes')
    checked = WarmStartSettings.checked(True, 1.0, 2.0, 0.3)
    assert checked == WarmStartSettings(True, 1.0, 2.0, 0.3)
    assert WarmStartRunner().report()['warm_start_last'] == 'none'


# ----------------------------------------------------------------------------- parameters
def test_parameter_ranges_exclude_zero_and_are_declared_dynamic():
    for name, bad in (('diffusion.warm_strength', 0.0), ('diffusion.warm_strength', 1.5),
                      ('diffusion.warm_max_gap_s', 0.0), ('diffusion.warm_cut_threshold', 0.0),
                      ('diffusion.warm_strength', float('nan'))):
        spec = parameters.SPEC_BY_NAME[name]
        assert spec.dynamic
        assert name in parameters.check_value(spec, bad)
    for name, good in (('diffusion.warm_strength', 1.0), ('diffusion.warm_strength', 1e-4),
                       ('diffusion.warm_max_gap_s', 3600.0),
                       ('diffusion.warm_cut_threshold', 2.0)):
        assert parameters.check_value(parameters.SPEC_BY_NAME[name], good) is None
    assert parameters.SPEC_BY_NAME['diffusion.warm_start'].default is False
    problems = parameters.validate_startup({'diffusion.warm_strength': 0.0})
    assert problems and 'diffusion.warm_strength must be above 0.0' in problems[0]


def _changes(**values):
    return [Parameter(name.replace('__', '.'), value=value) for name, value in values.items()]


CURRENT = {'depth.color_min': 0.0, 'depth.color_max': 0.0}


def test_warm_start_is_refused_for_mlore_and_onnxruntime(engine, tmp_path):
    mlore = create_engine(TINY_MLORE, device='cpu')
    reason = node_settings.check_changes(_changes(diffusion__warm_start=True), CURRENT, mlore,
                                         mlore.tasks)
    assert reason.startswith('diffusion.warm_start: warm start applies to TaskDiffusion')
    assert node_settings.check_changes(_changes(diffusion__warm_start=False), CURRENT, mlore,
                                       mlore.tasks) is None
    ort = create_engine(TINY_TASKDIFFUSION, backend='onnxruntime', device='cpu', steps=1,
                        cache_dir=str(tmp_path))
    reason = node_settings.check_changes(_changes(diffusion__warm_start=True), CURRENT, ort,
                                         ort.tasks)
    assert 'the onnxruntime engine serves cold starts only' in reason
    # At configure: a start-up error naming the parameter.
    values = {'tasks': None, 'diffusion.steps': 1, 'diffusion.warm_start': True}
    with pytest.raises(engine_setup.StartupError, match='diffusion.warm_start: the onnx'):
        engine_setup.check_model_values(values, ort)
    assert node_settings.check_changes(_changes(diffusion__warm_start=True), CURRENT, engine,
                                       engine.tasks) is None
    # Unconfigured (no engine yet): checked against the model at configure.
    assert node_settings.check_changes(_changes(diffusion__warm_start=True), CURRENT, None,
                                       ()) is None


def test_changes_reach_the_frame_settings(engine):
    values = {spec.name: spec.default for spec in parameters.SPECS}
    values['tasks'] = list(TASKS)
    current = node_settings.settings_from(values, engine.tasks)
    assert current.for_frames(False).warm == WarmStartSettings()
    changed = _changes(diffusion__warm_start=True, diffusion__warm_strength=0.2,
                       diffusion__warm_max_gap_s=2, diffusion__warm_cut_threshold=0.7)
    assert node_settings.check_changes(changed, CURRENT, engine, engine.tasks) is None
    updated, updates = node_settings.apply_changes(current, changed, engine, engine.tasks,
                                                   True)
    assert updated.for_frames(False).warm == WarmStartSettings(True, 0.2, 2.0, 0.7)
    assert set(updates) == {'warm_start', 'warm_strength', 'warm_max_gap_s',
                            'warm_cut_threshold'}


def test_image_signature_is_the_normalised_block_mean_of_the_grey_image():
    """The per-frame scene-cut test sums in integers (no float copy of the frame)."""
    from mtdp_ros.runtime.warm_start import image_signature
    rng = np.random.default_rng(3)
    for shape, dtype in (((487, 650, 3), np.uint8), ((40, 33), np.uint8),
                         ((64, 96, 3), np.float32), ((50, 70, 3), np.uint16)):
        image = rng.uniform(0, 250, shape).astype(dtype)
        grey = image.astype(np.float64)
        grey = grey.mean(axis=2) if grey.ndim == 3 else grey
        rows, cols = shape[0] // 16, shape[1] // 16
        thumb = grey[:rows * 16, :cols * 16].reshape(16, rows, 16, cols).mean(axis=(1, 3))
        thumb = (thumb - thumb.mean()) / thumb.std()
        got = image_signature(image)
        assert got.dtype == np.float32 and got.shape == (16, 16)
        np.testing.assert_allclose(got, thumb, atol=1e-5)


def test_warm_frames_use_the_cameras_focal_correction():
    """A warm-started camera's depth is corrected by its own mode, not the engine's default."""
    from mtdp_ros.ros.camera import FocalCorrection
    from ros_harness import camera_info
    engine = create_engine({**TINY_TASKDIFFUSION, 'train_focal_px': 60.0}, device='cpu')
    assert engine.focal_correction != 'canonical'
    stream = CameraStream(focal=FocalCorrection('canonical', False, 'camera_info',
                                                lambda text: None))
    # A zoomed camera (fx 3x the training focal length): canonical letterboxes it smaller.
    stream.on_camera_info(camera_info(80, 60, fx=180.0))
    rgb = pattern_image(60, 80, seed=1)
    intrinsics = (180.0, 180.0, 39.5, 29.5)
    outputs = stream.process(engine, frame(rgb, 10.0), settings(tasks=('depth',))).outputs
    want = engine.infer(rgb, tasks=['depth'], steps=1, seed=0, intrinsics=intrinsics,
                        focal_correction='canonical')
    default = engine.infer(rgb, tasks=['depth'], steps=1, seed=0, intrinsics=intrinsics)
    assert not same(want, default)
    assert same(outputs, want)
    engine.close()
