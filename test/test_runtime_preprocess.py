"""Letterboxing: geometry, zero padding after normalisation, round trips on hand-made images."""

import numpy as np
import pytest
import torch

from mtdp_ros.runtime import letterbox, normalisation, plan_letterbox, unletterbox
from mtdp_ros.runtime.preprocess import check_image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _normalised(image_rgb):
    """Reference normalisation in numpy: (x / 255 - mean) / std, as 3 x H x W."""
    x = image_rgb.astype(np.float64) / 255.0
    return ((x - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)


def _denormalise(tensor):
    """1 x 3 x H x W normalised tensor -> H x W x 3 float image in 0..255."""
    x = tensor[0].double().numpy().transpose(1, 2, 0)
    return (x * np.array(STD) + np.array(MEAN)) * 255.0


def _block_image(height, width, block, seed=0):
    """Constant-colour blocks of ``block`` x ``block`` pixels."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(-(-height // block), -(-width // block), 3))
    return np.repeat(np.repeat(colours, block, 0), block, 1)[:height, :width].astype(np.uint8)


def _run(image, model_size):
    plan = plan_letterbox(image.shape[:2], model_size)
    gain, offset = normalisation(MEAN, STD, 'cpu')
    return plan, letterbox(torch.from_numpy(image), plan, gain, offset)


@pytest.mark.parametrize('image_size, model_size, resized, offset', [
    ((480, 640), (240, 320), (240, 320), (0, 0)),       # exact half scale, no padding
    ((480, 640), (448, 576), (432, 576), (8, 0)),       # NYUD input from a VGA camera
    ((100, 300), (64, 96), (32, 96), (16, 0)),          # wide image: bands top and bottom
    ((300, 100), (64, 96), (64, 21), (0, 37)),          # tall image: bands left and right
    ((33, 47), (64, 96), (64, 91), (0, 2)),               # small image is scaled up
    ((64, 96), (64, 96), (64, 96), (0, 0)),             # identity
])
def test_plan_keeps_aspect_ratio_and_centres(image_size, model_size, resized, offset):
    plan = plan_letterbox(image_size, model_size)
    assert plan.resized_size == resized
    assert plan.offset == offset
    # Aspect ratio preserved up to rounding one side to whole pixels (half a pixel).
    height, width = image_size
    assert abs(resized[0] * width - resized[1] * height) <= 0.5 * max(height, width)
    # Fits, and touches the border along the limiting axis.
    assert resized[0] <= model_size[0] and resized[1] <= model_size[1]
    assert resized[0] == model_size[0] or resized[1] == model_size[1]


def test_identity_letterbox_is_exact_normalisation():
    image = _block_image(64, 96, 1, seed=3)
    plan, x = _run(image, (64, 96))
    assert plan.is_identity
    assert x.shape == (1, 3, 64, 96) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0].numpy(), _normalised(image), atol=1e-5)


def test_padding_is_zero_after_normalisation():
    # A white image: every content pixel is far from zero once normalised.
    image = np.full((100, 300, 3), 255, np.uint8)
    plan, x = _run(image, (64, 96))
    rows, cols = plan.content_slices
    content = torch.zeros(64, 96, dtype=torch.bool)
    content[rows, cols] = True
    assert torch.all(x[0][:, ~content] == 0.0)
    expected = torch.tensor(_normalised(image[:1, :1])[:, 0, 0], dtype=torch.float32)
    assert torch.allclose(x[0][:, content], expected[:, None], atol=1e-5)
    assert content.sum() == 32 * 96


def test_round_trip_of_block_image_is_exact_inside_blocks():
    # 16-pixel blocks shrink to 8-pixel blocks: away from block edges every pixel keeps its
    # colour through letterbox and back.
    image = _block_image(128, 192, 16, seed=1)
    plan, x = _run(image, (64, 96))
    assert plan.scale == (0.5, 0.5)
    restored = _denormalise(unletterbox(x, plan))
    inner = np.zeros((128, 192), bool)
    for y in range(128):
        for x_ in range(192):
            inner[y, x_] = 4 <= y % 16 < 12 and 4 <= x_ % 16 < 12
    np.testing.assert_allclose(restored[inner], image[inner].astype(np.float64), atol=1e-3)


def test_round_trip_with_padding_restores_smooth_image():
    height, width = 100, 300
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 255.0 / (width - 1), ys * 255.0 / (height - 1),
                      np.full_like(xs, 128.0)], -1).round().astype(np.uint8)
    plan, x = _run(image, (64, 96))
    restored = unletterbox(x, plan)
    assert restored.shape == (1, 3, height, width)
    error = np.abs(_denormalise(restored) - image)
    # A smooth ramp survives a 0.32x shrink and back to within a few grey levels; the
    # padding never leaks in (it would pull the border rows towards mid-grey).
    assert error[4:-4, 4:-4].max() < 3.0
    assert error.max() < 12.0


def test_coordinates_map_both_ways_and_match_the_pixels():
    image = np.zeros((100, 300, 3), np.uint8)
    image[40:60, 150:200] = 255                       # a white box, x 150..200, y 40..60
    plan, x = _run(image, (64, 96))
    corners = np.array([[150.0, 40.0], [200.0, 60.0]])
    mapped = plan.image_to_model(corners)
    np.testing.assert_allclose(plan.model_to_image(mapped), corners, atol=1e-9)
    (x0, y0), (x1, y1) = mapped
    assert (x0, y0, x1, y1) == pytest.approx((48.0, 28.8, 64.0, 35.2))
    white = _denormalise(x)[..., 0] > 127.5
    ys, xs = np.nonzero(white)
    # Pixels whose centres lie inside the mapped box are white, and only those.
    assert xs.min() == int(np.ceil(x0 - 0.5)) and xs.max() == int(np.floor(x1 - 0.5))
    assert ys.min() == int(np.ceil(y0 - 0.5)) and ys.max() == int(np.floor(y1 - 0.5))


@pytest.mark.parametrize('bad, message', [
    (np.zeros((10, 10, 3), np.float32), 'uint8'),
    (np.zeros((10, 10), np.uint8), 'H x W x 3'),
    (np.zeros((10, 10, 4), np.uint8), 'H x W x 3'),
    (np.zeros((0, 10, 3), np.uint8), 'empty'),
    ([[0, 0, 0]], 'numpy array'),
])
def test_bad_images_are_refused_with_a_reason(bad, message):
    with pytest.raises(ValueError, match=message):
        check_image(bad)


def test_check_image_makes_views_contiguous():
    image = _block_image(20, 30, 2)[:, ::-1]
    checked = check_image(image)
    assert checked.flags['C_CONTIGUOUS']
    np.testing.assert_array_equal(checked, image)
