"""Evaluation metrics of multi-task dense prediction (NYUD-v2 / PASCAL-Context protocol).

Meters accumulate over a data set (pixel counts pooled over all images, as the authors'
evaluation) and report fractions, metres and degrees:

* ``SemsegMeter``: mean intersection over union. ``mIoU`` averages the classes that occur
  in the ground truth of the evaluated set (classes never labelled are left out, so a
  synthetic set using a subset of NYUD's 40 classes is scored on that subset);
  ``mIoU_all`` averages all classes with 0 for absent ones (the authors' NYUD number).
* ``DepthMeter``: RMSE, abs-rel, sq-rel, log-RMSE and delta < 1.25 over valid pixels.
* ``NormalsMeter``: angular error between unit vectors, ``mean_angle``, ``median_angle``
  (from a 0.01-degree histogram, so exact to 0.005 degrees), RMSE and the fractions within
  11.25, 22.5 and 30 degrees.
* ``EdgeMeter``: F-measure at the optimal dataset scale (``odsF``). See its docstring for
  how it approximates the BSDS benchmark.
* ``SaliencyMeter``: maximum F-measure (beta^2 = 0.3) over thresholds 0.05 .. 0.95.
* ``multi_task_gain``: the multi-task performance Delta_m against single-task baselines
  (one metric per task).
"""

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..models.tasks import get_task, task_names

IGNORE_INDEX = 255


def _numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() \
            else x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(x):
    """B x H x W (or H x W) integer array from a B x 1 x H x W / B x H x W / H x W input."""
    x = _numpy(x)
    if x.ndim == 4:
        x = x[:, 0]
    return x.astype(np.int64)


class SemsegMeter:
    """Confusion matrix over ``num_classes``; labels ``ignore_index`` are skipped."""

    def __init__(self, num_classes, ignore_index=IGNORE_INDEX, class_names=None):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = class_names
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred, gt):
        """``pred``: class ids (B x H x W or B x 1 x H x W); ``gt`` the same shape."""
        pred, gt = _labels(pred), _labels(gt)
        if pred.shape != gt.shape:
            raise ValueError(f'prediction {pred.shape} and label {gt.shape} differ in shape')
        valid = gt != self.ignore_index
        bad = valid & ((gt < 0) | (gt >= self.num_classes))
        if bad.any():
            raise ValueError(f'labels outside 0..{self.num_classes - 1} (and not '
                             f'{self.ignore_index}): {np.unique(gt[bad])[:8].tolist()}')
        pred = np.clip(pred[valid], 0, self.num_classes - 1)
        index = gt[valid] * self.num_classes + pred
        self.confusion += np.bincount(index, minlength=self.num_classes ** 2).reshape(
            self.num_classes, self.num_classes)

    def score(self):
        """Mean IoU (classes present), mIoU_all, pixel accuracy and per-class IoU."""
        tp = np.diag(self.confusion).astype(np.float64)
        gt_count = self.confusion.sum(axis=1)
        union = gt_count + self.confusion.sum(axis=0) - tp
        iou = tp / np.maximum(union, 1)
        present = gt_count > 0
        total = self.confusion.sum()
        per_class = {int(c): float(iou[c]) for c in np.nonzero(present)[0]}
        return {
            'mIoU': float(iou[present].mean()) if present.any() else float('nan'),
            'mIoU_all': float(iou.mean()),
            'pixel_acc': float(tp.sum() / total) if total else float('nan'),
            'per_class_IoU': per_class,
        }


class DepthMeter:
    """Depth errors pooled over valid pixels (``min_depth < gt < max_depth``)."""

    def __init__(self, min_depth=0.0, max_depth=80.0):
        self.min_depth, self.max_depth = min_depth, max_depth
        self.n = 0
        self.sq = self.abs_rel = self.sq_rel = self.log_sq = self.delta1 = 0.0

    def update(self, pred, gt):
        """Add predicted and ground-truth depth maps (any matching shapes, metres)."""
        pred = _numpy(pred).astype(np.float64).reshape(-1)
        gt = _numpy(gt).astype(np.float64).reshape(-1)
        if pred.shape != gt.shape:
            raise ValueError(f'depth prediction and label sizes differ: {pred.size} vs {gt.size}')
        valid = (gt > self.min_depth) & (gt < self.max_depth) & np.isfinite(gt)
        p = np.clip(np.nan_to_num(pred[valid], nan=1e-9), 1e-9, None)
        g = gt[valid]
        self.n += g.size
        diff = p - g
        self.sq += float((diff ** 2).sum())
        self.abs_rel += float((np.abs(diff) / g).sum())
        self.sq_rel += float((diff ** 2 / g).sum())
        self.log_sq += float(((np.log(p) - np.log(g)) ** 2).sum())
        self.delta1 += float((np.maximum(p / g, g / p) < 1.25).sum())

    def score(self):
        """RMSE, abs-rel, sq-rel, log-RMSE, delta < 1.25 and the valid pixel count."""
        n = max(self.n, 1)
        return {'rmse': math.sqrt(self.sq / n), 'abs_rel': self.abs_rel / n,
                'sq_rel': self.sq_rel / n, 'log_rmse': math.sqrt(self.log_sq / n),
                'delta1': self.delta1 / n, 'valid_pixels': int(self.n)}


