"""Warm start in batches: several cameras' frames, each warm or cold, in one engine call.

``Engine.infer_batch(..., inits, strengths, return_state=True)`` must give every image the
outputs and state of ``infer`` of that image alone; ``infer_warm_batch`` must let every
camera's ``WarmStartRunner`` decide and count its own frame as ``WarmStartRunner.infer``.
Real models on the CPU: the authors' tiny TaskDiffusion and the tiny random one.
"""

import numpy as np
import pytest
import torch

from mtdp_ros.runtime import create_engine
from mtdp_ros.runtime.warm_runner import infer_warm_batch, WarmStartRunner, WarmStartSettings

from ros_harness import pattern_image, TINY_MLORE, TINY_TASKDIFFUSION
from test_runtime_batch import _assert_same, _engine, IMAGES, INTRINSICS

SEEDS = [0, 5, 9, 5]
STEPS = 2


@pytest.fixture(scope='module')
def reference_engine(taskdiffusion_reference):
    return _engine(taskdiffusion_reference)


def _previous_states(engine):
    """A previous map for every image (its cold state, seeded differently)."""
    return [engine.infer(image, seed=seed + 1, steps=STEPS, return_state=True)[1]
            for image, seed in zip(IMAGES, SEEDS)]


class PassCounter:
    """Counts the network passes of an engine's real model (and each pass's batch size)."""

    def __init__(self, engine):
        self.sizes = []
        self._handle = engine.model.register_forward_hook(
            lambda module, args, output: self.sizes.append(int(args[0].shape[0])))

    def close(self):
        self._handle.remove()


def test_mixed_warm_and_cold_batch_equals_each_image_alone(reference_engine):
    engine = reference_engine
    previous = _previous_states(engine)
    # Two images warm at 0.3 (one pass of two rows), one at 0.5, one cold whose init is
    # ignored (strength 1): three passes. Four sizes, intrinsics on three images.
    inits = [previous[1], previous[0], previous[2], previous[3]]
    strengths = [0.3, None, 0.5, 0.3]
    counter = PassCounter(engine)
    try:
        outputs, states = engine.infer_batch(IMAGES, seeds=SEEDS, steps=STEPS,
                                             intrinsics=INTRINSICS, inits=inits,
                                             strengths=strengths, return_state=True)
    finally:
        counter.close()
    assert sorted(counter.sizes) == [1, 1, 2]
    timing = dict(engine.last_timing)
    assert set(timing) == {'preprocess_ms', 'model_ms', 'postprocess_ms'}
    assert timing['model_ms'] > 0
    factors = list(engine.last_focal_factors)
    assert len(outputs) == len(states) == len(IMAGES)
    for index, image in enumerate(IMAGES):
        strength = strengths[index] or 1.0
        alone, state = engine.infer(image, seed=SEEDS[index], steps=STEPS,
                                    intrinsics=INTRINSICS[index], init=inits[index],
                                    strength=strength, return_state=True)
        context = f'image {index} strength {strength}'
        _assert_same(outputs[index], alone, context)
        assert tuple(states[index].shape) == engine.noise_shape(), context
        assert states[index].dtype == state.dtype and states[index].device == state.device
        torch.testing.assert_close(states[index], state, atol=1e-5, rtol=1e-5, msg=context)
        assert factors[index] == pytest.approx(engine.last_focal_factor), context
        cold, cold_state = engine.infer(image, seed=SEEDS[index], steps=STEPS,
                                        intrinsics=INTRINSICS[index], return_state=True)
        if strength < 1.0:
            # A warm image really started warm: far from its cold result.
            assert np.abs(outputs[index]['normals'] - cold['normals']).max() > 1e-2, context
            assert (states[index] - cold_state).abs().max() > 1e-3, context
        else:
            _assert_same(outputs[index], cold, context)


def test_a_plain_batch_is_unchanged_by_cold_warm_arguments(reference_engine):
    engine = reference_engine
    plain = engine.infer_batch(IMAGES[:3], seeds=SEEDS[:3], steps=STEPS)
    cold, states = engine.infer_batch(IMAGES[:3], seeds=SEEDS[:3], steps=STEPS,
                                      inits=[None] * 3, strengths=[1.0, None, 1.0],
                                      return_state=True)
    for index, (a, b) in enumerate(zip(plain, cold)):
        _assert_same(a, b, f'image {index}')
    # One image: the single-image path, still one state.
    single, [state] = engine.infer_batch(IMAGES[:1], steps=STEPS, inits=[states[0]],
                                         strengths=[0.4], return_state=True)
    alone, alone_state = engine.infer(IMAGES[0], steps=STEPS, init=states[0], strength=0.4,
                                      return_state=True)
    _assert_same(single[0], alone, 'single')
    torch.testing.assert_close(state, alone_state)


