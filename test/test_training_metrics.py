"""Every metric against values computed by hand."""

import math

import numpy as np
import pytest
import torch

from mtdp_ros.training.metrics import (
    DepthMeter, EdgeMeter, edge_nms, multi_task_gain, MultiTaskMeter, NormalsMeter,
    SaliencyMeter, SemsegMeter)


def test_miou_over_present_classes_and_over_all_classes():
    meter = SemsegMeter(3)
    meter.update(np.array([[[0, 1], [1, 1]]]), np.array([[[0, 0], [1, 255]]]))
    score = meter.score()
    # class 0: tp 1, fn 1 -> 1/2; class 1: tp 1, fp 1 -> 1/2; class 2 absent
    assert score['mIoU'] == pytest.approx(0.5)
    assert score['mIoU_all'] == pytest.approx(1 / 3)
    assert score['pixel_acc'] == pytest.approx(2 / 3)
    assert score['per_class_IoU'] == {0: 0.5, 1: 0.5}
    with pytest.raises(ValueError, match='outside'):
        meter.update(np.array([[[0]]]), np.array([[[7]]]))


def test_depth_errors():
    meter = DepthMeter()
    meter.update(torch.tensor([[2.0, 1.0, 5.0]]), torch.tensor([[1.0, 2.0, 0.0]]))
    score = meter.score()
    assert score['rmse'] == pytest.approx(1.0)
    assert score['abs_rel'] == pytest.approx((1.0 + 0.5) / 2)
    assert score['sq_rel'] == pytest.approx((1.0 + 0.5) / 2)
    assert score['log_rmse'] == pytest.approx(math.log(2))
    assert score['delta1'] == 0.0 and score['valid_pixels'] == 2


def _vectors(*rows):
    return torch.tensor(rows, dtype=torch.float32).T[None, :, None, :]


def test_normal_angles_mean_and_median():
    c, s = math.cos(math.radians(60)), math.sin(math.radians(60))
    pred = _vectors((0, 0, 2), (1, 0, 0), (s, 0, c), (0, 0, 1))
    gt = _vectors((0, 0, 1), (0, 0, 1), (0, 0, 1), (0, 0, 0))        # last: invalid
    meter = NormalsMeter()
    meter.update(pred, gt)
    score = meter.score()
    assert score['mean_angle'] == pytest.approx(50.0, abs=1e-4)
    assert score['median_angle'] == pytest.approx(60.0, abs=0.01)
    assert score['within_11.25'] == pytest.approx(1 / 3)
    assert score['rmse_angle'] == pytest.approx(math.sqrt((90 ** 2 + 60 ** 2) / 3), abs=1e-3)


def _line_image(size=32, column=10, rows=slice(0, 32)):
    image = np.zeros((size, size), np.float32)
    image[rows, column] = 1.0
    return image


def _edge_f(pred, gt, radius=3.0):
    meter = EdgeMeter(max_dist=radius / math.hypot(*gt.shape))
    meter.update(pred[None], gt[None])
    return meter.score()


def test_edge_f_measure_with_pixel_tolerance():
    gt = _line_image()
    assert _edge_f(gt, gt)['odsF'] == pytest.approx(1.0)
    assert _edge_f(_line_image(column=12), gt)['odsF'] == pytest.approx(1.0)   # within 3 px
    assert _edge_f(_line_image(column=17), gt)['odsF'] == 0.0                  # 7 px away
    half = _edge_f(_line_image(rows=slice(0, 16)), gt)            # P = 1, R = 1/2
    assert half['precision'] == pytest.approx(1.0) and half['recall'] == pytest.approx(0.5)
    assert half['odsF'] == pytest.approx(2 / 3)
    # A double line matches one-to-one at most once per ground-truth pixel: P = 1/2.
    double = _line_image() + _line_image(column=11)
    assert _edge_f(double, gt)['odsF'] == pytest.approx(2 / 3)
    assert _edge_f(np.zeros_like(gt), gt)['odsF'] == 0.0


