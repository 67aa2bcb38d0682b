"""PyTorch engine on the tiny reference models: the infer contract, steps, seeds, errors."""

import logging

import numpy as np
import pytest
import torch

from mtdp_ros.models import build_model, load_checkpoint, reparameterize
from mtdp_ros.runtime import create_engine, plan_letterbox, postprocess, to_numpy

NO_CUDA = not torch.cuda.is_available()


def _image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 255 / max(width - 1, 1), ys * 255 / max(height - 1, 1),
                      rng.uniform(0, 255, (height, width))], -1)
    return image.astype(np.uint8)


def _normalise(image, config):
    x = (image.astype(np.float32) / 255.0 - np.array(config.mean, np.float32)) \
        / np.array(config.std, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())


@pytest.fixture(scope='module')
def mlore_engine(mlore_reference):
    return create_engine(mlore_reference['config'], checkpoint=mlore_reference['checkpoint'],
                         device='cpu')


@pytest.fixture(scope='module')
def diffusion_engine(taskdiffusion_reference):
    return create_engine(taskdiffusion_reference['config'],
                         checkpoint=taskdiffusion_reference['checkpoint'], device='cpu')


def test_engine_reports_what_it_runs(mlore_engine, diffusion_engine):
    assert mlore_engine.backend == 'torch' and mlore_engine.device == 'cpu'
    assert mlore_engine.precision == 'fp32' and not mlore_engine.random_weights
    assert mlore_engine.tasks == ('semseg', 'depth', 'normals', 'edge')
    assert mlore_engine.reparameterized
    assert diffusion_engine.default_steps == 3 and not diffusion_engine.reparameterized


