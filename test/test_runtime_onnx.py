"""ONNX export and the ONNX Runtime engine on the tiny reference models (CPU provider).

The graphs are exported once per module through the real ``mtdp export`` command, from real
files (a project .safetensors checkpoint and a YAML config), then run with ONNX Runtime.
"""

import json
import logging
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml

from mtdp_ros.cli import main as mtdp
from mtdp_ros.models import build_model, load_checkpoint, reparameterize, save_checkpoint
from mtdp_ros.runtime import create_engine, read_onnx_metadata, select_providers
from mtdp_ros.runtime.ort_providers import CPU, CUDA, TENSORRT

# Slow (ONNX exports of every family): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow
GPU_PROVIDER = any(p in ort.get_available_providers() for p in (CUDA, TENSORRT))
# Fraction of elements within the element tolerance for TaskDiffusion (README of the
# reference vectors: an argmax inside the sampler may flip on a near-tie).
DIFFUSION_FRACTION_WITHIN = 0.999


def _write_model_files(reference, directory, name):
    model = load_checkpoint(build_model(reference['config']), reference['checkpoint'])
    checkpoint = save_checkpoint(model, os.path.join(directory, f'{name}.safetensors'))
    config = os.path.join(directory, f'{name}.yaml')
    with open(config, 'w') as handle:
        yaml.safe_dump(model.config.to_dict(), handle)
    return config, checkpoint


@pytest.fixture(scope='module')
def exported(tmp_path_factory, mlore_reference, taskdiffusion_reference):
    """{'mlore': (onnx, config, checkpoint), 'taskdiffusion': ...} exported by `mtdp export`."""
    directory = str(tmp_path_factory.mktemp('onnx'))
    files = {}
    # MLoRE goes through the external-data layout (what models above 2 GiB use) and the
    # exporter's own ORT-vs-PyTorch check; TaskDiffusion through the single-file layout.
    for name, reference, extra in (('mlore', mlore_reference, ['--external-data', '--verify']),
                                   ('taskdiffusion', taskdiffusion_reference, ['--steps', '3'])):
        config, checkpoint = _write_model_files(reference, directory, name)
        output = os.path.join(directory, f'{name}.onnx')
        code = mtdp(['export', '--model', config, '--checkpoint', checkpoint,
                     '--output', output, *extra])
        assert code == 0
        files[name] = (output, config, checkpoint)
    return files


def _session(path):
    return ort.InferenceSession(path, providers=['CPUExecutionProvider'])


