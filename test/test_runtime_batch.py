"""Engine.infer_batch: several cameras' frames in one network pass equal them one by one."""

import numpy as np
import pytest

from mtdp_ros.models import ModelConfig
from mtdp_ros.runtime import create_engine

# Three cameras of different sizes and aspect ratios (two share a size), each with its
# own intrinsics: every frame has its own letterbox and focal correction.
SIZES = [(48, 64), (97, 161), (48, 64), (120, 90)]
INTRINSICS = [(60.0, 60.0, 31.5, 23.5), (150.0, 148.0, 80.0, 48.0), None,
              (80.0, 80.0, 44.5, 59.5)]


def _image(height, width, seed):
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 255 / max(width - 1, 1), ys * 255 / max(height - 1, 1),
                      rng.uniform(0, 255, (height, width))], -1)
    return image.astype(np.uint8)


IMAGES = [_image(h, w, seed) for seed, (h, w) in enumerate(SIZES)]


def _engine(reference, **kwargs):
    # A stated training focal length, so that the focal correction applies.
    config = ModelConfig.from_dict({**ModelConfig.from_dict(reference['config']).to_dict(),
                                    'train_focal_px': 100.0})
    return create_engine(config, checkpoint=reference['checkpoint'], device='cpu', **kwargs)


def _assert_same(batched, single, context):
    assert set(batched) == set(single), context
    for task, value in single.items():
        got = batched[task]
        assert got.shape == value.shape and got.dtype == value.dtype, (context, task)
        if value.dtype in (np.uint8, np.uint16):
            # Labels: an argmax may flip only where two logits tie within float noise.
            assert np.mean(got == value) > 0.999, (context, task)
        else:
            np.testing.assert_allclose(got, value, atol=1e-4, rtol=1e-4,
                                       err_msg=f'{context} {task}')


@pytest.mark.parametrize('reparameterize', ['true', 'false'])
def test_mlore_batch_equals_frames_one_by_one(mlore_reference, reparameterize):
    engine = _engine(mlore_reference, reparameterize=reparameterize)
    batched = engine.infer_batch(IMAGES, intrinsics=INTRINSICS)
    factors = list(engine.last_focal_factors)
    assert len(batched) == len(IMAGES)
    for index, (image, camera) in enumerate(zip(IMAGES, INTRINSICS)):
        single = engine.infer(image, intrinsics=camera)
        assert single['depth'].shape == image.shape[:2]
        _assert_same(batched[index], single, f'frame {index}')
        assert factors[index] == pytest.approx(engine.last_focal_factor)
    # The per-frame focal correction really differs between the cameras.
    assert factors[2] == 1.0 and len(set(factors)) == len(factors)


@pytest.mark.parametrize('name', ['taskdiffusion_reference', 'taskdiffusion_mlore_reference'])
def test_diffusion_batch_draws_one_noise_per_frame(name, request):
    engine = _engine(request.getfixturevalue(name))
    seeds = [0, 5, 9, 5]
    # One step: the outputs depend most on the initial noise (the tiny models' noise
    # scale is small; after more steps two draws differ by ~1e-7 only).
    batched = engine.infer_batch(IMAGES, seeds=seeds, steps=1)
    for index, (image, seed) in enumerate(zip(IMAGES, seeds)):
        _assert_same(batched[index], engine.infer(image, seed=seed, steps=1),
                     f'frame {index} seed {seed}')
    # The same image twice, two seeds: two draws, two different results; one seed: equal.
    twice = engine.infer_batch([IMAGES[0], IMAGES[0]], seeds=[1, 2], steps=1)
    assert np.abs(twice[0]['normals'] - twice[1]['normals']).max() > 5e-4
    same = engine.infer_batch([IMAGES[0], IMAGES[0]], seeds=[3, 3], steps=1)
    np.testing.assert_allclose(same[0]['normals'], same[1]['normals'], atol=1e-5)


def test_batch_timing_is_one_network_pass(mlore_reference):
    engine = _engine(mlore_reference)
    engine.infer_batch(IMAGES[:2], tasks=['depth'])
    assert set(engine.last_timing) == {'preprocess_ms', 'model_ms', 'postprocess_ms'}
    assert engine.last_timing['model_ms'] > 0


@pytest.mark.parametrize('call, words', [
    (lambda e: e.infer_batch([]), 'at least one image'),
    (lambda e: e.infer_batch([IMAGES[0], np.zeros((4, 4), np.uint8)]), 'image 1'),
    (lambda e: e.infer_batch(IMAGES[:2], seeds=[1]), 'one entry per image'),
    (lambda e: e.infer_batch(IMAGES[:2], intrinsics=[None]), 'one entry per image'),
    (lambda e: e.infer_batch(IMAGES[:2], intrinsics=[None, (0, 1, 2, 3)]), 'positive'),
    (lambda e: e.infer_batch(IMAGES[:2], seeds=[0, -1]), 'seed'),
])
def test_bad_batches_raise_value_error(mlore_reference, call, words):
    with pytest.raises(ValueError, match=words):
        call(_engine(mlore_reference))


def test_onnxruntime_batch_equals_frames_one_by_one(mlore_reference, tmp_path):
    engine = _engine(mlore_reference, backend='onnxruntime', cache_dir=str(tmp_path))
    batched = engine.infer_batch(IMAGES, intrinsics=INTRINSICS)
    for index, (image, camera) in enumerate(zip(IMAGES, INTRINSICS)):
        _assert_same(batched[index], engine.infer(image, intrinsics=camera), f'frame {index}')
