"""Post-processing on hand-made raw outputs: labels, depth, unit normals, probabilities."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from mtdp_ros.runtime import plan_letterbox, postprocess, to_numpy
from mtdp_ros.runtime import unletterbox
from mtdp_ros.runtime.postprocess import (argmax_channels, cpu_path_applies, MIN_NORMAL_LENGTH,
                                          postprocess_task, postprocess_task_reference)


def _logits_for(labels, num_classes):
    """1 x C x h x w logits whose argmax is ``labels`` (h x w), with close runners-up."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 1.0, (num_classes, *labels.shape))
    rows, cols = np.indices(labels.shape)
    logits[labels, rows, cols] = logits.max(axis=0) + 0.25
    return torch.tensor(logits[None], dtype=torch.float32)


def _label_map(height, width):
    """Left half class 3, right half class 7, a diagonal band of class 12, one pixel of 0."""
    labels = np.where(np.arange(width)[None, :] < width // 2, 3, 7) * np.ones((height, 1), int)
    rows, cols = np.indices((height, width))
    labels[np.abs(rows - cols) <= 1] = 12
    labels[5, 40] = 0
    return labels


@pytest.mark.parametrize('image_size', [(64, 96), (160, 240), (100, 300), (41, 50)])
def test_labels_resize_without_interpolation_artefacts(image_size):
    labels = _label_map(64, 96)
    plan = plan_letterbox(image_size, (64, 96))
    out = to_numpy(postprocess({'semseg': _logits_for(labels, 40)}, plan))['semseg']
    assert out.shape == image_size and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 3, 7, 12}
    # Each image pixel carries the label of the model pixel its centre falls in (when the
    # centre lies exactly on a boundary between two model pixels, either one).
    (top, left), (rh, rw) = plan.offset, plan.resized_size

    def sources(count, resized):
        centre = (np.arange(count) + 0.5) * resized / count
        index = np.minimum(np.floor(centre + 1e-9).astype(int), resized - 1)
        tie = np.abs(centre - np.round(centre)) < 1e-9
        return index, np.where(tie, np.maximum(index - 1, 0), index)

    rows, rows_tie = sources(image_size[0], rh)
    cols, cols_tie = sources(image_size[1], rw)
    candidates = [labels[np.ix_(top + r, left + c)]
                  for r in (rows, rows_tie) for c in (cols, cols_tie)]
    assert np.all(np.any([out == c for c in candidates], axis=0))
    exact = np.ix_(~np.isin(np.arange(image_size[0]), np.nonzero(rows != rows_tie)[0]),
                   ~np.isin(np.arange(image_size[1]), np.nonzero(cols != cols_tie)[0]))
    np.testing.assert_array_equal(out[exact], candidates[0][exact])


def test_labels_beyond_255_classes_are_uint16():
    labels = np.full((8, 8), 300)
    labels[:, :4] = 2
    logits = _logits_for(labels, 301)
    plan = plan_letterbox((16, 16), (8, 8))
    out = to_numpy(postprocess({'semseg': logits}, plan))['semseg']
    assert out.dtype == np.uint16
    assert set(np.unique(out)) == {2, 300}


def test_padding_never_reaches_the_output():
    # Garbage in the padded band (class 9, huge depth) must not appear after un-padding.
    plan = plan_letterbox((100, 300), (64, 96))                # rows 16..47 hold the image
    labels = np.full((64, 96), 9)
    labels[16:48] = 4
    depth = torch.full((1, 1, 64, 96), 1000.0)
    depth[:, :, 16:48] = 2.0
    out = to_numpy(postprocess({'semseg': _logits_for(labels, 10), 'depth': depth}, plan))
    assert np.all(out['semseg'] == 4)
    np.testing.assert_allclose(out['depth'], 2.0, rtol=1e-6)


def test_depth_is_metres_with_nan_where_invalid():
    raw = torch.tensor([[1.0, 2.0, -1.0, 0.0], [3.0, float('inf'), 5.0, 6.0]])[None, None]
    plan = plan_letterbox((2, 4), (2, 4))
    depth = to_numpy(postprocess({'depth': raw}, plan))['depth']
    assert depth.dtype == np.float32 and depth.shape == (2, 4)
    expected = np.array([[1, 2, np.nan, np.nan], [3, np.nan, 5, 6]], np.float32)
    np.testing.assert_array_equal(depth, expected)


def test_depth_resize_is_bilinear():
    ramp = torch.arange(1.0, 9.0).view(1, 1, 1, 8).expand(1, 1, 4, 8).contiguous()
    plan = plan_letterbox((8, 16), (4, 8))
    depth = to_numpy(postprocess({'depth': ramp}, plan))['depth']
    # Half-pixel bilinear upsampling of a ramp 1..8 by two: interior steps of 0.5.
    np.testing.assert_allclose(np.diff(depth[0, 1:-1]), 0.5, atol=1e-6)
    assert depth.min() == pytest.approx(1.0) and depth.max() == pytest.approx(8.0)