def test_forward_reproduces_the_authors_outputs(mlore_engine, mlore_reference):
    # The engine's network is the re-parameterised model; the authors' re-parameterised
    # outputs are the reference.
    raw = mlore_engine.forward(mlore_reference['input'][:1].numpy())
    for task, expected in mlore_reference['outputs_reparam'].items():
        np.testing.assert_allclose(raw[task], expected[:1].numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize('size', [(64, 96), (120, 200), (50, 33)])
def test_infer_returns_metric_outputs_at_image_size(mlore_engine, size):
    out = mlore_engine.infer(_image(*size))
    assert set(out) == {'semseg', 'depth', 'normals', 'edge'}
    assert out['semseg'].shape == size and out['semseg'].dtype == np.uint8
    assert out['semseg'].max() < 40
    assert out['depth'].shape == size and out['depth'].dtype == np.float32
    assert np.all(np.isnan(out['depth']) | (out['depth'] > 0))
    assert out['normals'].shape == (*size, 3) and out['normals'].dtype == np.float32
    valid = ~np.isnan(out['normals']).any(-1)
    np.testing.assert_allclose(np.linalg.norm(out['normals'][valid], axis=-1), 1, atol=1e-5)
    assert out['edge'].shape == size and 0 <= out['edge'].min() <= out['edge'].max() <= 1
    assert set(mlore_engine.last_timing) == {'preprocess_ms', 'model_ms', 'postprocess_ms'}
    assert all(v >= 0 for v in mlore_engine.last_timing.values())


def test_infer_at_model_size_equals_model_then_postprocess(mlore_engine, mlore_reference):
    image = _image(64, 96, seed=4)
    model = reparameterize(load_checkpoint(build_model(mlore_reference['config']),
                                           mlore_reference['checkpoint']).eval())
    with torch.no_grad():
        raw = model(_normalise(image, model.config))
    expected = to_numpy(postprocess(raw, plan_letterbox((64, 96), (64, 96))))
    out = mlore_engine.infer(image)
    np.testing.assert_array_equal(out['semseg'], expected['semseg'])
    for task in ('depth', 'normals', 'edge'):
        np.testing.assert_allclose(out[task], expected[task], atol=1e-5, equal_nan=True)


def test_only_requested_tasks_are_returned(mlore_engine):
    out = mlore_engine.infer(_image(30, 40), tasks=['edge', 'semseg'])
    assert set(out) == {'semseg', 'edge'}
    assert set(mlore_engine.infer(_image(30, 40), tasks='depth')) == {'depth'}


def test_train_form_and_fused_engines_agree(mlore_reference, mlore_engine):
    train_form = create_engine(mlore_reference['config'],
                               checkpoint=mlore_reference['checkpoint'], device='cpu',
                               reparameterize=False)
    assert not train_form.reparameterized
    x = mlore_reference['input'][1:].numpy()
    fused, unfused = mlore_engine.forward(x), train_form.forward(x)
    for task in fused:
        np.testing.assert_allclose(fused[task], unfused[task], atol=1e-4, rtol=0)


def test_diffusion_steps_per_call_and_seeds(diffusion_engine, taskdiffusion_reference):
    image = _image(64, 96, seed=2)
    model = load_checkpoint(build_model(taskdiffusion_reference['config']),
                            taskdiffusion_reference['checkpoint']).eval()
    x = _normalise(image, model.config)
    plan = plan_letterbox((64, 96), (64, 96))
    results = {}
    for steps in (1, 3):
        out = diffusion_engine.infer(image, steps=steps)
        with torch.no_grad():
            raw = model(x, steps=steps, noise=diffusion_engine.initial_noise(0))
        expected = to_numpy(postprocess(raw, plan))
        assert np.mean(out['semseg'] == expected['semseg']) > 0.999
        np.testing.assert_allclose(out['edge'], expected['edge'], atol=1e-4)
        results[steps] = out
    assert not np.allclose(results[1]['edge'], results[3]['edge'])
    # Default steps (3) and default seed (0): identical on a repeat call.
    again = diffusion_engine.infer(image)
    np.testing.assert_array_equal(again['edge'], results[3]['edge'])
    other_seed = diffusion_engine.infer(image, seed=7)
    assert not np.array_equal(other_seed['edge'], results[3]['edge'])


def test_initial_noise_matches_the_reference_draw_shape(diffusion_engine,
                                                        taskdiffusion_reference):
    noise = diffusion_engine.initial_noise(0)
    assert tuple(noise.shape) == (1, *taskdiffusion_reference['initial_noise'].shape[1:])
    assert torch.equal(noise, diffusion_engine.initial_noise(0))


@pytest.mark.parametrize('call, message', [
    (lambda e: e.infer(np.zeros((10, 10), np.uint8)), 'H x W x 3'),
    (lambda e: e.infer(np.zeros((10, 10, 3), np.float32)), 'uint8'),
    (lambda e: e.infer(np.zeros((10, 10, 3), np.uint8), tasks=['sal']), 'unknown tasks'),
    (lambda e: e.infer(np.zeros((10, 10, 3), np.uint8), tasks=[]), 'at least one'),
    (lambda e: e.infer(np.zeros((10, 10, 3), np.uint8), steps=2), 'TaskDiffusion'),
    (lambda e: e.infer(np.zeros((10, 10, 3), np.uint8), seed=-1), 'seed'),
    (lambda e: e.forward(np.zeros((1, 3, 10, 10), np.float32)), 'input must be'),
])
def test_bad_calls_raise_value_error(mlore_engine, call, message):
    with pytest.raises(ValueError, match=message):
        call(mlore_engine)


@pytest.mark.parametrize('steps', [0, -1, 1.5, 101, True])
def test_bad_steps_are_refused(diffusion_engine, steps):
    with pytest.raises(ValueError, match='steps'):
        diffusion_engine.infer(np.zeros((8, 8, 3), np.uint8), steps=steps)


@pytest.mark.parametrize('kwargs, message', [
    ({'backend': 'tensorflow'}, 'backend'),
    ({'device': 'gpu'}, 'device'),
    ({'precision': 'int8'}, 'precision'),
    ({'steps': 3}, 'TaskDiffusion'),
    ({'cuda_graph': False}, 'unknown options'),
])
def test_bad_engine_arguments(mlore_reference, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_engine(mlore_reference['config'], checkpoint=mlore_reference['checkpoint'],
                      **kwargs)


def test_missing_checkpoint_file_is_reported(mlore_reference, tmp_path):
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        create_engine(mlore_reference['config'], checkpoint=str(tmp_path / 'nope.pth'))


def test_random_weights_are_flagged_and_logged(mlore_reference, caplog):
    with caplog.at_level(logging.WARNING, logger='mtdp_ros.runtime'):
        engine = create_engine(mlore_reference['config'], device='cpu')
    assert engine.random_weights
    assert 'random' in caplog.text


@pytest.mark.skipif(not NO_CUDA, reason='this machine has CUDA: the fallback cannot happen')
def test_auto_device_falls_back_to_cpu_with_a_warning(mlore_reference, caplog):
    with caplog.at_level(logging.WARNING, logger='mtdp_ros.runtime'):
        engine = create_engine(mlore_reference['config'],
                               checkpoint=mlore_reference['checkpoint'], device='auto')
    assert engine.device == 'cpu'
    assert 'CUDA is not available' in caplog.text


@pytest.mark.skipif(not NO_CUDA, reason='this machine has CUDA: the error cannot happen')
def test_cuda_without_cuda_is_a_runtime_error(mlore_reference):
    with pytest.raises(RuntimeError, match='CUDA is not available'):
        create_engine(mlore_reference['config'], checkpoint=mlore_reference['checkpoint'],
                      device='cuda')


def test_fp16_on_cpu_runs_fp32_with_a_warning(mlore_reference, caplog):
    with caplog.at_level(logging.WARNING, logger='mtdp_ros.runtime'):
        engine = create_engine(mlore_reference['config'],
                               checkpoint=mlore_reference['checkpoint'], device='cpu',
                               precision='fp16')
    assert engine.precision == 'fp32'
    assert 'fp16' in caplog.text


def test_default_model_resolves_and_runs():
    engine = create_engine('default', device='cpu')
    assert engine.model_name == 'default_mlore'
    assert engine.config.image_size == (240, 320)
    out = engine.infer(_image(48, 64), tasks=['semseg'])
    assert out['semseg'].shape == (48, 64)


# ---------------------------------------------------------------- CUDA-graph safety (any device)
def test_capture_check_finds_host_synchronisation():
    from mtdp_ros.runtime.graph_safety import capture_blockers

    def clean(x):
        return torch.relu(x) * 2

    def synchronising(x):
        scale = torch.tensor([2.0], device=x.device)            # host data inside forward
        if x.sum() > 0:                                          # .item() on a tensor
            x = x + 1
        return x * scale

    assert capture_blockers(clean, torch.ones(3))[0] == []
    found, result = capture_blockers(synchronising, torch.ones(3))
    assert torch.equal(result, torch.full((3,), 4.0))
    assert any(b.startswith('aten::lift_fresh') for b in found)
    assert any(b.startswith('aten::_local_scalar_dense') for b in found)


@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'train_form'])
@pytest.mark.parametrize('name', ['mlore_nyud_tiny', 'taskdiffusion_nyud_tiny',
                                  'taskdiffusion_mlore_nyud_tiny'])
