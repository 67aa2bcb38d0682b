"""Warm start through the engines, and the per-camera warm/cold bookkeeping."""

import numpy as np
import pytest
import torch

from mtdp_ros.runtime import create_engine
from mtdp_ros.runtime.engine import SamplerStart
from mtdp_ros.runtime.warm_start import (Decision, image_change, image_signature,
                                         WarmStartState)


def _image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 255 / max(width - 1, 1), ys * 255 / max(height - 1, 1),
                      rng.uniform(0, 255, (height, width))], -1)
    return image.astype(np.uint8)


@pytest.fixture(scope='module')
def engine(taskdiffusion_reference):
    return create_engine(taskdiffusion_reference['config'],
                         checkpoint=taskdiffusion_reference['checkpoint'], device='cpu')


# ----------------------------------------------------------------------------- engines
def test_engine_returns_the_state_and_strength_one_is_cold(engine):
    image = _image(60, 90)
    cold = engine.infer(image, steps=2)
    outputs, state = engine.infer(image, steps=2, return_state=True)
    assert tuple(state.shape) == engine.noise_shape()
    assert state.dtype == torch.float32 and state.device.type == 'cpu'
    again, _ = engine.infer(image, steps=2, init=state * 3, strength=1.0, return_state=True)
    for task in cold:
        np.testing.assert_array_equal(outputs[task], cold[task])
        np.testing.assert_array_equal(again[task], cold[task])


def test_engine_warm_start_uses_the_previous_map(engine):
    image = _image(60, 90)
    _, state = engine.infer(image, steps=1, return_state=True)
    _, other = engine.infer(image, steps=1, seed=5, return_state=True)
    warm = engine.infer(image, steps=1, init=state, strength=0.4)
    assert set(warm) == set(engine.tasks)
    warm_other = engine.infer(image, steps=1, init=other, strength=0.4)
    # (Depth is NaN where the network predicts no depth: NaNs count as equal.)
    assert any(not np.array_equal(warm[t], warm_other[t], equal_nan=True) for t in warm)
    repeat = engine.infer(image, steps=1, init=state, strength=0.4)
    assert all(np.array_equal(warm[t], repeat[t], equal_nan=True) for t in warm)


def test_engine_warm_start_errors_name_the_problem(engine, mlore_reference):
    image = _image(60, 90)
    _, state = engine.infer(image, steps=1, return_state=True)
    with pytest.raises(ValueError, match='needs init'):
        engine.infer(image, strength=0.5)
    with pytest.raises(ValueError, match='strength'):
        engine.infer(image, init=state, strength=1.5)
    with pytest.raises(ValueError, match='init must be'):
        engine.infer(image, init=state[:, :, :-1], strength=0.5)
    with pytest.raises(ValueError, match='init must be the state'):
        engine.infer(image, init=state.numpy(), strength=0.5)
    mlore = create_engine(mlore_reference['config'], checkpoint=mlore_reference['checkpoint'],
                          device='cpu')
    with pytest.raises(ValueError, match='TaskDiffusion models only'):
        mlore.infer(image, return_state=True)


def test_graph_keys_tell_cold_warm_and_strength_apart(engine):
    keys = {engine.graph_key((60, 90), 1, None, start) for start in
            (None, SamplerStart(None, 1.0), SamplerStart(torch.zeros(1), 0.5),
             SamplerStart(torch.zeros(1), 0.3))}
    assert len(keys) == 4
    # The previous map itself is data (copied into the graph), not part of the key.
    assert engine.graph_key((60, 90), 1, None, SamplerStart(torch.zeros(1), 0.5)) == \
        engine.graph_key((60, 90), 1, None, SamplerStart(torch.ones(1), 0.5))


# ----------------------------------------------------------------------------- decisions
def _frame(seed=0, gain=1.0):
    return np.clip(_image(48, 64, seed).astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _warm_state(**kwargs):
    state = WarmStartState(**kwargs)
    first = state.decide(_frame(), 10.0, ('m', 3))
    state.update('map-1', first)
    return state


def test_first_frame_is_cold_then_warm():
    state = WarmStartState()
    first = state.decide(_frame(), 10.0, ('m', 3))
    assert not first.warm and 'no previous map' in first.reason
    state.update('map-1', first)
    second = state.decide(_frame(), 10.1, ('m', 3))
    assert second.warm and second.init == 'map-1' and second.reason == 'warm'
    off = state.decide(_frame(), 10.1, ('m', 3), enabled=False)
    assert not off.warm and off.reason == 'warm start off' and off.init is None


def test_time_gap_and_backwards_time_reset():
    state = _warm_state(max_gap_s=0.5)
    assert state.decide(_frame(), 10.5, ('m', 3)).warm
    gap = state.decide(_frame(), 10.6, ('m', 3))
    assert not gap.warm and 'time gap 0.600 s > max_gap_s 0.5' in gap.reason
    back = state.decide(_frame(), 9.0, ('m', 3))
    assert not back.warm and 'time went backwards' in back.reason


def test_scene_cut_resets_but_lighting_and_noise_do_not():
    state = _warm_state(cut_threshold=0.5)
    brighter = state.decide(_frame(gain=1.3), 10.1, ('m', 3))
    assert brighter.warm and brighter.change < 0.2
    cut = state.decide(_frame(seed=0)[::-1, ::-1].copy(), 10.1, ('m', 3))
    assert not cut.warm and 'scene cut' in cut.reason and cut.change > 0.5


def test_change_of_run_resets():
    state = _warm_state()
    for key, fragment in ((('m', 1), '3 -> 1'), (('other', 3), "'m' -> 'other'"),
                          (('m', 3, (48, 64)), '->')):
        decision = state.decide(_frame(), 10.1, key)
        assert not decision.warm and decision.reason.startswith('run changed') \
            and fragment in decision.reason, decision.reason


def test_explicit_reset_and_update_checks():
    state = _warm_state()
    state.reset('deactivated')
    assert not state.has_state
    decision = state.decide(_frame(), 10.1, ('m', 3))
    assert not decision.warm and decision.reason == 'no previous map (deactivated)'
    with pytest.raises(ValueError, match='Decision'):
        state.update('map', None)
    with pytest.raises(ValueError, match='state the engine returned'):
        state.update(None, decision)
    state.update('map-2', decision)
    assert state.decide(_frame(), 10.2, ('m', 3)).init == 'map-2'


def test_settings_are_validated():
    for bad in (0, -1, float('nan'), 'x', True):
        with pytest.raises(ValueError, match='max_gap_s'):
            WarmStartState(max_gap_s=bad)
        with pytest.raises(ValueError, match='cut_threshold'):
            WarmStartState(cut_threshold=bad)
    state = WarmStartState()
    state.configure(max_gap_s=2.0)
    with pytest.raises(ValueError, match='cut_threshold'):
        state.configure(max_gap_s=1.0, cut_threshold=-1)
    assert state.max_gap_s == 2.0
    with pytest.raises(ValueError, match='stamp'):
        state.decide(_frame(), float('nan'), ())
    assert isinstance(state.decide(_frame(), 1.0, ()), Decision)


def test_signature_is_exposure_invariant_and_small_images_are_refused():
    image = _frame()
    assert image_change(image_signature(image), image_signature(image)) == 0.0
    scaled = image_signature((image.astype(np.float32) * 0.5).astype(np.uint8))
    assert image_change(image_signature(image), scaled) < 0.05
    assert not image_signature(np.full((32, 32), 7, np.uint8)).any()
    with pytest.raises(ValueError, match='at least 16 x 16'):
        image_signature(np.zeros((8, 64, 3), np.uint8))
