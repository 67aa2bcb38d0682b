"""GPU paths of the runtime: CUDA eager, CUDA graphs, fp16, pinned memory, ORT on CUDA/TRT.

Everything here needs a CUDA GPU and is skipped, with that reason, without one. The ORT
tests also need onnxruntime-gpu (CUDA / TensorRT execution providers).
"""

import logging
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mtdp_ros.runtime import create_engine, export_onnx
from mtdp_ros.runtime.bench import run_benchmark

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='needs a CUDA GPU (runs on the device machine)')
ORT_PROVIDERS = ort.get_available_providers()


@pytest.fixture(autouse=True)
def strict_fp32():
    """Compare fp32 paths without TF32 (cuDNN enables it for convolutions by default)."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _engine(reference, **kwargs):
    return create_engine(reference['config'], checkpoint=reference['checkpoint'], **kwargs)


def _assert_outputs_close(got, want, label_agreement=0.999, atol=1e-4, fraction=1.0):
    """Labels agree on ``label_agreement`` of the pixels; other values within ``atol`` on
    ``fraction`` of the elements (NaN where the other is NaN)."""
    assert set(got) == set(want)
    for task in got:
        assert got[task].shape == want[task].shape and got[task].dtype == want[task].dtype
        if task in ('semseg', 'human_parts'):
            assert np.mean(got[task] == want[task]) >= label_agreement, task
            continue
        a, b = got[task], want[task]
        assert np.array_equal(np.isnan(a), np.isnan(b)) or fraction < 1.0, task
        both = ~np.isnan(a) & ~np.isnan(b)
        if not both.any():
            continue  # e.g. random weights predicting no valid depth anywhere, on both
        close = np.abs(a[both] - b[both]) <= atol
        assert close.mean() >= fraction, f'{task}: {close.mean():.4f} within {atol}'


@pytest.mark.parametrize('name', ['mlore', 'taskdiffusion', 'taskdiffusion_mlore'])
def test_cuda_eager_matches_cpu(name, request):
    reference = request.getfixturevalue(f'{name}_reference')
    cpu = _engine(reference, device='cpu')
    cuda = _engine(reference, device='cuda', cuda_graphs=False)
    assert cuda.device == 'cuda'
    image = _image(100, 150)
    _assert_outputs_close(cuda.infer(image), cpu.infer(image))
    x = reference['input'][:1].numpy()
    got, want = cuda.forward(x), cpu.forward(x)
    for task in got:
        np.testing.assert_allclose(got[task], want[task], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('name', ['mlore', 'taskdiffusion', 'taskdiffusion_mlore'])
def test_cuda_graphs_match_eager_and_follow_new_inputs(name, request):
    reference = request.getfixturevalue(f'{name}_reference')
    eager = _engine(reference, device='cuda', cuda_graphs=False)
    graphs = _engine(reference, device='cuda', cuda_graphs=True)
    steps_list = (1, 3) if eager.config.is_diffusion else (None,)
    for steps in steps_list:
        for seed_image in range(3):                       # replays see each new image
            image = _image(120, 160, seed=seed_image)
            _assert_outputs_close(graphs.infer(image, steps=steps),
                                  eager.infer(image, steps=steps))
    keys = graphs.captured_keys
    assert len(keys) == len(steps_list), f'no CUDA graph was captured (see the log): {keys}'
    assert {k[1] for k in keys} == set(steps_list)
    # A different image size is a new key; a new seed reuses the graph with new noise.
    _assert_outputs_close(graphs.infer(_image(60, 90)), eager.infer(_image(60, 90)))
    if eager.config.is_diffusion:
        image = _image(120, 160)
        _assert_outputs_close(graphs.infer(image, seed=5), eager.infer(image, seed=5))
        assert not np.array_equal(graphs.infer(image, seed=5)['edge'],
                                  graphs.infer(image, seed=0)['edge'])
    assert all(v > 0 for v in graphs.last_timing.values())


def test_fp16_close_to_fp32(mlore_reference, taskdiffusion_reference):
    for reference in (mlore_reference, taskdiffusion_reference):
        fp32 = _engine(reference, device='cuda', cuda_graphs=False)
        fp16 = _engine(reference, device='cuda', precision='fp16')
        assert fp16.precision == 'fp16'
        assert next(fp16.model.parameters()).dtype == torch.float16
        image = _image(64, 96, seed=3)
        got, want = fp16.infer(image), fp32.infer(image)
        assert got['depth'].dtype == np.float32
        _assert_outputs_close(got, want, label_agreement=0.97, atol=0.05, fraction=0.99)


def test_uploads_use_pinned_memory(mlore_reference):
    engine = _engine(mlore_reference, device='cuda')
    engine.infer(_image(70, 80))
    buffers = list(engine._staging.values())
    assert buffers and all(b.is_pinned() for b in buffers)


def test_train_form_and_fused_agree_on_cuda(mlore_reference):
    fused = _engine(mlore_reference, device='cuda')
    unfused = _engine(mlore_reference, device='cuda', reparameterize=False)
    x = mlore_reference['input'][:1].numpy()
    got, want = fused.forward(x), unfused.forward(x)
    for task in got:
        np.testing.assert_allclose(got[task], want[task], atol=1e-4, rtol=1e-4)


def test_bench_on_cuda_reports_device_memory(mlore_reference):
    engine = _engine(mlore_reference, device='cuda', precision='fp16')
    result = run_benchmark(engine, iters=5, warmup=2, image_size=(120, 160))
    assert result['memory_measure'] == 'cuda_peak_allocated' and result['gpu']
    assert result['network']['peak_memory_mb'] > 0
    assert result['end_to_end']['p50_ms'] > 0


@pytest.fixture(scope='module')
def mlore_onnx(tmp_path_factory, mlore_reference):
    path = str(tmp_path_factory.mktemp('gpu_onnx') / 'mlore.onnx')
    export_onnx(mlore_reference['config'], path, checkpoint=mlore_reference['checkpoint'])
    return path


@pytest.mark.skipif('CUDAExecutionProvider' not in ORT_PROVIDERS,
                    reason='onnxruntime has no CUDA provider (install onnxruntime-gpu)')
def test_ort_cuda_provider_with_io_binding(mlore_onnx, mlore_reference):
    engine = create_engine(mlore_onnx, backend='onnxruntime', device='cuda',
                           providers=['cuda', 'cpu'])
    assert engine.device == 'cuda' and engine.active_providers[0] == 'CUDAExecutionProvider'
    assert engine.io_binding
    image = _image(100, 150)
    _assert_outputs_close(engine.infer(image), _engine(mlore_reference, device='cpu')
                          .infer(image), atol=1e-3)


@pytest.mark.skipif('TensorrtExecutionProvider' not in ORT_PROVIDERS,
                    reason='onnxruntime has no TensorRT provider')
def test_ort_tensorrt_fp16_with_engine_cache(mlore_onnx, mlore_reference, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger='mtdp_ros.runtime'):
        engine = create_engine(mlore_onnx, backend='onnxruntime', device='cuda',
                               precision='fp16', trt_cache_dir=str(tmp_path))
    if engine.active_providers[0] != 'TensorrtExecutionProvider':
        pytest.skip(f'TensorRT did not start here: {caplog.text[-500:]}')
    assert engine.precision == 'fp16'
    image = _image(64, 96)
    _assert_outputs_close(engine.infer(image), _engine(mlore_reference, device='cpu')
                          .infer(image), label_agreement=0.97, atol=0.05, fraction=0.99)
    assert os.listdir(tmp_path), 'TensorRT wrote no engine cache'


def test_taskdiffusion_graphs_are_keyed_without_the_task_list(taskdiffusion_reference):
    """One capture serves every task selection (the network computes all tasks anyway)."""
    eager = _engine(taskdiffusion_reference, device='cuda', cuda_graphs=False)
    graphs = _engine(taskdiffusion_reference, device='cuda', cuda_graphs=True)
    image = _image(60, 90)
    for tasks in (['edge'], ['depth', 'edge'], None):
        got = graphs.infer(image, tasks=tasks)
        want = eager.infer(image, tasks=tasks)
        assert set(got) == set(want)
        _assert_outputs_close(got, want)
    assert len(graphs.captured_keys) == 1, graphs.captured_keys
    assert graphs.captured_keys[0][2] == graphs.tasks


def test_engine_creation_peak_on_cuda_is_the_final_form(mlore_reference):
    """Built and fused on the CPU, moved and cast once: the device never holds more."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    engine = _engine(mlore_reference, device='cuda', precision='fp16', reparameterize='true')
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated() - before
    peak = torch.cuda.max_memory_allocated() - before
    assert engine.reparameterized and resident > 0
    assert peak <= 1.3 * resident, (peak, resident)
    engine.close()


