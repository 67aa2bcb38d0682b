"""Camera-aware metric depth, runtime: the correction factor and the engines applying it."""

import logging

import numpy as np
import pytest

from mtdp_ros.runtime import create_engine, plan_letterbox
from mtdp_ros.runtime.postprocess import check_intrinsics, focal_correction_factor

KINECT_FX = 518.8579
# Half the Kinect's focal length: the shipped models see 640 x 480 at half scale.
DEFAULT_FX = KINECT_FX / 2


def test_factor_is_the_focal_ratio_after_the_letterbox():
    # The example: a Kinect frame (480 x 640) letterboxed into 448 x 576 (scale 0.9).
    plan = plan_letterbox((480, 640), (448, 576))
    assert plan.scale == (0.9, 0.9)
    factor = focal_correction_factor((KINECT_FX, KINECT_FX, 319.5, 239.5), KINECT_FX,
                                     plan.scale)
    assert factor == pytest.approx(0.9, rel=1e-12)
    # The training camera itself: factor 1 (the shipped models at half scale).
    half = plan_letterbox((480, 640), (240, 320))
    assert focal_correction_factor((KINECT_FX, KINECT_FX, 319.5, 239.5), DEFAULT_FX,
                                   half.scale) == pytest.approx(1.0, rel=1e-12)
    # A wide-angle robot camera (fx = 300 px at 640 px): depth about 1.7x too far uncorrected.
    assert focal_correction_factor((300.0, 300.0, 320, 240), DEFAULT_FX, half.scale) == \
        pytest.approx(150.0 / DEFAULT_FX)
    # fx and fy differing: the mean of the two as seen in the model's input.
    assert focal_correction_factor((500.0, 520.0, 0, 0), 255.0, (0.5, 0.5)) == \
        pytest.approx(255.0 / 255.0)
    assert focal_correction_factor((500.0, 500.0, 0, 0), None) is None


@pytest.mark.parametrize('intrinsics, message', [
    ((500.0, 500.0, 320.0), 'four numbers'),
    ((500.0, float('nan'), 320.0, 240.0), 'finite'),
    ((0.0, 500.0, 320.0, 240.0), 'positive focal'),
    ('wide', 'four numbers'),
    (None, 'four numbers'),
])
def test_bad_intrinsics_are_named(intrinsics, message):
    with pytest.raises(ValueError, match=message):
        check_intrinsics(intrinsics)


@pytest.fixture(scope='module')
def focal_config(mlore_reference):
    """The tiny reference MLoRE (64 x 96 input) stating a training focal length of 80 px."""
    return {**mlore_reference['config'], 'train_focal_px': 80.0}


def _image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ONNX Runtime exports the model first: slow, `make test-fast` leaves it out.
@pytest.mark.parametrize('backend', [
    'torch', pytest.param('onnxruntime', marks=pytest.mark.slow)])
def test_engine_scales_depth_exactly_by_the_focal_ratio(backend, focal_config, mlore_reference,
                                                        tmp_path):
    options = {'cache_dir': str(tmp_path)} if backend == 'onnxruntime' else {}
    engine = create_engine(focal_config, checkpoint=mlore_reference['checkpoint'],
                           backend=backend, device='cpu', **options)
    image = _image(128, 160)                  # letterboxed into 64 x 96 at scale 0.5
    plain = engine.infer(image)
    assert engine.last_focal_factor == 1.0
    # A camera whose focal length, halved by the letterbox, is the training one: factor 1.
    same = engine.infer(image, intrinsics=(160.0, 160.0, 79.5, 63.5))
    assert engine.last_focal_factor == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_array_equal(same['depth'], plain['depth'])
    # fx = fy = 400 px seen at scale 0.5 is 200 px against 80 px in training: factor 2.5.
    wide = engine.infer(image, intrinsics=(400.0, 400.0, 79.5, 63.5))
    assert engine.last_focal_factor == pytest.approx(2.5, rel=1e-12)
    np.testing.assert_allclose(wide['depth'], plain['depth'] * 2.5, rtol=1e-6)
    assert np.isnan(wide['depth']).sum() == np.isnan(plain['depth']).sum()
    # Only depth changes.
    for task in plain:
        if task != 'depth':
            np.testing.assert_array_equal(wide[task], plain[task])
    # Without depth among the tasks there is nothing to correct.
    no_depth = engine.infer(image, tasks=['semseg'], intrinsics=(400.0, 400.0, 79.5, 63.5))
    assert set(no_depth) == {'semseg'} and engine.last_focal_factor == 1.0
    with pytest.raises(ValueError, match='positive focal'):
        engine.infer(image, intrinsics=(-1.0, 400.0, 79.5, 63.5))
    engine.close()


def test_model_without_training_focal_warns_once_and_leaves_depth(mlore_reference, caplog):
    engine = create_engine(mlore_reference['config'], checkpoint=mlore_reference['checkpoint'],
                           device='cpu')
    image = _image(64, 96, seed=1)
    plain = engine.infer(image)
    with caplog.at_level(logging.WARNING, logger='mtdp_ros.runtime'):
        for _ in range(3):
            out = engine.infer(image, intrinsics=(400.0, 400.0, 47.5, 31.5))
            np.testing.assert_array_equal(out['depth'], plain['depth'])
    warnings = [r for r in caplog.records if 'train_focal_px' in r.getMessage()]
    assert len(warnings) == 1
