"""Camera-aware metric depth, runtime: the correction factor and the engines applying it."""

import logging

import numpy as np
import pytest

from mtdp_ros.runtime import create_engine, plan_letterbox
from mtdp_ros.runtime.postprocess import (canonical_scale, check_intrinsics,
                                          focal_correction_factor)

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
    # fx = fy = 400 px seen at scale 0.5 is 200 px against 80 px in training: factor 2.5
    # ('scale'; 'canonical' shrinks the image instead: test below).
    wide = engine.infer(image, intrinsics=(400.0, 400.0, 79.5, 63.5), focal_correction='scale')
    assert engine.last_focal_factor == pytest.approx(2.5, rel=1e-12)
    np.testing.assert_allclose(wide['depth'], plain['depth'] * 2.5, rtol=1e-6)
    assert np.isnan(wide['depth']).sum() == np.isnan(plain['depth']).sum()
    # Only depth changes.
    for task in plain:
        if task != 'depth':
            np.testing.assert_array_equal(wide[task], plain[task])
    # The default, 'hybrid': a zoomed camera (factor 2.5) by the square root of the factor,
    # a wider one (fx 80 px: factor 0.5) by the factor itself, the same image either way.
    zoomed = engine.infer(image, intrinsics=(400.0, 400.0, 79.5, 63.5))
    assert engine.last_focal_factor == pytest.approx(2.5 ** 0.5, rel=1e-12)
    np.testing.assert_allclose(zoomed['depth'], plain['depth'] * 2.5 ** 0.5, rtol=1e-6)
    wider = engine.infer(image, intrinsics=(80.0, 80.0, 79.5, 63.5))
    assert engine.last_focal_factor == pytest.approx(0.5, rel=1e-12)
    np.testing.assert_allclose(wider['depth'], plain['depth'] * 0.5, rtol=1e-6)
    batch = engine.infer_batch([image, image], intrinsics=[
        (400.0, 400.0, 79.5, 63.5), (80.0, 80.0, 79.5, 63.5)])
    assert engine.last_focal_factors == pytest.approx([2.5 ** 0.5, 0.5], rel=1e-12)
    np.testing.assert_allclose(batch[0]['depth'], zoomed['depth'], rtol=1e-5)
    # Without depth among the tasks there is nothing to correct.
    no_depth = engine.infer(image, tasks=['semseg'], intrinsics=(400.0, 400.0, 79.5, 63.5),
                            focal_correction='scale')
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


def test_canonical_camera_shrinks_a_zoomed_image_to_the_training_focal_length(
        focal_config, mlore_reference):
    engine = create_engine(focal_config, checkpoint=mlore_reference['checkpoint'],
                           device='cpu')
    assert engine.focal_correction == 'hybrid'
    image = _image(128, 160)                  # fitted into 64 x 96 at scale 0.5
    # fx = fy = 400 px is 200 px at the fitted scale against 80 px in training: the
    # canonical camera scales the image by 80 / 400 = 0.2 (26 x 32 px, padded), and depth
    # only needs the factor of the rounding to whole pixels (26 / 128 is not 0.2); 'scale'
    # fits it and multiplies depth by 2.5.
    zoomed = (400.0, 400.0, 79.5, 63.5)
    canonical = engine.infer(image, intrinsics=zoomed, focal_correction='canonical')
    assert engine.last_focal_factor == pytest.approx(0.5 * (400 * 0.2 + 400 * 26 / 128) / 80,
                                                     rel=1e-12)
    assert engine.plan((128, 160), canonical_scale(zoomed, 80.0)).resized_size == (26, 32)
    scaled = engine.infer(image, intrinsics=zoomed, focal_correction='scale')
    assert engine.last_focal_factor == pytest.approx(2.5, rel=1e-12)
    # The network saw another image (the 26 x 32 pixels, padded): every task changes;
    # 'scale' changes depth only. Outputs are back at the image's size.
    plain = engine.infer(image)
    np.testing.assert_array_equal(scaled['normals'], plain['normals'])
    assert not np.allclose(canonical['normals'], plain['normals'], atol=1e-4)
    assert canonical['depth'].shape == canonical['normals'].shape[:2] == (128, 160)
    # A wide camera cannot grow past the model input: fitted, then scaled (as 'scale').
    wide = (40.0, 40.0, 79.5, 63.5)           # 20 px at the fitted scale: factor 0.25
    np.testing.assert_array_equal(engine.infer(image, intrinsics=wide,
                                               focal_correction='canonical')['depth'],
                                  engine.infer(image, intrinsics=wide,
                                               focal_correction='scale')['depth'])
    assert engine.last_focal_factor == pytest.approx(0.25, rel=1e-12)
    # 'off' (and False) leave depth as predicted; True is the default (hybrid).
    np.testing.assert_array_equal(engine.infer(image, intrinsics=zoomed,
                                               focal_correction=False)['depth'], plain['depth'])
    assert engine.last_focal_factor == 1.0
    np.testing.assert_array_equal(engine.infer(image, intrinsics=zoomed,
                                               focal_correction=True)['depth'],
                                  engine.infer(image, intrinsics=zoomed)['depth'])
    with pytest.raises(ValueError, match='hybrid, canonical, scale, off'):
        engine.infer(image, intrinsics=zoomed, focal_correction='metric3d')
    engine.close()


def test_letterbox_max_scale_and_canonical_scale():
    assert plan_letterbox((480, 640), (240, 320)).resized_size == (240, 320)
    plan = plan_letterbox((480, 640), (240, 320), max_scale=0.25)
    assert plan.resized_size == (120, 160) and plan.offset == (60, 80)
    # A max_scale above the fitted one changes nothing.
    assert plan_letterbox((480, 640), (240, 320), max_scale=3.0).resized_size == (240, 320)
    assert canonical_scale((500.0, 520.0, 0, 0), 255.0) == pytest.approx(0.5)
    assert canonical_scale((500.0, 520.0, 0, 0), None) is None


def test_eval_command_knows_the_engines_corrections():
    import importlib
    # (mtdp_ros.runtime and mtdp_ros.cli export functions of the modules' names)
    eval_command = importlib.import_module('mtdp_ros.cli.eval')
    postprocess = importlib.import_module('mtdp_ros.runtime.postprocess')
    assert eval_command.FOCAL_CORRECTIONS == postprocess.FOCAL_CORRECTIONS
    assert eval_command.DEFAULT_FOCAL_CORRECTION == postprocess.DEFAULT_FOCAL_CORRECTION