@pytest.mark.parametrize('arguments, words', [
    (dict(inits=[None]), 'inits must have one entry per image'),
    (dict(strengths=[0.5, 1.0, 1.0]), 'strengths must have one entry per image'),
    (dict(strengths=[1.0, 0.5]), 'image 1: strength 0.5 < 1 needs init'),
    (dict(inits=['map', None], strengths=[0.5, None]), 'image 0: init must be the state'),
    (dict(inits=['shape', 'state'], strengths=[None, 0.5]), r'image 0: init must be \('),
    (dict(inits=['state', 'state'], strengths=[0.5, 1.5]), 'image 1: strength must lie'),
    (dict(inits=['state', 'state'], strengths=[0.5, True]), 'image 1: strength must be'),
])
def test_bad_warm_arguments_name_the_image(reference_engine, arguments, words):
    engine = reference_engine
    state = engine.infer(IMAGES[0], steps=1, return_state=True)[1]
    made = {'state': state, 'shape': state[:, :, :-1], 'map': state.numpy()}
    if 'inits' in arguments:
        arguments = {**arguments, 'inits': [made.get(init, init) if isinstance(init, str)
                                            else init for init in arguments['inits']]}
    with pytest.raises(ValueError, match=words):
        engine.infer_batch(IMAGES[:2], steps=1, **arguments)


def test_engines_without_warm_start_refuse_it_as_infer_does(tmp_path, mlore_reference):
    ort = create_engine(TINY_TASKDIFFUSION, backend='onnxruntime', device='cpu', steps=1,
                        cache_dir=str(tmp_path))
    mlore = _engine(mlore_reference)
    images = [pattern_image(60, 80, seed=1), pattern_image(48, 64, seed=2)]
    state = torch.zeros(ort.noise_shape())
    for engine, words in ((ort, 'the onnxruntime engine serves cold starts only'),
                          (mlore, 'TaskDiffusion models only')):
        with pytest.raises(ValueError, match=words) as single:
            engine.infer(images[0], return_state=True)
        for arguments in (dict(return_state=True), dict(inits=[state, None]),
                          dict(strengths=[1.0, 0.5])):
            with pytest.raises(ValueError) as batch:
                engine.infer_batch(images, **arguments)
            assert str(batch.value) == str(single.value), arguments
    # Cold arguments ask for nothing the engine cannot do.
    plain = ort.infer_batch(images)
    again = ort.infer_batch(images, inits=[None, None], strengths=[1.0, None])
    for a, b in zip(plain, again):
        _assert_same(a, b, 'onnxruntime')
    ort.close()


# ----------------------------------------------------------------------------- runners
WARM = WarmStartSettings(True, strength=0.05, max_gap_s=0.5, cut_threshold=0.5)
TASKS = ('semseg', 'normals', 'edge')


@pytest.fixture(scope='module')
def tiny_engine():
    engine = create_engine(TINY_TASKDIFFUSION, device='cpu')
    yield engine
    engine.close()


def scenes():
    """Three cameras' frames (two sizes, each its own scene)."""
    return [pattern_image(60, 80, seed=1), pattern_image(48, 64, seed=2),
            pattern_image(60, 80, seed=3)]


def report(runner):
    values = runner.report()
    return (values['warm_start_last'], values['warm_start_last_cold_reason'],
            values['warm_start_warm_frames'], values['warm_start_cold_frames'])


class CountBatches:
    """The real engine, counting its ``infer_batch`` calls (and their sizes)."""

    def __init__(self, engine):
        self._engine, self.sizes = engine, []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def infer_batch(self, images, *args, **kwargs):
        self.sizes.append(len(images))
        return self._engine.infer_batch(images, *args, **kwargs)


