"""Flicker on video: change between consecutive predictions that the scene does not explain.

For consecutive frames t-1, t of one sequence (pairs across a scene cut are left out, see
:meth:`TemporalMeter.new_sequence`), with predictions p and ground truth g at each pixel:

* ``depth_flicker``: mean over pixels with valid depth in both frames of
  |(log p_t - log p_{t-1}) - (log g_t - log g_{t-1})| (predictions clamped to >= 1 mm);
  0 when the prediction changes exactly as the scene does;
* ``semseg_flicker``: fraction of the pixels whose ground-truth label is the same (and
  not ignored) in both frames where the predicted label changes;
* ``normals_flicker``: mean over pixels with a ground-truth normal in both frames of
  |angle(p_t, p_{t-1}) - angle(g_t, g_{t-1})|, in degrees;
* ``edge_flicker``: fraction of the pixels whose ground-truth edge label is the same in
  both frames where the predicted edge (probability > 0.5) appears or vanishes.

All are pooled over every pixel of every pair (not averaged per pair). Tasks are told
apart by their kind in the task table (``mtdp_ros.models.tasks``): every ``labels`` task
is measured as semseg, every ``probability`` task as edges (another task of a kind gets
``<name>_flicker``).
"""

import math

import torch

from ..models.tasks import find_task
from .metrics import predictions_from_raw

IGNORE_INDEX = 255
MIN_DEPTH_M = 1e-3


def temporal_kind(task):
    """The task-table kind a task's flicker is measured as (None: no such task)."""
    spec = find_task(task)
    return None if spec is None else spec.kind


def _angle_deg(a, b):
    """Angle between unit vectors along dim 1, in degrees."""
    cosine = (a * b).sum(dim=1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cosine))


class TemporalMeter:
    """Accumulate flicker over consecutive frames; ``update`` one frame at a time."""

    def __init__(self, tasks):
        self.tasks = tuple(t for t in tasks if temporal_kind(t) is not None)
        self.kinds = {t: temporal_kind(t) for t in self.tasks}
        self.sums = {t: 0.0 for t in self.tasks}
        self.counts = {t: 0 for t in self.tasks}
        self.pairs = 0
        self.previous = None

    def new_sequence(self):
        """The next frame starts a new sequence (or follows a cut): it pairs with nothing."""
        self.previous = None

    def _frame(self, raw, targets):
        frame = {}
        for task in self.tasks:
            pred = predictions_from_raw(task, raw[task]).float()
            gt = targets[task]
            kind = self.kinds[task]
            if kind == 'labels':
                frame[task] = (pred.long(), gt[:, 0].long())
            elif kind == 'depth':
                frame[task] = (pred.clamp(min=MIN_DEPTH_M).log(), gt.float())
            elif kind == 'normals':
                frame[task] = (pred, gt.float())
            else:                                           # probability: present or not
                frame[task] = (pred > 0.5, gt > 0.5)
        return frame

    def update(self, raw, targets):
        """Add the next frame of the sequence: raw outputs and targets of batch 1."""
        if any(raw[t].shape[0] != 1 for t in self.tasks):
            raise ValueError('TemporalMeter.update takes one frame at a time (batch 1)')
        frame = self._frame(raw, targets)
        if self.previous is not None:
            self.pairs += 1
            for task in self.tasks:
                total, count = self._pair(self.kinds[task], self.previous[task],
                                          frame[task])
                self.sums[task] += total
                self.counts[task] += count
        self.previous = frame

    @staticmethod
    def _pair(kind, before, after):
        (p0, g0), (p1, g1) = before, after
        if kind == 'labels':
            valid = (g0 == g1) & (g1 != IGNORE_INDEX)
            changed = (p0 != p1) & valid
            return float(changed.sum()), int(valid.sum())
        if kind == 'depth':
            valid = (g0 > 0) & (g1 > 0) & torch.isfinite(g0) & torch.isfinite(g1)
            g_change = torch.log(torch.where(valid, g1, 1.0)) - \
                torch.log(torch.where(valid, g0, 1.0))
            error = ((p1 - p0) - g_change).abs()[valid]
            return float(error.double().sum()), int(valid.sum())
        if kind == 'normals':
            valid = (g0.abs().sum(dim=1) > 0) & (g1.abs().sum(dim=1) > 0)
            g_unit0, g_unit1 = (torch.nn.functional.normalize(g, dim=1) for g in (g0, g1))
            error = (_angle_deg(p0, p1) - _angle_deg(g_unit0, g_unit1)).abs()[valid]
            return float(error.double().sum()), int(valid.sum())
        valid = g0 == g1
        changed = (p0 != p1) & valid
        return float(changed.sum()), int(valid.sum())

    def score(self):
        """``{'depth_flicker': ..., 'semseg_flicker': ..., ..., 'pairs': N}`` (NaN: no pixel)."""
        out = {}
        for task in self.tasks:
            name = f'{task}_flicker'
            count = self.counts[task]
            out[name] = self.sums[task] / count if count else math.nan
        out['pairs'] = self.pairs
        return out