def test_normals_are_unit_vectors_in_hwc():
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(1, 3, 16, 24, generator=generator) * 5
    raw[0, :, 3, 4] = 0.0                                   # no direction at all
    plan = plan_letterbox((16, 24), (16, 24))
    normals = to_numpy(postprocess({'normals': raw}, plan))['normals']
    assert normals.shape == (16, 24, 3) and normals.dtype == np.float32
    assert np.all(np.isnan(normals[3, 4]))
    valid = ~np.isnan(normals).any(axis=-1)
    assert valid.sum() == 16 * 24 - 1
    np.testing.assert_allclose(np.linalg.norm(normals[valid], axis=-1), 1.0, atol=1e-5)
    expected = raw[0].permute(1, 2, 0).numpy()[valid]
    expected = expected / np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(normals[valid], expected, atol=1e-5)


def test_resized_normals_are_renormalised():
    # Two opposite-ish directions side by side: bilinear blends shrink the vector; the
    # output is unit length again everywhere.
    raw = torch.zeros(1, 3, 4, 4)
    raw[0, 0, :, :2] = 1.0
    raw[0, 1, :, 2:] = 1.0
    plan = plan_letterbox((12, 12), (4, 4))
    normals = to_numpy(postprocess({'normals': raw}, plan))['normals']
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)


def test_edge_and_saliency_are_probabilities():
    generator = torch.Generator().manual_seed(1)
    edge_logit = torch.randn(1, 1, 8, 8, generator=generator) * 10
    sal_logits = torch.randn(1, 2, 8, 8, generator=generator) * 10
    plan = plan_letterbox((8, 8), (8, 8))
    out = to_numpy(postprocess({'edge': edge_logit, 'sal': sal_logits}, plan))
    np.testing.assert_allclose(out['edge'], torch.sigmoid(edge_logit)[0, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(out['sal'], torch.softmax(sal_logits, 1)[0, 1].numpy(),
                               atol=1e-6)
    plan = plan_letterbox((20, 30), (8, 8))
    out = to_numpy(postprocess({'edge': edge_logit, 'sal': sal_logits}, plan))
    for task in ('edge', 'sal'):
        assert out[task].dtype == np.float32 and out[task].shape == (20, 30)
        assert out[task].min() >= 0.0 and out[task].max() <= 1.0


def test_only_requested_tasks_and_clear_errors():
    plan = plan_letterbox((8, 8), (8, 8))
    raw = {'edge': torch.zeros(1, 1, 8, 8), 'depth': torch.ones(1, 1, 8, 8)}
    assert set(postprocess(raw, plan, tasks=['edge'])) == {'edge'}
    with pytest.raises(ValueError, match='lack tasks'):
        postprocess(raw, plan, tasks=['normals'])
    with pytest.raises(ValueError, match='model size'):
        postprocess_task('edge', torch.zeros(1, 1, 4, 4), plan)
    with pytest.raises(ValueError, match='no post-processing'):
        postprocess_task('flow', torch.zeros(1, 2, 8, 8), plan)


# Image sizes against a 48 x 64 model input: equal, enlarging with and without padding,
# odd scales, a tall image (padding on the sides), shrinking (the PyTorch path).
CPU_CASES = [(48, 64), (96, 128), (480, 640), (100, 300), (300, 100), (37, 53), (24, 32),
             (47, 61)]


def _random_raw(seed, num_classes=40):
    generator = torch.Generator().manual_seed(seed)
    return {
        'semseg': torch.randn(1, num_classes, 48, 64, generator=generator) * 3,
        'depth': torch.rand(1, 1, 48, 64, generator=generator) * 10 - 0.5,
        'normals': torch.randn(1, 3, 48, 64, generator=generator),
        'edge': torch.randn(1, 1, 48, 64, generator=generator) * 8,
        'sal': torch.randn(1, 2, 48, 64, generator=generator) * 8,
    }


@pytest.mark.parametrize('image_size', CPU_CASES)
@pytest.mark.parametrize('num_classes', [40, 300])
def test_cpu_path_equals_the_reference_path(image_size, num_classes):
    raw = _random_raw(sum(image_size) + num_classes, num_classes)
    raw['depth'][0, 0, 20, 30] = float('inf')
    raw['depth'][0, 0, 21, 31] = float('nan')
    raw['normals'][0, :, 10, 10] = 0.0
    plan = plan_letterbox(image_size, (48, 64))
    for task, values in raw.items():
        reference = postprocess_task_reference(task, values, plan).numpy()
        got = postprocess_task(task, values, plan).numpy()
        assert got.shape == reference.shape, task
        if task == 'semseg':
            # Labels: the argmax (random logits have no equal maxima) at the model pixel
            # each image pixel's centre falls in, by exact rational arithmetic; equal to
            # PyTorch's except where a centre lies exactly on a boundary (PyTorch's float32
            # then rounds either way).
            assert got.dtype == (np.uint8 if num_classes <= 255 else np.uint16)
            (top, left), (rh, rw) = plan.offset, plan.resized_size
            rows = [top + Fraction(2 * i + 1, 2) * rh // image_size[0]
                    for i in range(image_size[0])]
            cols = [left + Fraction(2 * j + 1, 2) * rw // image_size[1]
                    for j in range(image_size[1])]
            model_labels = values[0].argmax(dim=0).numpy()
            np.testing.assert_array_equal(got, model_labels[np.ix_(rows, cols)])
            tie_rows = [(2 * i + 1) * rh % (2 * image_size[0]) == 0
                        for i in range(image_size[0])]
            tie_cols = [(2 * j + 1) * rw % (2 * image_size[1]) == 0
                        for j in range(image_size[1])]
            off_tie = np.ix_(~np.array(tie_rows), ~np.array(tie_cols))
            np.testing.assert_array_equal(got[off_tie], reference[off_tie].astype(got.dtype))
            continue
        assert got.dtype == np.float32
        # Invalid pixels (NaN) in the same places. Values: against the same computation in
        # float64, the CPU path is at least as accurate as the float32 PyTorch path (which
        # rounds its source coordinates: 3.5e-5 off on 0..10 at 10x, measured; OpenCV
        # 1.6e-6) and within 1e-5 of the map's scale.
        truth = _float64_truth(task, values, plan)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(reference), err_msg=task)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(truth), err_msg=task)
        valid = ~np.isnan(truth)
        error_cpu = np.abs(got[valid] - truth[valid]).max()
        error_reference = np.abs(reference[valid] - truth[valid]).max()
        assert error_cpu <= max(error_reference, 1e-6), (task, error_cpu, error_reference)
        scale = 10.0 if task == 'depth' else 1.0
        if task == 'normals':
            # Renormalising divides the resize's error by the blended vector's length.
            length = _float64_length(values, plan)[valid.all(axis=-1)]
            error = np.abs(got - truth)[valid.all(axis=-1)].max(axis=-1) * length
            assert error.max() <= 1e-5, error.max()
        else:
            assert error_cpu <= 1e-5 * scale, (task, error_cpu)