def test_runners_in_a_batch_decide_and_count_as_alone(tiny_engine):
    engine = tiny_engine
    batched = [WarmStartRunner() for _ in range(3)]
    alone = [WarmStartRunner() for _ in range(3)]
    images = scenes()
    seeds = [0, 1, 2]

    def step(stamps, frames, settings=WARM):
        counting = CountBatches(engine)
        got = infer_warm_batch(counting, batched, frames, stamps, settings, tasks=TASKS,
                               steps=1, seeds=seeds)
        assert counting.sizes == [3]             # one engine call for the three cameras
        for index, (runner, image, stamp) in enumerate(zip(alone, frames, stamps)):
            want = runner.infer(engine, image, stamp, settings, tasks=TASKS, steps=1,
                                seed=seeds[index])
            _assert_same(got[index], want, f'camera {index}')
            assert report(batched[index]) == report(runner), f'camera {index}'
            assert batched[index].last_change == runner.last_change
        return [report(runner) for runner in batched]

    first = step([10.0, 10.0, 10.0], images)
    assert all(r[:2] == ('cold', 'no previous map (start)') for r in first)
    second = step([10.1, 10.1, 10.1], images)
    assert [r[0] for r in second] == ['warm'] * 3
    # A reset of camera 1 (and a scene cut on camera 2): only they start cold.
    batched[1].reset('deactivate')
    alone[1].reset('deactivate')
    cut = images[2][::-1, ::-1].copy()
    third = step([10.2, 10.2, 10.2], [images[0], images[1], cut])
    assert third[0][:3] == ('warm', 'no previous map (start)', '2')
    assert third[1][:2] == ('cold', 'no previous map (deactivate)')
    assert third[2][0] == 'cold' and third[2][1].startswith('scene cut')
    # A time gap on one camera only.
    fourth = step([10.3, 11.0, 10.3], [images[0], images[1], cut])
    assert [r[0] for r in fourth] == ['warm', 'cold', 'warm']
    assert fourth[1][1].startswith('time gap')
    # Warm start off: every map dropped, every frame cold and counted.
    off = step([10.4, 11.1, 10.4], [images[0], images[1], cut], WarmStartSettings())
    assert all(r[:2] == ('cold', 'warm start off') for r in off)
    assert not any(runner.state.has_state for runner in batched)


class ResetDuringBatch:
    """The real engine, but one camera is reset (deactivate) while the batch runs."""

    def __init__(self, engine, runner):
        self._engine, self._runner = engine, runner

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def infer_batch(self, *args, **kwargs):
        self._runner.reset('deactivate')
        return self._engine.infer_batch(*args, **kwargs)


def test_a_reset_during_a_batch_drops_only_that_cameras_map(tiny_engine):
    runners = [WarmStartRunner() for _ in range(2)]
    images = scenes()[:2]
    for stamp in (10.0, 10.1):
        infer_warm_batch(tiny_engine, runners, images, [stamp] * 2, WARM, tasks=TASKS,
                         steps=1)
    infer_warm_batch(ResetDuringBatch(tiny_engine, runners[0]), runners, images,
                     [10.2] * 2, WARM, tasks=TASKS, steps=1)
    assert not runners[0].state.has_state and runners[1].state.has_state
    infer_warm_batch(tiny_engine, runners, images, [10.3] * 2, WARM, tasks=TASKS, steps=1)
    assert report(runners[0])[:2] == ('cold', 'no previous map (deactivate)')
    assert report(runners[1])[0] == 'warm'


def test_a_refused_batch_leaves_every_runner_as_it_was(tiny_engine):
    runners = [WarmStartRunner() for _ in range(2)]
    images = scenes()[:2]
    infer_warm_batch(tiny_engine, runners, images, [10.0] * 2, WARM, tasks=TASKS, steps=1)
    before = [(report(r), r.state.state) for r in runners]
    with pytest.raises(ValueError, match='seed'):
        infer_warm_batch(tiny_engine, runners, images, [10.1] * 2, WARM, tasks=TASKS,
                         steps=1, seeds=[0, -1])
    assert [(report(r), r.state.state) for r in runners] == before
    with pytest.raises(ValueError, match='a runner of its own'):
        infer_warm_batch(tiny_engine, [runners[0]] * 2, images, [10.1] * 2, WARM)
    with pytest.raises(ValueError, match='one runner and one stamp per image'):
        infer_warm_batch(tiny_engine, runners, images, [10.1], WARM)


def test_warm_batches_are_refused_for_mlore():
    mlore = create_engine(TINY_MLORE, device='cpu')
    with pytest.raises(ValueError, match='TaskDiffusion models only'):
        infer_warm_batch(mlore, [WarmStartRunner()], scenes()[:1], [10.0], WARM)
    mlore.close()