def test_fp16_time_embedding_frequencies_stay_float32(taskdiffusion_reference):
    engine = _engine(taskdiffusion_reference, device='cuda', precision='fp16')
    embedding = engine.model.diffusion.time_embed
    assert embedding[0].weights.dtype == torch.float32
    assert embedding[0].weights.device.type == 'cuda'
    assert embedding[1].weight.dtype == torch.float16


@pytest.mark.parametrize('name', ['taskdiffusion', 'taskdiffusion_mlore'])
def test_warm_start_graphs_match_eager_and_follow_the_previous_map(name, request):
    """Warm-started calls have graphs keyed by strength; the state flows through them."""
    reference = request.getfixturevalue(f'{name}_reference')
    eager = _engine(reference, device='cuda', cuda_graphs=False)
    graphs = _engine(reference, device='cuda', cuda_graphs=True)
    image = _image(120, 160)
    _, state = eager.infer(image, steps=1, return_state=True)
    _, graph_state = graphs.infer(image, steps=1, return_state=True)
    torch.testing.assert_close(graph_state, state, atol=1e-5, rtol=0)
    for strength in (0.5, 0.2):
        for seed_image in range(2):                     # replays see each new map and image
            frame = _image(120, 160, seed=seed_image)
            want, want_state = eager.infer(frame, steps=1, init=state, strength=strength,
                                           return_state=True)
            got, got_state = graphs.infer(frame, steps=1, init=state, strength=strength,
                                          return_state=True)
            _assert_outputs_close(got, want)
            torch.testing.assert_close(got_state, want_state, atol=1e-5, rtol=0)
            state = want_state
    modes = sorted(str(key[3]) for key in graphs.captured_keys)
    assert modes == ["('state', 0.2)", "('state', 0.5)", "('state', 1.0)"], modes
    # The state returned is the caller's: the next replay does not overwrite it.
    kept = got_state.clone()
    graphs.infer(_image(120, 160, seed=9), steps=1, init=state, strength=0.2,
                 return_state=True)
    assert torch.equal(kept, got_state)


def test_warm_batch_on_cuda_matches_each_frame_alone(taskdiffusion_reference):
    """Warm and cold frames in one infer_batch (eager on CUDA) equal each frame's own call."""
    engine = _engine(taskdiffusion_reference, device='cuda', cuda_graphs=True)
    images = [_image(120, 160, seed=0), _image(96, 128, seed=1), _image(120, 160, seed=2)]
    states = [engine.infer(image, steps=2, seed=index, return_state=True)[1]
              for index, image in enumerate(images)]
    strengths = [0.3, None, 0.3]
    outputs, got_states = engine.infer_batch(images, steps=2, seeds=[0, 1, 2], inits=states,
                                             strengths=strengths, return_state=True)
    assert engine.last_timing['model_ms'] > 0
    for index, image in enumerate(images):
        want, want_state = engine.infer(image, steps=2, seed=index, init=states[index],
                                        strength=strengths[index] or 1.0, return_state=True)
        _assert_outputs_close(outputs[index], want)
        assert got_states[index].device.type == 'cuda'
        torch.testing.assert_close(got_states[index], want_state, atol=1e-4, rtol=0)
