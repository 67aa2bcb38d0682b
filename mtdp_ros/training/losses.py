"""Losses of MLoRE / TaskDiffusion training and the loss balancing schemes.

Per loss kind of the task table (``mtdp_ros.models.tasks``; targets in the model's target
format, see ``mtdp_ros.models``):

* ``cross_entropy`` (``semseg`` / ``human_parts``): cross-entropy, label 255 ignored, mean
  over valid pixels;
* ``balanced_cross_entropy`` (``sal``): class-balanced 2-way cross-entropy (weights from
  the batch's label frequency; binary cross-entropy with the same weights for a one-logit
  head, as MT-CP's);
* ``depth_l1``: L1 over pixels whose target is not 0 (invalid);
* ``normals_l1``: L1 between the L2-normalised prediction and the target, summed over the
  three channels and averaged over pixels whose target is not the zero vector (nor 255);
* ``edge_bce`` (``edge``): weighted binary cross-entropy, positives weighted ``edge_w`` and
  negatives ``1 - edge_w`` (the authors' ``BalancedBinaryCrossEntropyLoss`` with a fixed weight),
  255 ignored.

``MultiTaskLoss`` sums them with per-task weights, adds the MoE load-balancing term of
MLoRE, for TaskDiffusion the auxiliary heads' losses times ``aux_weight``, and for MT-CP
the deep-supervision predictions' plain losses times ``deep_weight``. Balancing:
``fixed`` (the configured weights) or ``lps`` (MT-CP's loss prioritisation scheme).
"""

import torch
from torch import nn
import torch.nn.functional as F

from ..models.tasks import find_task, get_task, task_names

IGNORE_INDEX = 255


def _valid_count(mask):
    return mask.sum().clamp(min=1)


def cross_entropy_loss(logits, target, ignore_index=IGNORE_INDEX, class_weight=None):
    """Mean cross-entropy over pixels whose label is not ``ignore_index``.

    logits B x C x H x W, target B x 1 x H x W (or B x H x W) integer labels.
    """
    label = target.squeeze(1).long() if target.dim() == 4 else target.long()
    loss = F.cross_entropy(logits.float(), label, weight=class_weight,
                           ignore_index=ignore_index, reduction='sum')
    return loss / _valid_count(label != ignore_index)


def balanced_cross_entropy_loss(logits, target, ignore_index=IGNORE_INDEX):
    """2-class cross-entropy with class weights (w_neg, w_pos) = (1 - f_neg, f_neg).

    ``f_neg`` is the fraction of valid pixels labelled 0 (the authors' saliency loss).
    """
    label = target.squeeze(1).long() if target.dim() == 4 else target.long()
    valid = label != ignore_index
    if valid.any() and int(label[valid].max()) > 1:
        raise ValueError('balanced cross-entropy expects binary labels (0, 1, or 255)')
    n_valid = _valid_count(valid)
    w_pos = (label[valid] == 0).sum().float() / n_valid
    if logits.shape[1] == 1:
        # One logit (MT-CP's saliency head): the same weights on the binary cross-entropy.
        logit = logits[:, 0].float()
        positive = (label == 1).float()
        weight = w_pos * positive + (1.0 - w_pos) * (1.0 - positive)
        per_pixel = F.binary_cross_entropy_with_logits(logit, positive, reduction='none')
        return (per_pixel * weight * valid.float()).sum() / n_valid
    weight = torch.stack([1.0 - w_pos, w_pos]).to(logits.device)
    loss = F.cross_entropy(logits.float(), label, weight=weight, ignore_index=ignore_index,
                           reduction='none')
    return loss.sum() / n_valid


def depth_loss(pred, target, invalid_value=0.0):
    """L1 over pixels whose target differs from ``invalid_value`` (0: no measurement)."""
    mask = target != invalid_value
    return ((pred.float() - target) * mask).abs().sum() / _valid_count(mask)


