"""Re-parameterisation is exact on random models with random BatchNorm statistics."""

import copy

import pytest
import torch
from torch import nn

from mtdp_ros.models import ModelConfig, PRESETS, build_model, reparameterize
from mtdp_ros.models.reparam import model_memory
from mtdp_ros.models.mlore_block import FusedMLoREBlock, MLoREBlock

TINY = dict(family='mlore', tasks=['semseg', 'depth', 'normals', 'edge'],
            num_outputs={'semseg': 13, 'depth': 1, 'normals': 3, 'edge': 1},
            image_size=[32, 48], embed_dim=32, depth=3, num_heads=2, select_layers=[1, 2, 3],
            decoder_dim=16, expert_ranks=[2, 3, 4, 5, 6], task_expert_rank=3, top_k=3)


def randomize_batchnorm(model, generator):
    """Give every BatchNorm non-trivial statistics and affine terms."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(size, generator=generator) * 2 + 0.2)
            module.weight.data.copy_(torch.randn(size, generator=generator))
            module.bias.data.copy_(torch.randn(size, generator=generator))


def randomize_biases(model, generator):
    for name, param in model.named_parameters():
        if name.endswith('bias'):
            param.data.copy_(torch.randn(param.shape, generator=generator) * 0.1)


@pytest.mark.parametrize('pre_softmax', [True, False])
@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('family', ['mlore', 'taskdiffusion_mlore'])
@torch.no_grad()
def test_fused_model_equals_train_form(family, batch, pre_softmax):
    generator = torch.Generator().manual_seed(batch * 10 + pre_softmax)
    extra = {'trained_steps': 2} if family != 'mlore' else {}
    config = ModelConfig.from_dict({**TINY, 'family': family, 'pre_softmax': pre_softmax,
                                    **extra})
    model = build_model(config)
    randomize_batchnorm(model, generator)
    randomize_biases(model, generator)
    model.eval()
    x = torch.randn(batch, 3, 32, 48, generator=generator)
    kwargs = {'noise': torch.randn(model.noise_shape(batch), generator=generator)} \
        if config.is_diffusion else {}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = model(x, **kwargs)
    fused = reparameterize(model)
    actual = fused(x, **kwargs)
    for task in expected:
        scale = expected[task].abs().max().clamp(min=1.0)
        assert (actual[task] - expected[task]).abs().max() <= 1e-4 * scale, task
    # The fused copy holds no training branches; the original is untouched.
    assert not any(isinstance(m, MLoREBlock) for m in fused.modules())
    assert any(isinstance(m, FusedMLoREBlock) for m in fused.modules())
    assert any(isinstance(m, MLoREBlock) for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any(isinstance(m, nn.BatchNorm2d) for b in fused.modules()
                   if isinstance(b, FusedMLoREBlock) for m in b.modules())


@torch.no_grad()
def test_fused_batch_equals_per_sample():
    """Per-sample kernels: a batch gives what each sample gives alone (no cross-talk)."""
    generator = torch.Generator().manual_seed(7)
    model = build_model({**TINY, 'pre_softmax': True})
    randomize_batchnorm(model, generator)
    fused = reparameterize(model.eval())
    x = torch.randn(3, 3, 32, 48, generator=generator)
    batched = fused(x)
    for index in range(3):
        single = fused(x[index:index + 1])
        for task in batched:
            assert torch.allclose(batched[task][index], single[task][0], atol=1e-5)


def test_reparameterize_refuses_model_without_experts_or_in_training():
    config = {**TINY, 'family': 'taskdiffusion', 'trained_steps': 2, 'expert_ranks': None,
              'top_k': None, 'task_expert_rank': None}
    with pytest.raises(ValueError, match='no MLoRE blocks'):
        reparameterize(build_model(config))
    with pytest.raises(ValueError, match='eval-mode'):
        FusedMLoREBlock(build_model({**TINY, 'pre_softmax': True}).train().decoder.blocks1[0])


@torch.no_grad()
def test_task_subset_computes_only_requested_branches():
    model = build_model({**TINY, 'pre_softmax': False}).eval()
    calls = []
    for task, head in model.heads.items():
        head.register_forward_hook(lambda *_, t=task: calls.append(t))
    x = torch.randn(1, 3, 32, 48)
    full = model(x)
    calls.clear()
    subset = model(x, tasks=['depth', 'semseg'])
    assert list(subset) == ['semseg', 'depth']
    assert sorted(calls) == ['depth', 'semseg']
    for task in subset:
        assert torch.allclose(subset[task], full[task], atol=1e-6)
    with pytest.raises(ValueError, match='unknown tasks'):
        model(x, tasks=['saliency'])


def _random_model(family, generator, pre_softmax=False):
    extra = {'trained_steps': 2} if family != 'mlore' else {}
    model = build_model({**TINY, 'family': family, 'pre_softmax': pre_softmax, **extra})
    randomize_batchnorm(model, generator)
    randomize_biases(model, generator)
    return model.eval()


@pytest.mark.parametrize('family', ['mlore', 'taskdiffusion_mlore'])
@torch.no_grad()
def test_inplace_and_per_block_fusing_equal_the_train_form(family):
    generator = torch.Generator().manual_seed(11)
    model = _random_model(family, generator)
    x = torch.randn(2, 3, 32, 48, generator=generator)
    kwargs = {'noise': torch.randn(model.noise_shape(2), generator=generator)} \
        if model.config.is_diffusion else {}
    expected = model(x, **kwargs)
    copied = reparameterize(model)
    # Per block: each MLoREBlock.fuse() is a drop-in replacement for that block alone.
    per_block = reparameterize(model)
    per_block.load_state_dict(copied.state_dict())
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, MLoREBlock)]
    assert len(blocks) == 8
    name, block = blocks[3]
    one_fused = copy.deepcopy(model)
    parent = one_fused.get_submodule(name.rsplit('.', 1)[0])
    setattr(parent, name.rsplit('.', 1)[1], block.fuse())
    mixed = one_fused(x, **kwargs)
    fused_in_place = reparameterize(model, inplace=True)
    assert fused_in_place is model
    assert not any(isinstance(m, MLoREBlock) for m in model.modules())
    actual_inplace = fused_in_place(x, **kwargs)
    actual_copy = copied(x, **kwargs)
    for task in expected:
        scale = expected[task].abs().max().clamp(min=1.0)
        for actual in (actual_inplace, actual_copy, mixed):
            assert (actual[task] - expected[task]).abs().max() <= 1e-4 * scale, task
        # The same arithmetic, whichever way the blocks were replaced.
        assert torch.equal(actual_inplace[task], actual_copy[task]), task


@torch.no_grad()
def test_copying_api_leaves_a_training_model_untouched():
    generator = torch.Generator().manual_seed(3)
    model = _random_model('mlore', generator).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = reparameterize(model)
    assert model.training and all(m.training for m in model.modules())
    assert not fused.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # The copy shares no storage with the original (changing one cannot change the other).
    original = {t.data_ptr() for t in model.state_dict().values()}
    assert not original & {t.data_ptr() for t in fused.state_dict().values()}


@pytest.mark.parametrize('family', ['mlore', 'taskdiffusion_mlore', 'taskdiffusion'])
def test_model_memory_equals_the_built_forms(family):
    generator = torch.Generator().manual_seed(5)
    extra = {'expert_ranks': None, 'top_k': None, 'task_expert_rank': None} \
        if family == 'taskdiffusion' else {}
    fields = {**TINY, 'family': family, 'pre_softmax': True, **extra}
    if family != 'mlore':
        fields['trained_steps'] = 2
    config = ModelConfig.from_dict(fields)
    sizes = model_memory(config)
    model = build_model(config).eval()
    randomize_batchnorm(model, generator)
    state = model.state_dict()
    assert sizes['train_elements'] == sum(v.numel() for v in state.values())
    assert sizes['parameters'] == sum(p.numel() for p in model.parameters())
    assert sizes['train_mb']['fp16'] == sizes['train_elements'] * 2 / 2 ** 20
    if family == 'taskdiffusion':
        assert sizes['fused_elements'] is None
        return
    fused = reparameterize(model).state_dict()
    assert sizes['fused_elements'] == sum(v.numel() for v in fused.values())
    assert sizes['fused_elements'] > sizes['train_elements']


def test_published_preset_sizes():
    """The figures of issue 9 and the README's memory table (computed on the meta device)."""
    sizes = model_memory(PRESETS['mlore_pascal_vitS'])
    assert round(sizes['train_elements'] / 1e6, 1) == 42.2
    assert round(sizes['fused_elements'] / 1e6, 1) == 95.1
    assert round(sizes['fused_mb']['fp32']) == 363