def test_mlore_graph_interface_and_metadata(exported, mlore_reference):
    path = exported['mlore'][0]
    onnx.checker.check_model(path, full_check=True)
    assert os.path.getsize(path + '.data') > 4 * os.path.getsize(path)
    assert not os.path.exists(exported['taskdiffusion'][0] + '.data')
    proto = onnx.load(path)
    assert [i.name for i in proto.graph.input] == ['images']
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 96]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in proto.graph.output] == ['semseg', 'depth', 'normals', 'edge']
    assert max(o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')) >= 17
    meta = read_onnx_metadata(path)
    assert meta['reparameterized'] and meta['steps'] is None and not meta['random_weights']
    assert meta['config'].to_dict() == build_model(mlore_reference['config']).config.to_dict()
    # Re-parameterised: one grouped convolution per MLoRE block, kernels computed in-graph.
    grouped = [n for n in proto.graph.node if n.op_type == 'Conv'
               and any(a.name == 'group' and a.i > 1 for a in n.attribute)
               and any(a.name == 'kernel_shape' and list(a.ints) == [3, 3]
                       for a in n.attribute)]
    assert len(grouped) == 8                           # 2 blocks x 4 levels (3x3 fused)


def test_mlore_onnx_matches_pytorch_and_the_authors(exported, mlore_reference):
    model = reparameterize(load_checkpoint(build_model(mlore_reference['config']),
                                           mlore_reference['checkpoint']).eval())
    session = _session(exported['mlore'][0])
    for index in range(mlore_reference['input'].shape[0]):
        x = mlore_reference['input'][index:index + 1]
        values = dict(zip(['semseg', 'depth', 'normals', 'edge'],
                          session.run(None, {'images': x.numpy()})))
        with torch.no_grad():
            expected = model(x)
        for task, value in values.items():
            assert value.shape == tuple(expected[task].shape)
            np.testing.assert_allclose(value, expected[task].numpy(), atol=1e-3, rtol=0)
            np.testing.assert_allclose(value, mlore_reference['outputs'][task][index:index + 1],
                                       atol=1e-3, rtol=0)


def test_taskdiffusion_onnx_matches_pytorch_and_the_authors(exported, taskdiffusion_reference):
    path = exported['taskdiffusion'][0]
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ['images', 'noise']
    assert session.get_inputs()[1].shape == [1, 32, 4, 6]
    assert read_onnx_metadata(path)['steps'] == 3
    model = load_checkpoint(build_model(taskdiffusion_reference['config']),
                            taskdiffusion_reference['checkpoint']).eval()
    reference = taskdiffusion_reference['outputs_by_steps'][3]
    for index in range(2):
        x = taskdiffusion_reference['input'][index:index + 1]
        noise = taskdiffusion_reference['initial_noise'][index:index + 1]
        values = dict(zip(model.config.tasks,
                          session.run(None, {'images': x.numpy(), 'noise': noise.numpy()})))
        with torch.no_grad():
            expected = model(x, steps=3, noise=noise)
        for task, value in values.items():
            np.testing.assert_allclose(value, expected[task].numpy(), atol=1e-3, rtol=0)
            authors = reference[task][index:index + 1].numpy()
            assert np.abs(value - authors).mean() <= 1e-4, task
            assert np.mean(np.abs(value - authors) <= 1e-3) >= DIFFUSION_FRACTION_WITHIN, task


def test_ort_engine_matches_torch_engine(exported, mlore_reference, taskdiffusion_reference):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)
    for name, reference in (('mlore', mlore_reference),
                            ('taskdiffusion', taskdiffusion_reference)):
        onnx_path, config, checkpoint = exported[name]
        ort_engine = create_engine(onnx_path, backend='onnxruntime', device='cpu')
        torch_engine = create_engine(config, checkpoint=checkpoint, device='cpu')
        assert ort_engine.backend == 'onnxruntime' and ort_engine.device == 'cpu'
        assert ort_engine.active_providers == (CPU,)
        assert not ort_engine.random_weights
        got, want = ort_engine.infer(image), torch_engine.infer(image)
        assert set(got) == set(want) == set(reference['config']['tasks'])
        for task in got:
            assert got[task].shape == want[task].shape and got[task].dtype == want[task].dtype
        assert np.mean(got['semseg'] == want['semseg']) >= 0.999
        for task in ('depth', 'normals', 'edge'):
            np.testing.assert_allclose(got[task], want[task], atol=1e-3, equal_nan=True)
        raw = ort_engine.forward(reference['input'][:1].numpy(), tasks=['edge'])
        assert set(raw) == {'edge'} and raw['edge'].shape == (1, 1, 64, 96)
        assert set(ort_engine.last_timing) == {'preprocess_ms', 'model_ms', 'postprocess_ms'}


def test_ort_engine_steps_and_seeds(exported):
    engine = create_engine(exported['taskdiffusion'][0], backend='onnxruntime', device='cpu')
    assert engine.default_steps == 3
    image = np.full((64, 96, 3), 90, np.uint8)
    first = engine.infer(image)
    np.testing.assert_array_equal(engine.infer(image, seed=0)['edge'], first['edge'])
    assert not np.array_equal(engine.infer(image, seed=3)['edge'], first['edge'])
    with pytest.raises(ValueError, match='exported for 3 steps'):
        engine.infer(image, steps=1)
    with pytest.raises(ValueError, match='exported for 3 steps'):
        create_engine(exported['taskdiffusion'][0], backend='onnxruntime', steps=5)


def test_ort_engine_exports_on_demand_into_its_cache(exported, tmp_path, caplog):
    _, config, checkpoint = exported['mlore']
    with caplog.at_level(logging.INFO, logger='mtdp_ros.runtime'):
        engine = create_engine(config, checkpoint=checkpoint, backend='onnxruntime',
                               device='cpu', cache_dir=str(tmp_path))
    cached = os.listdir(tmp_path / 'onnx')
    assert len(cached) == 1 and cached[0].endswith('.onnx')
    assert 'exporting' in caplog.text
    out = engine.infer(np.zeros((30, 30, 3), np.uint8), tasks=['semseg'])
    assert out['semseg'].shape == (30, 30)
    # A second engine reuses the cached graph.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='mtdp_ros.runtime'):
        create_engine(config, checkpoint=checkpoint, backend='onnxruntime', device='cpu',
                      cache_dir=str(tmp_path))
    assert 'exporting' not in caplog.text


def test_onnx_file_with_checkpoint_or_foreign_file_is_refused(exported, tmp_path):
    with pytest.raises(ValueError, match='carries its weights'):
        create_engine(exported['mlore'][0], checkpoint=exported['mlore'][2],
                      backend='onnxruntime')
    foreign = tmp_path / 'foreign.onnx'
    proto = onnx.load(exported['mlore'][0])
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(ValueError, match='not exported by mtdp'):
        create_engine(str(foreign), backend='onnxruntime')
    with pytest.raises(ValueError, match='ONNX file'):
        create_engine(exported['mlore'][0], backend='torch')