def normals_loss(pred, target, ignore_index=IGNORE_INDEX):
    """L1 between unit-normalised predictions and targets; zero-vector targets ignored.

    Summed over the three channels, averaged over valid pixels (as the authors' L1Loss
    with ``normalize=True``). The authors mask pixels with a channel equal to 255, after
    their ``AddIgnoreRegions`` has written 255 over zero normals: the same pixels as
    zero-vector targets here; 255 is masked too, for targets in the authors' form.
    """
    mask = (target != 0).any(dim=1, keepdim=True) & \
        (target != ignore_index).all(dim=1, keepdim=True)
    unit = F.normalize(pred.float(), p=2, dim=1)
    return ((unit - target).abs() * mask).sum() / _valid_count(mask)


def edge_loss(logit, target, edge_w=0.95, ignore_index=IGNORE_INDEX):
    """Weighted BCE: mean over valid pixels of ``-[w y log p + (1 - w)(1 - y) log(1 - p)]``."""
    if not 0.0 < edge_w < 1.0:
        raise ValueError(f'edge_w must lie in (0, 1), got {edge_w}')
    mask = target != ignore_index
    label = torch.where(mask, target, torch.zeros_like(target)).float()
    logit = logit.float()
    # log p = -softplus(-x), log(1 - p) = -softplus(x): stable for large |x|.
    loss = edge_w * label * F.softplus(-logit) + (1 - edge_w) * (1 - label) * F.softplus(logit)
    return (loss * mask).sum() / _valid_count(mask)


def load_balancing_loss(routes):
    """Load-balancing loss of MLoRE: sum over routing sites of ``(std(m) / mean(m))^2``.

    ``routes``: list of (rows x N_experts) gate tensors, one per routing site (rows: batch
    samples of every task); ``m`` is the mean gate of each expert over the rows. ``std`` is
    the unbiased standard deviation over experts, as ``torch.std``.
    """
    total = None
    for gates in routes:
        mean_gate = gates.float().reshape(-1, gates.shape[-1]).mean(dim=0)
        term = (mean_gate.std() / mean_gate.mean().clamp(min=1e-12)) ** 2
        total = term if total is None else total + term
    return total


def distillation_loss(student_logits, teacher_logits, temperature=1.0, mask=None):
    """KL divergence from the teacher's to the student's class distribution, per pixel.

    ``KL(softmax(t / T) || softmax(s / T)) * T^2`` averaged over the pixels where ``mask``
    (B x 1 x H x W or B x H x W, bool) is true (all pixels without a mask). Used to keep
    a task without labels (semantic classes in RGB-D fine-tuning) close to the starting
    model's predictions. The teacher's logits are taken as constants.
    """
    if not temperature > 0:
        raise ValueError(f'distillation temperature must be positive, got {temperature}')
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f'student and teacher logits differ in shape: '
                         f'{tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}')
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    per_pixel = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)
    if mask is None:
        return per_pixel.mean() * temperature ** 2
    mask = mask.squeeze(1) if mask.dim() == 4 else mask
    return (per_pixel * mask).sum() / _valid_count(mask) * temperature ** 2


# Loss kind of the task table -> loss(prediction, target, MultiTaskLoss).
LOSS_FUNCTIONS = {
    'cross_entropy': lambda p, t, cfg: cross_entropy_loss(p, t),
    'balanced_cross_entropy': lambda p, t, cfg: balanced_cross_entropy_loss(p, t),
    'depth_l1': lambda p, t, cfg: depth_loss(p, t),
    'normals_l1': lambda p, t, cfg: normals_loss(p, t),
    'edge_bce': lambda p, t, cfg: edge_loss(p, t, cfg.edge_w),
}