def test_edge_threshold_is_chosen_on_the_whole_data_set():
    gt = _line_image()
    strong = _line_image() * 0.8
    clutter = strong + _line_image(column=25) * 0.3        # a weak false edge far away
    meter = EdgeMeter(max_dist=3.0 / math.hypot(32, 32))
    meter.update(np.stack([clutter, strong]), np.stack([gt, gt]))
    score = meter.score()
    assert score['odsF'] == pytest.approx(1.0)
    assert 0.3 < score['threshold'] <= 0.8


def test_nms_thins_a_blurred_edge_to_its_ridge():
    column = np.exp(-0.5 * ((np.arange(32) - 10) / 1.5) ** 2).astype(np.float32)
    blurred = np.tile(column, (32, 1))
    thin = edge_nms(blurred)
    assert (thin[4:-4, 10] > 0).all()
    assert (thin[4:-4, :8] == 0).all() and (thin[4:-4, 13:] == 0).all()


def test_nms_takes_non_finite_probabilities_as_no_edge():
    # A ridge along row 10: across it (vertically) only row 10 is a maximum. A NaN used to
    # spread through the smoothing and give its neighbours the direction of the integer
    # value of a NaN (horizontal on x86), keeping the ridge's flanks beside it.
    column = np.exp(-0.5 * ((np.arange(32) - 10) / 1.5) ** 2).astype(np.float32)
    ridge = np.tile(column[:, None], (1, 32))
    holed, zeroed = ridge.copy(), ridge.copy()
    holed[10, 16], holed[10, 24] = np.nan, np.inf
    zeroed[10, 16] = zeroed[10, 24] = 0.0
    thin = edge_nms(holed)
    assert np.isfinite(thin).all()
    np.testing.assert_array_equal(thin, edge_nms(zeroed))
    assert (thin[:8, 4:-4] == 0).all() and (thin[13:, 4:-4] == 0).all()


def test_ignored_edge_pixels_do_not_count():
    gt = _line_image().astype(np.int64)
    gt[:, 20:] = 255
    pred = _line_image() + _line_image(column=25)          # the extra line lies in the ignore
    assert _edge_f(pred, gt)['odsF'] == pytest.approx(1.0)


def test_saliency_max_f_uses_beta_squared_0_3():
    meter = SaliencyMeter()
    prob = np.array([[[0.9, 0.9, 0.2, 0.2]]])
    gt = np.array([[[1, 0, 1, 0]]])
    meter.update(prob, gt)
    # threshold <= 0.2: P 1/2, R 1; threshold in (0.2, 0.9]: P 1/2, R 1/2
    f_low = 1.3 * 0.5 * 1.0 / (0.3 * 0.5 + 1.0)
    f_high = 1.3 * 0.25 / (0.3 * 0.5 + 0.5)
    assert meter.score()['maxF'] == pytest.approx(max(f_low, f_high))


def test_multi_task_gain_signs_by_metric_direction():
    results = {'semseg': {'mIoU': 0.5}, 'depth': {'rmse': 0.5}}
    baselines = {'semseg': {'mIoU': 0.4}, 'depth': {'rmse': 0.6}, 'edge': {'odsF': 0.7}}
    gain = multi_task_gain(results, baselines)
    assert gain['per_metric'] == {'semseg.mIoU': pytest.approx(25.0),
                                  'depth.rmse': pytest.approx(100 / 6)}
    assert gain['delta_m'] == pytest.approx((25.0 + 100 / 6) / 2)
    with pytest.raises(ValueError, match='no metric'):
        multi_task_gain({'edge': {'odsF': 1}}, {'semseg': {'mIoU': 1}})


