"""Colour maps of the node's outputs: palette, depth rainbow, normals, probabilities."""

import cv2
import numpy as np
import pytest

from mtdp_ros.ros import colormaps


def test_palette_gives_each_label_its_own_stable_colour():
    palette = colormaps.label_palette(256)
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert len({tuple(c) for c in palette}) == 256
    # Stable across calls (a class keeps its colour between runs).
    np.testing.assert_array_equal(palette, colormaps.label_palette(256))
    labels = np.array([[0, 1, 2], [39, 255, 1]], np.uint8)
    rgb = colormaps.labels_to_color(labels)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, palette[labels])


def test_uint16_labels_reuse_the_palette_cyclically():
    labels = np.array([[3, 259, 300]], np.uint16)
    rgb = colormaps.labels_to_color(labels)
    palette = colormaps.label_palette(256)
    np.testing.assert_array_equal(rgb[0], palette[[3, 3, 44]])


def test_depth_fixed_range_ends_and_invalid_pixels():
    depth = np.array([[1.0, 5.0, 0.5, 9.0, np.nan, 3.0]], np.float32)
    rgb = colormaps.depth_to_color(depth, minimum=1.0, maximum=5.0)
    turbo = colormaps.TURBO_RGB
    np.testing.assert_array_equal(rgb[0, 0], turbo[0])       # near end
    np.testing.assert_array_equal(rgb[0, 1], turbo[255])     # far end
    np.testing.assert_array_equal(rgb[0, 2], turbo[0])       # nearer than the range
    np.testing.assert_array_equal(rgb[0, 3], turbo[255])     # farther than the range
    np.testing.assert_array_equal(rgb[0, 4], [0, 0, 0])      # invalid
    # 3 m is the middle of 1..5 m: level 127.5, rounded to a neighbour.
    assert any(np.array_equal(rgb[0, 5], turbo[level]) for level in (127, 128))


def test_depth_automatic_range_spans_the_frame():
    depth = np.array([[2.0, 4.0], [np.nan, 3.0]], np.float32)
    rgb = colormaps.depth_to_color(depth)
    np.testing.assert_array_equal(rgb[0, 0], colormaps.TURBO_RGB[0])
    np.testing.assert_array_equal(rgb[0, 1], colormaps.TURBO_RGB[255])
    np.testing.assert_array_equal(rgb[1, 0], [0, 0, 0])
    assert colormaps.depth_range(depth) == (2.0, 4.0)
    assert colormaps.depth_range(np.full((2, 2), np.nan, np.float32)) == (0.0, 1.0)


def test_turbo_goes_from_blue_to_red():
    turbo = colormaps.TURBO_RGB.astype(int)
    assert turbo[0, 2] > turbo[0, 0]          # near: blue dominates
    assert turbo[255, 0] > turbo[255, 2]      # far: red dominates


def test_normals_map_n_plus_one_over_two():
    normals = np.array([[[1, 0, 0], [0, -1, 0], [0, 0, -1],
                         [0.6, 0.0, -0.8], [np.nan, np.nan, np.nan]]], np.float32)
    rgb = colormaps.normals_to_color(normals)
    expected = (normals[0, :4] + 1.0) / 2.0 * 255.0
    assert np.abs(rgb[0, :4].astype(float) - expected).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(rgb[0, 4], [0, 0, 0])


def test_probabilities_are_grey_levels():
    probability = np.array([[0.0, 1.0, 0.25, np.nan, 1.5, -0.2]], np.float32)
    rgb = colormaps.probability_to_color(probability)
    assert np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2])
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 255, 64, 0, 255, 0])


def test_normals_with_any_non_finite_component_are_black():
    normals = np.array([[[np.nan, 0, 0], [0, np.inf, 0], [0, 0, -np.inf],
                         [np.inf, -np.inf, 0], [0, 0, -1]]], np.float32)
    rgb = colormaps.normals_to_color(normals)
    np.testing.assert_array_equal(rgb[0, :4], np.zeros((4, 3), np.uint8))
    np.testing.assert_array_equal(rgb[0, 4], [128, 128, 0])


def test_normal_components_beyond_unit_length_saturate():
    # Not unit vectors (a model's raw output): clipped, not folded back by an absolute value.
    normals = np.array([[[-1.5, 2.0, -1.0000001]]], np.float32)
    np.testing.assert_array_equal(colormaps.normals_to_color(normals)[0, 0], [0, 255, 0])


def test_infinite_depth_and_probability_are_invalid():
    depth = np.array([[1.0, np.inf, -np.inf, 5.0]], np.float32)
    rgb = colormaps.depth_to_color(depth)
    np.testing.assert_array_equal(rgb[0, 1:3], np.zeros((2, 3), np.uint8))
    np.testing.assert_array_equal(rgb[0, 0], colormaps.TURBO_RGB[0])
    np.testing.assert_array_equal(rgb[0, 3], colormaps.TURBO_RGB[255])
    probability = np.array([[np.inf, -np.inf, 1.0]], np.float32)
    np.testing.assert_array_equal(colormaps.probability_to_color(probability)[0, :, 0],
                                  [0, 0, 255])


@pytest.mark.parametrize('nan_level', [0, 255, 77])
def test_invalid_colours_do_not_depend_on_the_integer_value_of_nan(monkeypatch, nan_level):
    # OpenCV's convertScaleAbs turns NaN into 0 up to 4.x and into 255 from 5.0 (the value
    # is undefined): whatever it gives, invalid pixels must come out black.
    real = cv2.convertScaleAbs

    def convert_with_nan_level(src, *args, **kwargs):
        levels = real(src, *args, **kwargs)
        levels[np.isnan(src)] = nan_level
        return levels

    monkeypatch.setattr(cv2, 'convertScaleAbs', convert_with_nan_level)
    depth = np.array([[1.0, np.nan, 2.0]], np.float32)
    np.testing.assert_array_equal(colormaps.depth_to_color(depth)[0, 1], [0, 0, 0])
    normals = np.array([[[0, 0, 1], [np.nan, np.nan, np.nan], [np.nan, 0, 0]]], np.float32)
    np.testing.assert_array_equal(colormaps.normals_to_color(normals)[0, 1:],
                                  np.zeros((2, 3), np.uint8))
    probability = np.array([[0.5, np.nan]], np.float32)
    np.testing.assert_array_equal(colormaps.probability_to_color(probability)[0, 1],
                                  [0, 0, 0])


def test_colour_images_keep_the_size():
    height, width = 37, 53
    assert colormaps.labels_to_color(np.zeros((height, width), np.uint8)).shape == \
        (height, width, 3)
    assert colormaps.depth_to_color(np.ones((height, width), np.float32)).shape == \
        (height, width, 3)
    assert colormaps.normals_to_color(np.zeros((height, width, 3), np.float32)).shape == \
        (height, width, 3)
    assert colormaps.probability_to_color(np.zeros((height, width), np.float32)).shape == \
        (height, width, 3)