def _float64_truth(task, raw, plan):
    """The post-processing of ``raw`` as defined (module docstring), computed in float64."""
    raw = raw.to(torch.float64)
    if task == 'depth':
        depth = unletterbox(raw, plan)[0, 0]
        return torch.where(torch.isfinite(depth) & (depth > 0), depth,
                           torch.full_like(depth, float('nan'))).numpy()
    if task == 'normals':
        normals = unletterbox(raw, plan)[0]
        length = normals.norm(dim=0, keepdim=True)
        unit = torch.where(length >= MIN_NORMAL_LENGTH, normals / length,
                           torch.full_like(normals, float('nan')))
        return unit.permute(1, 2, 0).numpy()
    if task == 'edge':
        return unletterbox(torch.sigmoid(raw), plan)[0, 0].clamp(0, 1).numpy()
    return unletterbox(torch.softmax(raw, dim=1)[:, 1:2], plan)[0, 0].clamp(0, 1).numpy()


def _float64_length(raw, plan):
    """Length of the resized, not yet renormalised normals, H x W (float64)."""
    return unletterbox(raw.to(torch.float64), plan)[0].norm(dim=0).numpy()


def test_cpu_path_is_taken_where_it_applies():
    raw = _random_raw(0)
    enlarging = plan_letterbox((480, 640), (48, 64))
    shrinking = plan_letterbox((24, 32), (48, 64))
    for task, values in raw.items():
        assert cpu_path_applies(task, values, enlarging), task
        assert cpu_path_applies(task, values, shrinking) == (task == 'semseg'), task
    assert not cpu_path_applies('semseg', torch.zeros(1, 70000, 48, 64), enlarging)
    assert not cpu_path_applies('flow', raw['depth'], enlarging)


def test_argmax_channels_takes_the_first_of_equal_maxima():
    logits = np.zeros((4, 2, 3), np.float32)
    logits[2, 0, 0] = logits[3, 0, 0] = 5.0
    logits[1, 1, 2] = 1.0
    labels = argmax_channels(logits)
    np.testing.assert_array_equal(labels, np.argmax(logits, axis=0))
    assert labels[0, 0] == 2 and labels[0, 1] == 0 and labels[1, 2] == 1