# ---------------------------------------------------------------- provider selection
AVAILABLE_GPU = [TENSORRT, CUDA, 'AzureExecutionProvider', CPU]
AVAILABLE_CPU = ['AzureExecutionProvider', CPU]


def _names(providers):
    return [name for name, _ in providers]


def test_default_preference_is_tensorrt_cuda_cpu(tmp_path):
    providers, notes = select_providers('auto', 'fp16', AVAILABLE_GPU,
                                        trt_cache_dir=str(tmp_path))
    assert _names(providers) == [TENSORRT, CUDA, CPU] and notes == []
    trt = providers[0][1]
    assert trt['trt_fp16_enable'] is True and trt['trt_engine_cache_enable'] is True
    assert trt['trt_engine_cache_path'] == str(tmp_path)
    providers, _ = select_providers('auto', 'fp32', AVAILABLE_GPU)
    assert providers[0][1]['trt_fp16_enable'] is False


def test_preference_order_and_aliases_are_kept():
    providers, _ = select_providers('cuda', 'fp32', AVAILABLE_GPU, ['cuda', 'trt'])
    assert _names(providers) == [CUDA, TENSORRT, CPU]
    providers, _ = select_providers('auto', 'fp32', AVAILABLE_GPU, 'cpu')
    assert _names(providers) == [CPU]


def test_device_cpu_keeps_only_the_cpu():
    providers, notes = select_providers('cpu', 'fp32', AVAILABLE_GPU)
    assert _names(providers) == [CPU] and notes == []


def test_missing_gpu_providers_fall_back_with_notes():
    providers, notes = select_providers('auto', 'fp32', AVAILABLE_CPU)
    assert _names(providers) == [CPU]
    assert ('warning', 'no GPU execution provider: running on the CPU') in notes
    # Defaults that are missing are information; a provider the user named is a warning.
    assert [level for level, _ in notes].count('info') == 2
    _, notes = select_providers('auto', 'fp32', AVAILABLE_CPU, ['tensorrt', 'cpu'])
    assert any(level == 'warning' and TENSORRT in text for level, text in notes)


def test_cuda_fallback_when_tensorrt_is_missing_and_fp16_note():
    providers, notes = select_providers('auto', 'fp16', [CUDA, CPU])
    assert _names(providers) == [CUDA, CPU]
    assert any('fp16 applies to the TensorRT provider only' in text for _, text in notes)


def test_device_cuda_without_gpu_provider_is_a_runtime_error():
    with pytest.raises(RuntimeError, match='no GPU provider'):
        select_providers('cuda', 'fp32', AVAILABLE_CPU)


@pytest.mark.parametrize('preference, message', [(['opencl'], 'unknown execution provider'),
                                                 ([], 'empty')])
def test_bad_provider_lists(preference, message):
    with pytest.raises(ValueError, match=message):
        select_providers('auto', 'fp32', AVAILABLE_GPU, preference)


@pytest.mark.skipif(GPU_PROVIDER, reason='onnxruntime has a GPU provider here: no fallback')
def test_real_session_falls_back_to_cpu_with_a_warning(exported, caplog):
    with caplog.at_level(logging.INFO, logger='mtdp_ros.runtime'):
        engine = create_engine(exported['mlore'][0], backend='onnxruntime', device='auto',
                               precision='fp16', providers=['tensorrt', 'cuda', 'cpu'])
    assert engine.device == 'cpu' and engine.precision == 'fp32'
    assert engine.active_providers == (CPU,)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any('TensorrtExecutionProvider is not available' in w for w in warnings)
    assert any('running on the CPU' in w for w in warnings)
    with pytest.raises(RuntimeError, match='no GPU provider'):
        create_engine(exported['mlore'][0], backend='onnxruntime', device='cuda')


def test_mtdp_bench_onnxruntime_json(exported, capsys):
    code = mtdp(['bench', '--model', exported['mlore'][0], '--backend', 'onnxruntime',
                 '--device', 'cpu', '--iters', '3', '--warmup', '1', '--json'])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['backend'] == 'onnxruntime' and result['providers'] == [CPU]
    assert result['network']['iters'] == 3
    assert 0 < result['network']['p50_ms'] <= result['network']['p95_ms']