def angular_error_deg(pred, gt):
    """Angle in degrees between vectors (channel axis 1), both normalised first.

    Uses ``2 atan2(|a - b|, |a + b|)``, accurate at small and large angles.
    """
    a = F.normalize(torch.as_tensor(pred, dtype=torch.float64), dim=1)
    b = F.normalize(torch.as_tensor(gt, dtype=torch.float64), dim=1)
    return torch.rad2deg(2 * torch.atan2((a - b).norm(dim=1), (a + b).norm(dim=1)))


class NormalsMeter:
    """Angular errors over pixels whose ground-truth normal is not the zero vector."""

    BIN = 0.01           # degrees per histogram bin (median resolution)

    def __init__(self):
        self.hist = np.zeros(int(round(180 / self.BIN)) + 1, dtype=np.int64)
        self.sum = self.sum_sq = 0.0
        self.n = 0

    def update(self, pred, gt):
        """``pred``, ``gt``: B x 3 x H x W (any scale; normalised here)."""
        pred, gt = torch.as_tensor(_numpy(pred)), torch.as_tensor(_numpy(gt))
        if pred.shape != gt.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f'normals must both be B x 3 x H x W, got {tuple(pred.shape)} '
                             f'and {tuple(gt.shape)}')
        valid = (gt != 0).any(dim=1) & torch.isfinite(gt).all(dim=1)
        angles = angular_error_deg(pred, gt)[valid].numpy()
        angles = np.nan_to_num(angles, nan=90.0)
        self.n += angles.size
        self.sum += float(angles.sum())
        self.sum_sq += float((angles ** 2).sum())
        self.hist += np.bincount(np.clip(np.floor(angles / self.BIN).astype(np.int64), 0,
                                         len(self.hist) - 1), minlength=len(self.hist))

    def _quantile_below(self, limit):
        return float(self.hist[:int(round(limit / self.BIN))].sum() / max(self.n, 1))

    def score(self):
        """Mean, median and RMSE angle (degrees) and the fractions within thresholds."""
        if self.n == 0:
            nan = float('nan')
            return {'mean_angle': nan, 'median_angle': nan, 'rmse_angle': nan}
        cumulative = np.cumsum(self.hist)
        half = self.n / 2.0
        k = int(np.searchsorted(cumulative, half))
        before = cumulative[k - 1] if k > 0 else 0
        inside = (half - before) / max(self.hist[k], 1)
        return {'mean_angle': self.sum / self.n,
                'median_angle': (k + inside) * self.BIN,
                'rmse_angle': math.sqrt(self.sum_sq / self.n),
                'within_11.25': self._quantile_below(11.25),
                'within_22.5': self._quantile_below(22.5),
                'within_30': self._quantile_below(30.0)}


