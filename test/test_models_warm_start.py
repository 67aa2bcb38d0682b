"""Warm start of the TaskDiffusion sampler from the previous frame's clean map."""

import math

import pytest
import torch
import torch.nn.functional as F

from mtdp_ros.models import build_model, load_checkpoint, reparameterize
from mtdp_ros.models.sampler import (alpha_sigma, cosine_log_snr, ddim_sample, final_state,
                                     time_pairs)

FIXTURES = ['taskdiffusion_reference', 'taskdiffusion_mlore_reference']


def _loaded(reference, fused=False):
    model = build_model(reference['config'])
    load_checkpoint(model, reference['checkpoint'])
    model.eval()
    return reparameterize(model) if fused else model


def _first(reference):
    """One image of the reference batch and its initial noise (batch 1)."""
    return reference['input'][:1], reference['initial_noise'][:1]


def _state(model, x, noise, steps=3):
    _, state = model(x, steps=steps, noise=noise, return_state=True)
    return state


@pytest.mark.parametrize('fixture', FIXTURES)
@torch.no_grad()
def test_strength_one_is_the_cold_start_bit_for_bit(fixture, request):
    reference = request.getfixturevalue(fixture)
    model = _loaded(reference)
    x, noise = _first(reference)
    for steps in (1, 3):
        cold = model(x, steps=steps, noise=noise)
        state = _state(model, x, noise, steps)
        with_state, new_state = model(x, steps=steps, noise=noise, init=state * 50,
                                      strength=1.0, return_state=True)
        plain_strength = model(x, steps=steps, noise=noise, init=torch.randn_like(state),
                               strength=1)
        for task in cold:
            assert torch.equal(cold[task], with_state[task]), task
            assert torch.equal(cold[task], plain_strength[task]), task
        assert torch.equal(new_state, state)


def test_schedule_is_the_cold_one_squeezed_into_zero_to_strength():
    assert time_pairs(3, 1.0, 1.0) == time_pairs(3, 1.0)
    assert time_pairs(3, 1.0) == [(1.0, 1 - 2 / 3), (1 - 1 / 3, 0.0), (1 - 2 / 3, 0.0)]
    for strength in (0.25, 0.6):
        for (now, nxt), (cold_now, cold_next) in zip(time_pairs(3, 1.0, strength),
                                                     time_pairs(3, 1.0)):
            assert math.isclose(now, strength * cold_now)
            assert math.isclose(nxt, strength * cold_next)
    assert time_pairs(1, 1.0, 0.4) == [(0.4, 0.0)]


@pytest.mark.parametrize('fixture', FIXTURES)
@torch.no_grad()
def test_warm_start_runs_the_documented_path(fixture, request):
    """Warm = the sampler started at t = s from alpha(s) init + sigma(s) z, nothing else."""
    reference = request.getfixturevalue(fixture)
    model = _loaded(reference)
    x, noise = _first(reference)
    init = _state(model, x, torch.randn_like(noise))
    for steps, strength in ((1, 0.3), (2, 0.6)):
        warm, state = model(x, steps=steps, noise=noise, init=init, strength=strength,
                            return_state=True)
        alpha, sigma = alpha_sigma(cosine_log_snr(torch.tensor([strength])))
        start = alpha * init + sigma * noise
        # The cold sampler fed the noised previous map as its start at time s.
        logits = ddim_sample(model.diffusion, model._levels(x), steps, start,
                             model.config.time_difference, strength=strength)
        for task, value in warm.items():
            expected = F.interpolate(logits[task], size=x.shape[-2:], mode='bilinear')
            assert torch.allclose(value, expected, atol=1e-6, rtol=0), task
        expected_state = final_state(model.diffusion.label_encoder, logits, noise.shape[-2:])
        assert torch.allclose(state, expected_state, atol=1e-7, rtol=0)


@pytest.mark.parametrize('fixture', FIXTURES)
@torch.no_grad()
def test_the_previous_map_matters_below_strength_one(fixture, request):
    reference = request.getfixturevalue(fixture)
    model = _loaded(reference)
    x, noise = _first(reference)
    first = _state(model, x, noise)
    other = _state(model, x, torch.randn_like(noise))
    assert not torch.equal(first, other)
    a = model(x, steps=1, noise=noise, init=first, strength=0.5)
    b = model(x, steps=1, noise=noise, init=other, strength=0.5)
    assert any(not torch.allclose(a[t], b[t]) for t in a)
    # Repeatable: the same previous map and noise give the same outputs.
    again = model(x, steps=1, noise=noise, init=first, strength=0.5)
    assert all(torch.equal(a[t], again[t]) for t in a)


@torch.no_grad()
def test_state_is_a_clean_map_of_the_noise_shape(taskdiffusion_mlore_reference):
    reference = taskdiffusion_mlore_reference
    model = _loaded(reference, fused=True)
    x, noise = reference['input'], reference['initial_noise']
    outputs, state = model(x, noise=noise, return_state=True)
    assert tuple(state.shape) == tuple(noise.shape) == model.noise_shape(x.shape[0])
    assert state.dtype == torch.float32
    # The label encoder squashes the map to [-scale, scale].
    assert state.abs().max() <= model.config.scale
    assert set(outputs) == set(model.config.tasks)


@torch.no_grad()
def test_bad_warm_start_arguments_are_named(taskdiffusion_reference):
    model = _loaded(taskdiffusion_reference)
    x, noise = _first(taskdiffusion_reference)
    state = _state(model, x, noise, steps=1)
    for strength in (0, -0.5, 1.5, float('nan'), True, '0.5', None):
        with pytest.raises(ValueError, match='strength'):
            model(x, steps=1, noise=noise, init=state, strength=strength)
    with pytest.raises(ValueError, match='needs init'):
        model(x, steps=1, noise=noise, strength=0.5)
    with pytest.raises(ValueError, match=r'init must be \(1, '):
        model(x, steps=1, noise=noise, init=state[:, :-1], strength=0.5)
    with pytest.raises(ValueError, match='floating-point'):
        model(x, steps=1, noise=noise, init=state.long(), strength=0.5)
    with pytest.raises(ValueError, match='floating-point'):
        model(x, steps=1, noise=noise, init=state.numpy(), strength=0.5)