def test_mtdp_export_refuses_bad_requests(exported, tmp_path, capsys):
    _, config, checkpoint = exported['mlore']
    assert mtdp(['export', '--model', config, '--output', str(tmp_path / 'x.txt')]) == 2
    assert 'must end in .onnx' in capsys.readouterr().err
    assert mtdp(['export', '--model', config, '--checkpoint', checkpoint, '--steps', '2',
                 '--output', str(tmp_path / 'x.onnx')]) == 2
    assert 'TaskDiffusion' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'x.onnx')


def test_tensorrt_and_cuda_provider_options(tmp_path):
    """The option lists handed to ORT (only the CPU provider exists on this machine)."""
    providers, _ = select_providers('cuda', 'fp16', AVAILABLE_GPU, trt_cache_dir=str(tmp_path),
                                    device_id=1, trt_workspace_mb=2048)
    assert providers == [
        (TENSORRT, {'device_id': 1, 'trt_fp16_enable': True,
                    'trt_engine_cache_enable': True, 'trt_engine_cache_path': str(tmp_path),
                    'trt_timing_cache_enable': True, 'trt_timing_cache_path': str(tmp_path),
                    'trt_max_workspace_size': 2048 * 2 ** 20}),
        (CUDA, {'device_id': 1}),
        (CPU, {})]
    # Without a workspace limit ORT's default applies (the key is absent).
    providers, _ = select_providers('auto', 'fp32', AVAILABLE_GPU)
    assert 'trt_max_workspace_size' not in providers[0][1]
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match='trt_workspace_mb'):
            select_providers('auto', 'fp32', AVAILABLE_GPU, trt_workspace_mb=bad)


def test_engine_passes_provider_options_to_its_sessions(exported, tmp_path):
    engine = create_engine(exported['mlore'][0], backend='onnxruntime', device='cpu',
                           trt_cache_dir=str(tmp_path), trt_workspace_mb=512)
    # On this CPU-only build the GPU providers are filtered out before the session starts.
    assert engine.providers == [(CPU, {})]
    with pytest.raises(ValueError, match='unknown options'):
        create_engine(exported['mlore'][0], backend='onnxruntime', trt_workspace=1)


def test_fixed_file_step_api(exported):
    engine = create_engine(exported['taskdiffusion'][0], backend='onnxruntime', device='cpu')
    assert engine.available_steps() == (3,)
    assert engine.check_steps(3) is None and engine.check_steps(None) is None
    reason = engine.check_steps(5)
    assert 'exported for 3 steps' in reason and 'cannot run 5' in reason
    assert 'must lie in' in engine.check_steps(0)
    with pytest.raises(ValueError, match='exported for 3 steps'):
        engine.prepare_steps(5)
    assert engine.prepare_steps(3) is True and engine.wait_for_steps(3, timeout=0)
    mlore = create_engine(exported['mlore'][0], backend='onnxruntime', device='cpu')
    assert mlore.available_steps() == ()
    assert 'TaskDiffusion models only' in mlore.check_steps(2)
    assert mlore.reparameterized and mlore.describe()['reparameterize_reason']


def test_cached_engine_prepares_a_step_count_in_the_background(exported, tmp_path):
    """A background export while the old count serves; then the new count (one engine)."""
    _, config, checkpoint = exported['taskdiffusion']
    engine = create_engine(config, checkpoint=checkpoint, backend='onnxruntime',
                           device='cpu', cache_dir=str(tmp_path), steps=1)
    image = np.full((64, 96, 3), 90, np.uint8)
    one_step = engine.infer(image)
    assert engine.available_steps() == (1,)
    assert engine.prepare_steps(2) is False
    # Asked for 2 while it is prepared: 1 step serves (and says so).
    served = engine.infer(image, steps=2)
    if not engine.wait_for_steps(2, timeout=0):
        assert engine.last_steps == 1
        np.testing.assert_array_equal(served['edge'], one_step['edge'])
    assert engine.wait_for_steps(2, timeout=300)
    two_steps = engine.infer(image, steps=2)
    assert engine.last_steps == 2 and engine.available_steps() == (1, 2)
    assert not np.array_equal(two_steps['edge'], one_step['edge'])
    assert engine.prepare_steps(2) is True


def test_ort_engine_serves_cold_starts_only(exported):
    engine = create_engine(exported['taskdiffusion'][0], backend='onnxruntime', device='cpu')
    image = np.full((64, 96, 3), 90, np.uint8)
    init = torch.zeros(engine.noise_shape())
    for kwargs in ({'return_state': True}, {'init': init, 'strength': 0.5}, {'strength': 0.5}):
        with pytest.raises(ValueError, match='onnxruntime engine serves cold starts only'):
            engine.infer(image, **kwargs)
    assert set(engine.infer(image, strength=1.0)) == set(engine.tasks)