def edge_nms(prob, radius=1.0):
    """Thin an edge probability map: keep pixels that are maxima across the edge.

    The edge normal is the Hessian eigenvector of the (Gaussian smoothed) map with the
    largest absolute curvature: across a ridge the profile bends most, on its crest
    (negative) as on its flanks (positive), while along it the map barely changes. It is
    quantised to 0/45/90/135 degrees and a pixel survives when it is >= both neighbours
    along it (as Canny's non-maximum suppression). Non-finite probabilities count as 0, no
    edge: a NaN would spread through the smoothing and its quantised direction would be the
    integer value of a NaN, which is undefined.
    """
    prob = np.asarray(prob, dtype=np.float32)
    prob = np.where(np.isfinite(prob), prob, np.float32(0.0))
    smooth = cv2.GaussianBlur(prob, (0, 0), radius) if radius > 0 else prob
    dxx = cv2.Sobel(smooth, cv2.CV_32F, 2, 0, ksize=3)
    dyy = cv2.Sobel(smooth, cv2.CV_32F, 0, 2, ksize=3)
    dxy = cv2.Sobel(smooth, cv2.CV_32F, 1, 1, ksize=3)
    half_trace = (dxx + dyy) / 2
    root = np.sqrt(((dxx - dyy) / 2) ** 2 + dxy ** 2)
    # Angle of the eigenvector of the larger eigenvalue; the other is 90 degrees away.
    angle = 0.5 * np.arctan2(2 * dxy, dxx - dyy)
    normal = np.where(np.abs(half_trace + root) >= np.abs(half_trace - root), angle,
                      angle + np.pi / 2)
    sector = np.round(normal / (np.pi / 4)).astype(np.int64) % 4
    steps = [(0, 1), (1, 1), (1, 0), (1, -1)]             # (dy, dx) for 0/45/90/135 degrees
    padded = np.pad(prob, 1, mode='constant')
    height, width = prob.shape
    keep = np.zeros_like(prob, dtype=bool)
    for index, (dy, dx) in enumerate(steps):
        ahead = padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        behind = padded[1 - dy:1 - dy + height, 1 - dx:1 - dx + width]
        keep |= (sector == index) & (prob >= ahead) & (prob >= behind)
    return np.where(keep, prob, 0.0).astype(np.float32)


def _disk(radius):
    size = int(math.floor(radius))
    yy, xx = np.mgrid[-size:size + 1, -size:size + 1]
    return (yy ** 2 + xx ** 2 <= radius ** 2 + 1e-9).astype(np.uint8)


def _count_ge(values, thresholds):
    """Number of ``values`` >= each threshold."""
    ordered = np.sort(values)
    return ordered.size - np.searchsorted(ordered, thresholds, side='left')