class LossPrioritizer:
    """MT-CP's loss prioritisation scheme (LPS) over log-projected task losses.

    1. Log-scale projection: each task loss enters the objective as ``log(1 + L_t + eta)``
       (the scales of CE, L1 and BCE become comparable; ``eta`` keeps it positive).
    2. History-based priority: every ``period`` steps (the paper's epoch), the mean
       projected loss ``l_t`` of the period is recorded. With ``history`` periods of history
       the weight of task t is its progress ratio over the overall ratio::

           w_t = (l_t[now] / l_t[now - K]) / (sum_s l_s[now] / sum_s l_s[now - K])

       so a task whose loss falls more slowly than the total (a harder task) gets w_t > 1.
    3. Spread control: deviations from the mean weight are amplified by ``alpha``
       (``w_t <- m + (1 + alpha)(w_t - m)``), because weights drift together as training
       converges; weights are then floored at ``min_weight`` and rescaled to mean 1.

    Until ``history`` periods have been seen every weight is 1. The paper's equations are
    not in the text we have; this is our reading of its description and of the authors'
    log projection ``log(L + 1 + eta)`` (alpha = 2.5 as in the paper).
    """

    def __init__(self, tasks, history=3, period=100, alpha=2.5, eta=1e-6, min_weight=0.05):
        if history < 1 or period < 1:
            raise ValueError('lps history and period must be >= 1')
        self.tasks = tuple(tasks)
        self.history, self.period, self.alpha = int(history), int(period), float(alpha)
        self.eta, self.min_weight = float(eta), float(min_weight)
        self.weights = {t: 1.0 for t in self.tasks}
        self.records = []                       # per finished period: {task: mean l_t}
        self._sums = {t: 0.0 for t in self.tasks}
        self._count = 0

    def project(self, loss):
        """The log-scale projection of one task loss (differentiable)."""
        return torch.log(1.0 + loss + self.eta)

    def observe(self, projected):
        """Record one step's projected losses ({task: float or tensor}).

        Weights change once per period; tensors are summed on their device and read once
        per period (no synchronisation per step).
        """
        for task in self.tasks:
            self._sums[task] = self._sums[task] + projected[task]
        self._count += 1
        if self._count >= self.period:
            self.records.append({t: float(self._sums[t]) / self._count for t in self.tasks})
            self.records = self.records[-(self.history + 1):]
            self._sums = {t: 0.0 for t in self.tasks}
            self._count = 0
            self.weights = self.compute_weights(self.records, self.history, self.alpha,
                                                self.min_weight)

    @staticmethod
    def compute_weights(records, history, alpha, min_weight=0.05):
        """Weights from a list of per-period mean projected losses (oldest first)."""
        tasks = list(records[-1]) if records else []
        if len(records) <= history:
            return {t: 1.0 for t in tasks}
        now, then = records[-1], records[-1 - history]
        overall = sum(now.values()) / max(sum(then.values()), 1e-12)
        raw = {t: (now[t] / max(then[t], 1e-12)) / max(overall, 1e-12) for t in tasks}
        mean = sum(raw.values()) / len(raw)
        spread = {t: max(min_weight, mean + (1.0 + alpha) * (raw[t] - mean)) for t in tasks}
        scale = len(tasks) / sum(spread.values())
        return {t: spread[t] * scale for t in tasks}

    def state_dict(self):
        """Everything needed to resume (plain Python values)."""
        return {'weights': dict(self.weights), 'records': [dict(r) for r in self.records],
                'sums': {t: float(v) for t, v in self._sums.items()}, 'count': self._count}

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned."""
        self.weights = {t: float(state['weights'][t]) for t in self.tasks}
        self.records = [{t: float(r[t]) for t in self.tasks} for r in state['records']]
        self._sums = {t: float(state['sums'][t]) for t in self.tasks}
        self._count = int(state['count'])


class MultiTaskLoss(nn.Module):
    """Weighted sum of the task losses, MoE load balancing and TaskDiffusion's aux heads.

    ``forward(outputs, targets)`` takes ``model.forward_train``'s dict (``pred``, ``aux``,
    ``routes``, ``deep``) and returns a dict: every task loss (unweighted, detached), ``aux`` (the
    auxiliary heads' weighted sum, when present), ``load_balancing``, and ``total`` (the
    differentiable objective)::

        fixed: total = sum_t w_t L_t + aux_weight * sum_t w_t L_t^aux + lb_weight * LB
        lps:   total = sum_t p_t log(1 + w_t L_t + eta) + aux_weight * (same on aux) + ...
        both:  + deep_weight * sum_levels sum_t L_t^level     (``deep``: MT-CP)

    where ``w_t`` are the configured weights and ``p_t`` the LPS priorities. The deep terms
    are neither weighted nor prioritised: MT-CP's training adds each task's intermediate
    losses, summed over the levels and halved, to the prioritised total.
    """

    def __init__(self, tasks, weights=None, edge_w=0.95, load_balancing=0.0, aux_weight=0.0,
                 balancing='fixed', lps=None, deep_weight=0.5):
        super().__init__()
        self.tasks = tuple(tasks)
        unknown = [t for t in self.tasks if find_task(t) is None]
        if unknown:
            raise ValueError(f'no loss for tasks {unknown}; known: {sorted(task_names())}')
        weights = dict(weights or {})
        extra = sorted(set(weights) - set(self.tasks))
        if extra:
            raise ValueError(f'loss weights given for tasks the model lacks: {extra}')
        self.weights = {t: float(weights.get(t, find_task(t).loss_weight)) for t in self.tasks}
        self.edge_w = float(edge_w)
        self.load_balancing = float(load_balancing)
        self.aux_weight = float(aux_weight)
        self.deep_weight = float(deep_weight)
        if balancing not in ('fixed', 'lps'):
            raise ValueError(f"loss balancing must be 'fixed' or 'lps', got {balancing!r}")
        self.balancing = balancing
        self.prioritizer = (LossPrioritizer(self.tasks, **(lps or {}))
                            if balancing == 'lps' else None)

    def task_losses(self, pred, targets):
        """Unweighted loss of every task in ``self.tasks``."""
        missing = [t for t in self.tasks if t not in pred or t not in targets]
        if missing:
            raise ValueError(f'predictions or targets missing for tasks {missing}')
        return {t: LOSS_FUNCTIONS[get_task(t).loss](pred[t], targets[t], self)
                for t in self.tasks}

    def _combine(self, losses):
        if self.prioritizer is None:
            return sum(self.weights[t] * losses[t] for t in self.tasks)
        projected = {t: self.prioritizer.project(self.weights[t] * losses[t])
                     for t in self.tasks}
        return sum(self.prioritizer.weights[t] * projected[t] for t in self.tasks), projected

    def forward(self, outputs, targets):
        """Loss dict of one batch (see the class docstring)."""
        losses = self.task_losses(outputs['pred'], targets)
        result = {t: v.detach() for t, v in losses.items()}
        if self.prioritizer is None:
            total = self._combine(losses)
        else:
            total, projected = self._combine(losses)
            if self.training:
                self.prioritizer.observe({t: v.detach() for t, v in projected.items()})
        aux = outputs.get('aux') or {}
        if aux and self.aux_weight > 0:
            aux_losses = self.task_losses(aux, targets)
            aux_total = self._combine(aux_losses)
            aux_total = aux_total if self.prioritizer is None else aux_total[0]
            result['aux'] = aux_total.detach()
            total = total + self.aux_weight * aux_total
        deep = outputs.get('deep') or []
        if deep and self.deep_weight > 0:
            deep_total = sum(sum(self.task_losses(level, targets).values()) for level in deep)
            result['deep'] = deep_total.detach()
            total = total + self.deep_weight * deep_total
        routes = outputs.get('routes') or []
        if routes and self.load_balancing > 0:
            balance = load_balancing_loss(routes)
            result['load_balancing'] = balance.detach()
            total = total + self.load_balancing * balance
        result['total'] = total
        return result

    def priorities(self):
        """Return the current LPS task weights (all 1.0 with fixed balancing)."""
        if self.prioritizer is None:
            return {t: 1.0 for t in self.tasks}
        return dict(self.prioritizer.weights)