def test_networks_are_free_of_host_synchronisation(name, fused, request):
    """The CUDA-graph engine needs every network's forward free of host syncs."""
    from mtdp_ros.runtime.graph_safety import capture_blockers
    reference = request.getfixturevalue(name.replace('_nyud_tiny', '_reference'))
    model = build_model(reference['config']).eval()
    if fused and not model.config.has_mlore:
        pytest.skip('TaskDiffusion without MLoRE has no fused form')
    if fused:
        model = reparameterize(model)
    kwargs = {}
    if model.config.is_diffusion:
        kwargs = {'steps': 2, 'noise': reference['initial_noise'][:1]}
    with torch.no_grad():
        blockers, _ = capture_blockers(model, reference['input'][:1], **kwargs)
    assert blockers == [], f'host synchronisation blocks CUDA graph capture: {blockers}'


# ---------------------------------------------------------------- reparameterize option
def test_reparameterize_option_values(mlore_reference, caplog):
    from mtdp_ros.runtime import memory
    config = build_model(mlore_reference['config']).config
    for value, expected in (('true', True), (True, True), ('false', False), (False, False)):
        engine = create_engine(mlore_reference['config'],
                               checkpoint=mlore_reference['checkpoint'], device='cpu',
                               reparameterize=value)
        assert engine.reparameterized is expected
        assert engine.describe()['reparameterize_reason']
    with pytest.raises(ValueError, match='reparameterize must be one of'):
        create_engine(mlore_reference['config'], device='cpu', reparameterize='sometimes')
    # auto: fused when the fused weights fit in half of the free memory, else the train
    # form with the reason logged as a warning.
    fused_bytes = memory.model_memory_bytes(config, 4)
    fuse, reason = memory.decide(config, 'auto', 'cpu', 'fp32', free_bytes=2 * fused_bytes)
    assert fuse and 'fit' in reason
    fuse, reason = memory.decide(config, 'auto', 'cpu', 'fp32', free_bytes=fused_bytes)
    assert not fuse and 'exceed' in reason and 'train form' in reason
    with caplog.at_level(logging.WARNING, logger='mtdp_ros.runtime'):
        memory.log_decision(fuse, reason)
    assert 'MLoRE not re-parameterised' in caplog.text
    # fp16 on CUDA halves what the fused form needs.
    fuse, _ = memory.decide(config, 'auto', 'cuda', 'fp16', free_bytes=fused_bytes)
    assert fuse
    assert memory.available_cpu_bytes() > 0