def test_multi_task_gain_counts_one_metric_per_task():
    # NYUD scores with both depth metrics: abs_rel must not enter Delta_m.
    results = {'semseg': {'mIoU': 0.55}, 'depth': {'rmse': 0.50, 'abs_rel': 0.14},
               'normals': {'mean_angle': 18.0}, 'edge': {'odsF': 0.78}}
    baselines = {'semseg': {'mIoU': 0.50}, 'depth': {'rmse': 0.52, 'abs_rel': 0.12},
                 'normals': {'mean_angle': 19.0}, 'edge': {'odsF': 0.77}}
    per_task = [100 * 0.05 / 0.50, 100 * 0.02 / 0.52, 100 * 1.0 / 19.0, 100 * 0.01 / 0.77]
    gain = multi_task_gain(results, baselines)
    assert set(gain['per_metric']) == {'semseg.mIoU', 'depth.rmse', 'normals.mean_angle',
                                       'edge.odsF'}
    assert gain['delta_m'] == pytest.approx(sum(per_task) / 4)          # 5.10 %
    assert gain['delta_m'] == pytest.approx(5.1020, abs=1e-4)
    # Averaging all five terms (abs_rel -16.67 %) would give 0.75 %: not the definition.
    five = (sum(per_task) - 100 * 0.02 / 0.12) / 5
    assert five == pytest.approx(0.7483, abs=1e-4) and gain['delta_m'] != pytest.approx(five)
    # Another metric per task can be chosen, still one per task.
    by_abs_rel = multi_task_gain(results, baselines, metrics={'depth': 'abs_rel'})
    assert by_abs_rel['delta_m'] == pytest.approx(-100 * 0.02 / 0.12)
    with pytest.raises(ValueError, match='one metric name per task'):
        multi_task_gain(results, baselines, metrics={'depth': ('rmse', 'abs_rel')})
    with pytest.raises(ValueError, match='no known direction'):
        multi_task_gain(results, baselines, metrics={'depth': 'sq_rel'})


def test_multi_task_meter_converts_raw_outputs():
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 2] = 1.0
    raw = {'semseg': logits, 'depth': torch.full((1, 1, 2, 2), 2.0),
           'normals': torch.tensor([0.0, 0.0, 5.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2),
           'edge': torch.full((1, 1, 2, 2), -20.0)}
    targets = {'semseg': torch.full((1, 1, 2, 2), 2), 'depth': torch.full((1, 1, 2, 2), 2.0),
               'normals': torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2),
               'edge': torch.zeros(1, 1, 2, 2)}
    meter = MultiTaskMeter(('semseg', 'depth', 'normals', 'edge'),
                           {'semseg': 3, 'depth': 1, 'normals': 3, 'edge': 1})
    meter.update(raw, targets)
    score = meter.score()
    assert score['semseg']['mIoU'] == 1.0 and score['depth']['rmse'] == 0.0
    assert score['normals']['mean_angle'] == pytest.approx(0.0, abs=1e-6)


def test_saliency_protocols_taskdiffusion_and_mlore_sigmoid():
    # probabilities 0.9 (salient), 0.3 (not), 0.62 (salient), 0.1 (not)
    prob = np.array([[[0.9, 0.3, 0.62, 0.1]]])
    gt = np.array([[[1, 0, 1, 0]]])
    ours = SaliencyMeter()
    ours.update(prob, gt)
    assert ours.score()['maxF'] == pytest.approx(1.0)       # threshold in (0.3, 0.62]
    mlore = SaliencyMeter(squash=True)
    mlore.update(prob, gt)
    # sigmoid: 0.711, 0.574, 0.650, 0.525: thresholds 0.55 .. 0.70 (step 0.05) see
    # 0.711 > 0.650 > 0.574 > 0.525; at 0.60 and 0.65: {0.711, 0.650} = exact -> F 1;
    # so this separable case still gets 1.0 ...
    assert mlore.score()['maxF'] == pytest.approx(1.0)
    # ... but salient 0.95, 0.91 and non-salient 0.86 all land in [0.70, 0.75) after the
    # sigmoid (0.721, 0.713, 0.703): no threshold separates them any more.
    prob = np.array([[[0.95, 0.91, 0.86]]])
    gt = np.array([[[1, 1, 0]]])
    ours, mlore = SaliencyMeter(), SaliencyMeter(squash=True)
    ours.update(prob, gt)
    mlore.update(prob, gt)
    assert ours.score()['maxF'] == pytest.approx(1.0)        # threshold 0.90
    f_all = 1.3 * (2 / 3) * 1.0 / (0.3 * (2 / 3) + 1.0)     # threshold 0.70: P 2/3, R 1
    assert mlore.score()['maxF'] == pytest.approx(f_all)     # 0.722
    assert mlore.score()['maxF'] < ours.score()['maxF']
