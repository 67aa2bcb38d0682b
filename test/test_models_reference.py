"""Our models reproduce the authors' code on the shared reference vectors."""

import pytest
import torch

from mtdp_ros.models import build_model, load_checkpoint, reparameterize

# Tolerances of shared/reference/README.md (CPU, float32).
MLORE_MAX_ABS = 1e-4
DIFFUSION_MEAN_ABS = 1e-4
DIFFUSION_ELEMENT_ABS = 1e-3
DIFFUSION_FRACTION_WITHIN = 0.999


def _loaded(reference):
    model = build_model(reference['config'])
    load_checkpoint(model, reference['checkpoint'])
    return model.eval()


@torch.no_grad()
def test_mlore_train_form_matches_authors(mlore_reference):
    model = _loaded(mlore_reference)
    outputs = model(mlore_reference['input'])
    assert set(outputs) == set(mlore_reference['outputs'])
    for task, expected in mlore_reference['outputs'].items():
        assert outputs[task].shape == expected.shape
        assert (outputs[task] - expected).abs().max() <= MLORE_MAX_ABS, task


@torch.no_grad()
def test_mlore_reparameterized_matches_authors(mlore_reference):
    fused = reparameterize(_loaded(mlore_reference))
    outputs = fused(mlore_reference['input'])
    for task, expected in mlore_reference['outputs_reparam'].items():
        assert (outputs[task] - expected).abs().max() <= MLORE_MAX_ABS, task


def _assert_diffusion_close(outputs, expected_by_task):
    for task, expected in expected_by_task.items():
        assert outputs[task].shape == expected.shape, task
        diff = (outputs[task] - expected).abs()
        assert diff.mean() <= DIFFUSION_MEAN_ABS, task
        within = (diff <= DIFFUSION_ELEMENT_ABS).float().mean()
        assert within >= DIFFUSION_FRACTION_WITHIN, task


@pytest.mark.parametrize('fixture', ['taskdiffusion_reference', 'taskdiffusion_mlore_reference'])
@torch.no_grad()
def test_taskdiffusion_matches_authors_for_each_step_count(fixture, request):
    reference = request.getfixturevalue(fixture)
    model = _loaded(reference)
    assert sorted(reference['outputs_by_steps']) == [1, 3, 5]
    for steps, expected in reference['outputs_by_steps'].items():
        outputs = model(reference['input'], steps=steps, noise=reference['initial_noise'])
        _assert_diffusion_close(outputs, expected)


@torch.no_grad()
def test_taskdiffusion_mlore_reparameterized_matches_authors(taskdiffusion_mlore_reference):
    reference = taskdiffusion_mlore_reference
    fused = reparameterize(_loaded(reference))
    for steps, expected in reference['outputs_by_steps'].items():
        outputs = fused(reference['input'], steps=steps, noise=reference['initial_noise'])
        _assert_diffusion_close(outputs, expected)


@torch.no_grad()
def test_steps_change_the_output_and_default_is_trained_steps(taskdiffusion_reference):
    reference = taskdiffusion_reference
    model = _loaded(reference)
    noise = reference['initial_noise']
    default = model(reference['input'], noise=noise)
    trained = model(reference['input'], steps=model.config.trained_steps, noise=noise)
    one = model(reference['input'], steps=1, noise=noise)
    for task in default:
        assert torch.equal(default[task], trained[task])
    assert any(not torch.allclose(one[t], trained[t]) for t in one)


@torch.no_grad()
def test_default_noise_is_seeded_and_generator_is_used(taskdiffusion_reference):
    model = _loaded(taskdiffusion_reference)
    x = taskdiffusion_reference['input']
    first, second = model(x), model(x)
    for task in first:
        assert torch.equal(first[task], second[task])
    other = model(x, generator=torch.Generator().manual_seed(1234))
    assert any(not torch.equal(first[t], other[t]) for t in first)
    with pytest.raises(ValueError, match='noise must be'):
        model(x, noise=torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match='steps'):
        model(x, steps=0)