def test_engine_fuses_on_the_cpu_before_the_device(mlore_reference):
    """The engine's model holds only fused blocks: no train-form block survives creation."""
    from mtdp_ros.models.mlore_block import FusedMLoREBlock, MLoREBlock
    engine = create_engine(mlore_reference['config'], checkpoint=mlore_reference['checkpoint'],
                           device='cpu', reparameterize='true')
    modules = list(engine.model.modules())
    assert not any(isinstance(m, MLoREBlock) for m in modules)
    assert sum(isinstance(m, FusedMLoREBlock) for m in modules) == 8
    x = mlore_reference['input'][:1]
    expected = reparameterize(load_checkpoint(build_model(mlore_reference['config']),
                                              mlore_reference['checkpoint']).eval())(x)
    got = engine.forward(x.numpy())
    for task, value in got.items():
        np.testing.assert_array_equal(value, expected[task].detach().numpy())


def test_torch_engine_step_api(diffusion_engine, mlore_engine):
    assert diffusion_engine.check_steps(5) is None
    assert 'must lie in' in diffusion_engine.check_steps(500)
    assert diffusion_engine.prepare_steps(5) is True
    assert diffusion_engine.wait_for_steps(5, timeout=0)
    assert list(diffusion_engine.available_steps())[:3] == [1, 2, 3]
    assert 'TaskDiffusion models only' in mlore_engine.check_steps(2)
    assert mlore_engine.check_steps(None) is None and mlore_engine.available_steps() == ()


def test_bench_reports_time_to_first_output(mlore_reference, capsys):
    import json
    from mtdp_ros.cli import main as mtdp
    from mtdp_ros.runtime.bench import format_report, run_benchmark
    engine = create_engine(mlore_reference['config'], device='cpu')
    result = run_benchmark(engine, iters=2, warmup=0, image_size=(40, 60), creation_s=0.5)
    startup = result['startup']
    assert startup['first_inference_s'] > 0
    expected = 0.5 + startup['first_inference_s']
    assert startup['time_to_first_output_s'] == pytest.approx(expected, abs=2e-3)
    assert any('time to first output' in line for line in format_report(result))
    code = mtdp(['bench', '--model', 'default', '--device', 'cpu', '--iters', '1',
                 '--warmup', '0', '--image-size', '48x64', '--reparameterize', 'false',
                 '--json'])
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    data = json.loads(printed[-1])
    assert data['reparameterized'] is False
    assert data['startup']['engine_creation_s'] > 0
    assert data['startup']['time_to_first_output_s'] > data['startup']['engine_creation_s']
    assert any(line.strip().startswith('time to first output') for line in printed)
    assert mtdp(['bench', '--model', 'default', '--train-form', '--reparameterize', 'true',
                 '--device', 'cpu']) == 2
