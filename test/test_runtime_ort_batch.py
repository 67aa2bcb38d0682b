"""ONNX Runtime with several cameras: a dynamic-batch graph runs a batch in one graph run.

A fused MLoRE block applies one kernel per sample; PyTorch does that with one grouped
convolution, but an ONNX ``Conv`` fixes its group count (hence the batch), so a
dynamic-batch export writes the same sum as shifted views times the kernels. These tests
check that form against the grouped convolution, every family's dynamic-batch graph
against the PyTorch engine frame by frame, and what the engine does with a batch-1 file.
"""

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtdp_ros.models import ModelConfig
from mtdp_ros.models.mlore_block import per_sample_conv3x3
from mtdp_ros.runtime import create_engine
from mtdp_ros.runtime.onnx_export import export_onnx, read_onnx_metadata
from mtdp_ros.runtime.ort_cache import cached_graph_path

# Three cameras of different sizes and aspect ratios, each with its own intrinsics.
SIZES = [(48, 64), (97, 161), (120, 90)]
INTRINSICS = [(60.0, 60.0, 31.5, 23.5), None, (80.0, 80.0, 44.5, 59.5)]
SEEDS = [0, 5, 9]


def _image(height, width, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


IMAGES = [_image(h, w, seed) for seed, (h, w) in enumerate(SIZES)]


def _config(reference):
    # A stated training focal length, so that the per-frame focal correction applies.
    return ModelConfig.from_dict({**ModelConfig.from_dict(reference['config']).to_dict(),
                                  'train_focal_px': 100.0})


def _assert_close(got, expected, context):
    assert set(got) == set(expected), context
    for task, value in expected.items():
        assert got[task].shape == value.shape and got[task].dtype == value.dtype, context
        if value.dtype in (np.uint8, np.uint16):
            # Labels: an argmax may flip only where two logits tie within float noise.
            assert np.mean(got[task] == value) > 0.999, (context, task)
        else:
            np.testing.assert_allclose(got[task], value, atol=1e-4, rtol=1e-4,
                                       err_msg=f'{context} {task}')


def test_any_batch_form_equals_the_grouped_convolution():
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn((6, 5, 7, 9), generator=generator)
    kernels = torch.randn((6, 4, 5, 3, 3), generator=generator)
    biases = torch.randn((6, 4), generator=generator)
    grouped = per_sample_conv3x3(maps, kernels, biases)
    shifted = per_sample_conv3x3(maps, kernels, biases, any_batch=True)
    assert grouped.shape == shifted.shape == (6, 4, 7, 9)
    torch.testing.assert_close(shifted, grouped, atol=1e-5, rtol=1e-5)
    # Each map with its own kernel: against six separate convolutions.
    for index in range(6):
        alone = F.conv2d(maps[index:index + 1], kernels[index], biases[index], padding=1)
        torch.testing.assert_close(shifted[index:index + 1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('name, reparameterize', [
    ('mlore_reference', 'true'), ('mlore_reference', 'false'),
    ('taskdiffusion_reference', 'auto'), ('taskdiffusion_mlore_reference', 'true')])
def test_dynamic_batch_graph_equals_torch_frame_by_frame(name, reparameterize, request,
                                                         tmp_path):
    reference = request.getfixturevalue(name)
    config = _config(reference)
    options = dict(checkpoint=reference['checkpoint'], device='cpu',
                   reparameterize=reparameterize)
    reference_engine = create_engine(config, **options)
    engine = create_engine(config, backend='onnxruntime', cache_dir=str(tmp_path),
                           dynamic_batch=True, **options)
    assert engine.batches_in_one_pass and engine.describe()['dynamic_batch']
    steps = 1 if engine.diffusion else None    # one step: the noise shows most
    session = engine._session(engine.resolve_steps(steps))
    assert [i.shape[0] for i in session.get_inputs()] == ['batch'] * len(
        session.get_inputs())
    batched = engine.infer_batch(IMAGES, seeds=SEEDS, intrinsics=INTRINSICS, steps=steps)
    factors = list(engine.last_focal_factors)
    for index, (image, seed, camera) in enumerate(zip(IMAGES, SEEDS, INTRINSICS)):
        expected = reference_engine.infer(image, seed=seed, intrinsics=camera, steps=steps)
        _assert_close(batched[index], expected, f'{name} frame {index}')
        assert factors[index] == pytest.approx(reference_engine.last_focal_factor)
    # A single frame through the same graph (batch 1 of the dynamic axis).
    _assert_close(engine.infer(IMAGES[1], seed=SEEDS[1], steps=steps), reference_engine.infer(
        IMAGES[1], seed=SEEDS[1], steps=steps), f'{name} alone')


def test_batch_one_file_runs_frames_one_at_a_time(mlore_reference, tmp_path, caplog):
    config = _config(mlore_reference)
    path = str(tmp_path / 'batch1.onnx')
    info = export_onnx(config, path, checkpoint=mlore_reference['checkpoint'])
    assert info['dynamic_batch'] is False and not read_onnx_metadata(path)['dynamic_batch']
    with caplog.at_level(logging.WARNING, logger='mtdp_ros.runtime'):
        engine = create_engine(path, backend='onnxruntime', device='cpu', dynamic_batch=True)
    assert 'batch-1 graph' in caplog.text and '--dynamic-batch' in caplog.text
    assert not engine.batches_in_one_pass
    batched = engine.infer_batch(IMAGES, intrinsics=INTRINSICS)
    for index, (image, camera) in enumerate(zip(IMAGES, INTRINSICS)):
        _assert_close(batched[index], engine.infer(image, intrinsics=camera),
                      f'frame {index}')


def test_export_command_writes_a_dynamic_batch_graph(mlore_reference, tmp_path):
    import onnxruntime as ort
    checkpoint = tmp_path / 'tiny.safetensors'
    from mtdp_ros.models import build_model, load_checkpoint, save_checkpoint
    model = build_model(mlore_reference['config'])
    load_checkpoint(model, mlore_reference['checkpoint'])
    save_checkpoint(model, str(checkpoint))
    output = tmp_path / 'any_batch.onnx'
    done = subprocess.run([sys.executable, '-m', 'mtdp_ros.cli', 'export', '--model',
                           str(checkpoint),
                           '--output', str(output), '--dynamic-batch', '--verify'],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert 'any batch size' in done.stdout
    assert read_onnx_metadata(str(output))['dynamic_batch']
    session = ort.InferenceSession(str(output), providers=['CPUExecutionProvider'])
    height, width = mlore_reference['config']['image_size']
    rows = np.random.default_rng(1).standard_normal((4, 3, height, width)).astype(np.float32)
    together = session.run(None, {'images': rows})
    for index in range(4):
        alone = session.run(None, {'images': rows[index:index + 1]})
        for got, expected in zip(together, alone):
            np.testing.assert_allclose(got[index:index + 1], expected, atol=1e-5, rtol=1e-5)


def test_cached_graphs_of_both_kinds_live_apart(mlore_reference):
    config = _config(mlore_reference)
    arguments = ('/cache', 'tiny', config, None, 'random', True, 'tag')
    batch_one = cached_graph_path(*arguments)
    assert cached_graph_path(*arguments, dynamic_batch=False) == batch_one
    any_batch = cached_graph_path(*arguments, dynamic_batch=True)
    assert any_batch != batch_one and any_batch.endswith('-batch.onnx')