class EdgeMeter:
    """Edge F-measure at the optimal dataset scale (ODS), pixel-tolerance matching.

    For every image the prediction (probability in [0, 1]) is thinned by non-maximum
    suppression (``edge_nms``) and thresholded at ``n_thresholds`` levels k / (n + 1).
    A predicted edge pixel is a true positive when a ground-truth edge pixel lies within
    ``max_dist`` x image diagonal (0.011 for NYUD-v2, 0.0075 for BSDS/PASCAL); a ground-truth
    pixel is recalled when a predicted pixel lies within that distance. Counts are pooled
    over the data set per threshold; ODS F is the best F = 2PR / (P + R) over thresholds
    (as the benchmark, without its interpolation between thresholds).

    Approximation of the standard benchmark (BSDS ``correspondPixels``, SEISM): the
    benchmark thins each thresholded map morphologically and matches predicted and
    ground-truth pixels one-to-one by a minimum-cost bipartite assignment within the
    tolerance. Here, per image and threshold, ``A`` predicted pixels have a ground-truth
    pixel within the tolerance and ``B`` ground-truth pixels have a predicted one; the
    matching size is taken as ``min(A, B)``, an upper bound of the bipartite matching that
    equals it whenever the near pixels can be paired (thin, nearly aligned contours). So a
    double-thick prediction loses precision as in the benchmark, while crossing or tangled
    contours may score slightly higher than it would give. Ground-truth pixels labelled
    ``ignore_index`` and predictions on them are left out.
    """

    def __init__(self, max_dist=0.011, n_thresholds=99, nms=True, ignore_index=IGNORE_INDEX):
        self.max_dist = float(max_dist)
        self.thresholds = np.arange(1, n_thresholds + 1) / (n_thresholds + 1.0)
        self.nms = nms
        self.ignore_index = ignore_index
        size = len(self.thresholds)
        self.pred_count = np.zeros(size, np.int64)
        self.pred_match = np.zeros(size, np.int64)
        self.gt_match = np.zeros(size, np.int64)
        self.gt_count = 0

    def update(self, prob, gt):
        """``prob``: probabilities B x 1 x H x W (or B x H x W / H x W); ``gt`` 0/1/255."""
        prob, gt = _numpy(prob).astype(np.float32), _labels(gt)
        if prob.ndim == 4:
            prob = prob[:, 0]
        if prob.ndim == 2:
            prob, gt = prob[None], gt.reshape((1,) + gt.shape[-2:])
        if prob.shape != gt.shape:
            raise ValueError(f'edge prediction {prob.shape} and label {gt.shape} differ')
        for p, g in zip(prob, gt):
            self._update_one(np.clip(np.nan_to_num(p), 0, 1), g)

    def _update_one(self, prob, gt):
        height, width = gt.shape
        radius = self.max_dist * math.hypot(height, width)
        valid = gt != self.ignore_index
        positive = (gt == 1) & valid
        thin = edge_nms(prob) if self.nms else prob
        thin = np.where(valid, thin, 0.0).astype(np.float32)
        if positive.any():
            dist = cv2.distanceTransform((~positive).astype(np.uint8), cv2.DIST_L2,
                                         cv2.DIST_MASK_PRECISE)
        else:
            dist = np.full(gt.shape, np.inf, dtype=np.float32)
        candidates = thin > 0
        values = thin[candidates]
        self.pred_count += _count_ge(values, self.thresholds)
        pred_near = _count_ge(values[dist[candidates] <= radius], self.thresholds)
        nearby = cv2.dilate(thin, _disk(radius), borderType=cv2.BORDER_CONSTANT, borderValue=0)
        gt_near = _count_ge(nearby[positive], self.thresholds)
        # A one-to-one matching pairs at most min(pred_near, gt_near) pixels: use that bound.
        matched = np.minimum(pred_near, gt_near)
        self.pred_match += matched
        self.gt_match += matched
        self.gt_count += int(positive.sum())

    def score(self):
        """ODS F with its threshold, precision and recall."""
        precision = self.pred_match / np.maximum(self.pred_count, 1)
        precision = np.where(self.pred_count > 0, precision, 1.0)
        recall = self.gt_match / max(self.gt_count, 1)
        f = np.where(precision + recall > 0,
                     2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        best = int(np.argmax(f))
        return {'odsF': float(f[best]), 'threshold': float(self.thresholds[best]),
                'precision': float(precision[best]), 'recall': float(recall[best])}


class SaliencyMeter:
    """Maximum F-measure over thresholds (beta^2 = 0.3, thresholds 0.05 .. 0.95).

    The thresholds apply to the saliency probability (softmax of the two logits), as
    TaskDiffusion's ``evaluation/eval_sal.py``. MLoRE's ``eval_sal.py`` applies a sigmoid to
    that probability first, squeezing it into [0.5, 0.731] where only the thresholds 0.55
    .. 0.70 separate pixels (0.20, 0.41, 0.62, 0.85 on the probability), so its maxF is
    usually lower on the same predictions; ``squash=True`` reproduces that protocol (to
    compare with the MLoRE paper's saliency numbers).
    """

    def __init__(self, threshold_step=0.05, beta_squared=0.3, ignore_index=IGNORE_INDEX,
                 squash=False):
        self.squash = bool(squash)
        self.thresholds = np.arange(threshold_step, 1 - 1e-9, threshold_step)
        self.beta_squared = beta_squared
        self.ignore_index = ignore_index
        self.tp = np.zeros(len(self.thresholds))
        self.pred_pos = np.zeros(len(self.thresholds))
        self.actual_pos = 0.0

    def update(self, prob, gt):
        """``prob``: saliency probability (B x 1 x H x W or B x H x W); ``gt`` 0/1/255."""
        prob, gt = _numpy(prob).astype(np.float64), _labels(gt)
        if prob.ndim == 4:
            prob = prob[:, 0]
        if prob.shape != gt.shape:
            raise ValueError(f'saliency prediction {prob.shape} and label {gt.shape} differ')
        if self.squash:
            prob = 1.0 / (1.0 + np.exp(-prob))
        valid = gt != self.ignore_index
        p, g = prob[valid], gt[valid] == 1
        self.pred_pos += _count_ge(p, self.thresholds)
        self.tp += _count_ge(p[g], self.thresholds)
        self.actual_pos += float(g.sum())

    def score(self):
        """The maximum F-measure over thresholds."""
        precision = self.tp / np.maximum(self.pred_pos, 1e-12)
        recall = self.tp / max(self.actual_pos, 1e-12)
        denom = self.beta_squared * precision + recall
        f = np.where(denom > 0, (1 + self.beta_squared) * precision * recall
                     / np.maximum(denom, 1e-12), 0.0)
        return {'maxF': float(f.max())}


# Meter kind of the task table -> (meter class, its metrics' directions: +1 higher is
# better, -1 lower is better; only metrics with a direction enter Delta_m).
METERS = {
    'miou': (lambda task, num_outputs, options: SemsegMeter(num_outputs[task]), {'mIoU': 1}),
    'depth': (lambda task, num_outputs, options: DepthMeter(*options['depth_range']),
              {'rmse': -1, 'abs_rel': -1}),
    'normals': (lambda task, num_outputs, options: NormalsMeter(), {'mean_angle': -1}),
    'edge': (lambda task, num_outputs, options: EdgeMeter(max_dist=options['edge_max_dist']),
             {'odsF': 1}),
    'maxf': (lambda task, num_outputs, options: SaliencyMeter(), {'maxF': 1}),
}


def metric_directions(tasks=None):
    """(task, metric) -> direction of every metric with one (default: every task)."""
    return {(task, name): direction for task in (tasks or task_names())
            for name, direction in METERS[get_task(task).meter][1].items()}


def primary_metrics(tasks=None):
    """Task -> its one metric of Delta_m (the task table's first summary metric).

    The metric the multi-task literature reports (Maninis et al. 2019; Vandenhende et al.
    2021, and the MLoRE / TaskDiffusion tables): NYUD semseg mIoU, depth RMSE, normals mean
    angle, edge odsF; PASCAL adds human parts mIoU and saliency maxF.
    """
    return {task: get_task(task).primary_metric for task in (tasks or task_names())}


def multi_task_gain(results, baselines, metrics=None):
    """Multi-task performance Delta_m in percent (Maninis et al.; Vandenhende et al.).

    ``Delta_m = 100 / T * sum_t d_t (M_t - B_t) / B_t`` over the T tasks present in both
    ``results`` and ``baselines`` (nested dicts task -> metric -> value), with ONE metric
    per task (``metrics``: task -> metric name, default each task's primary metric in the
    task table) and ``d_t`` =
    +1 where higher is better, -1 where lower is better. A task counts once however many
    metrics it reports (averaging depth RMSE and abs-rel would weigh depth twice). Also
    returns the per-task relative gains, keyed ``task.metric``.
    """
    metrics = dict(primary_metrics() if metrics is None else metrics)
    directions = metric_directions()
    gains = {}
    for task, name in metrics.items():
        if not isinstance(name, str):
            raise ValueError(f'multi_task_gain takes one metric name per task, got {name!r} '
                             f'for {task}')
        direction = directions.get((task, name))
        if direction is None:
            raise ValueError(f'no known direction for metric {task}.{name}; known: '
                             f'{sorted(f"{t}.{m}" for t, m in directions)}')
        if task in results and task in baselines and name in results[task] \
                and name in baselines[task]:
            base = float(baselines[task][name])
            if base == 0:
                raise ValueError(f'baseline {task}.{name} is 0: relative gain undefined')
            gains[f'{task}.{name}'] = 100.0 * direction * (float(results[task][name]) - base) \
                / abs(base)
    if not gains:
        raise ValueError('no metric appears in both results and baselines')
    return {'delta_m': sum(gains.values()) / len(gains), 'per_metric': gains}


def predictions_from_raw(task, raw):
    """Model raw outputs (B x C x H x W) -> what the meters take for ``task``."""
    activation = get_task(task).activation
    if activation == 'argmax':
        return raw.argmax(dim=1)
    if activation == 'softmax':
        if raw.shape[1] == 1:                     # one logit (MT-CP): 255 * sigmoid / 255
            return torch.sigmoid(raw.float())[:, 0]
        return torch.softmax(raw.float(), dim=1)[:, 1]
    if activation == 'sigmoid':
        return torch.sigmoid(raw.float())
    if activation == 'l2_normalize':
        return F.normalize(raw.float(), dim=1)
    return raw.float().clamp(min=0)                               # depth (metres)


class MultiTaskMeter:
    """One meter per task; ``update(raw_outputs, targets)``; ``score()`` -> nested dict."""

    def __init__(self, tasks, num_outputs, edge_max_dist=0.011, depth_range=(0.0, 80.0)):
        self.tasks = tuple(tasks)
        options = {'depth_range': depth_range, 'edge_max_dist': edge_max_dist}
        self.meters = {}
        for task in self.tasks:
            try:
                make = METERS[get_task(task).meter][0]
            except ValueError:
                raise ValueError(f'no metric for task {task!r}') from None
            self.meters[task] = make(task, num_outputs, options)

    def update(self, raw, targets):
        """Add a batch of raw model outputs and targets (task -> tensor)."""
        for task in self.tasks:
            self.meters[task].update(predictions_from_raw(task, raw[task]), targets[task])

    def score(self):
        """Nested dict task -> metric -> value."""
        return {task: meter.score() for task, meter in self.meters.items()}
