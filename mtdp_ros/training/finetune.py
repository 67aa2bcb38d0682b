"""RGB-D fine-tuning: what the training loop adds for recordings, and their evaluation.

Semantic labels do not exist in a recording: the training loop leaves ``semseg`` out of
the loss and keeps it from drifting (``finetune`` section of the training config:
distillation from the starting model and/or frozen parameters).
"""

import copy
import math
import types

import torch

from ..runtime.options import is_diffusion
from .rgbd import collate_rgbd
from .rgbd_labels import SUPERVISED_TASKS

RGBD_SOURCES = ('tum', 'rosbag')


def matches_pattern(name, pattern):
    """Whether ``pattern`` is a dotted prefix of parameter ``name`` or one of its parts.

    'encoder' matches encoder.*, 'semseg' every parameter of the semantic task only.
    """
    parts = name.split('.')
    pattern_parts = pattern.split('.')
    if parts[:len(pattern_parts)] == pattern_parts:
        return True
    return len(pattern_parts) == 1 and pattern in parts


def _stay_in_eval_mode(module, mode=True):
    """``train()`` of a BatchNorm layer kept in eval mode (see ``FineTune``)."""
    return torch.nn.Module.train(module, False)


class FineTune:
    """What RGB-D fine-tuning adds to the training loop (the config's ``finetune`` section).

    * ``loss_tasks``: the model's tasks the data supervises (depth, normals, edge);
    * ``freeze``: parameters matching these patterns (see ``matches_pattern``) get
      ``requires_grad = False`` before the optimiser is built;
    * ``distill`` > 0: a frozen copy of the starting model (the teacher) gives semantic
      logits for every batch; ``distill * distillation_loss(student, teacher)`` over the
      pixels inside the frame is added to the objective (key ``semseg_distill``). The
      teacher runs in train mode with the random state the student's forward pass then
      reuses: MLoRE's noisy top-k routing draws the same noise in both, so the term
      measures drift from the start, not routing noise (against the teacher's noise-free
      outputs it was measured to pull the classes away from the start);
    * ``batchnorm: frozen``: every BatchNorm layer stays in eval mode (running statistics
      of the starting model, affine parameters still trained unless frozen). Small
      fine-tuning batches give noisy batch statistics, and in train mode the semantic
      path's statistics would drift to the new data even with its parameters frozen;
      the student in train mode then computes what the teacher computes, so the
      distillation term starts at zero.
    """

    def __init__(self, model, section, data_source):
        config = model.config
        self.loss_tasks = tuple(t for t in config.tasks if t in SUPERVISED_TASKS)
        unsupervised = [t for t in config.tasks if t not in SUPERVISED_TASKS]
        if data_source in RGBD_SOURCES and is_diffusion(config) and unsupervised:
            raise ValueError(f'RGB-D fine-tuning of TaskDiffusion models is not supported: '
                             f'their training step needs labels of every task and '
                             f'{unsupervised} have none here')
        if not self.loss_tasks:
            raise ValueError(f'the model has none of the tasks RGB-D data supervises '
                             f'({list(SUPERVISED_TASKS)})')
        self.weight = float(section['distill'])
        self.temperature = float(section['distill_temperature'])
        self.frozen = []
        patterns = list(section['freeze'] or [])
        for pattern in patterns:
            hits = [n for n, p in model.named_parameters() if matches_pattern(n, pattern)]
            if not hits:
                raise ValueError(f'finetune.freeze: {pattern!r} matches no parameter of '
                                 f'the model')
            self.frozen += hits
        self.frozen = sorted(set(self.frozen))
        for name, param in model.named_parameters():
            if name in self.frozen:
                param.requires_grad_(False)
        self.frozen_norms = []
        if section['batchnorm'] == 'frozen':
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.train = types.MethodType(_stay_in_eval_mode, module)
                    module.eval()
                    self.frozen_norms.append(module)
        self.teacher = None
        if self.weight > 0:
            if 'semseg' not in config.tasks:
                raise ValueError('finetune.distill needs a model with a semseg task')
            self.teacher = copy.deepcopy(model).eval()
            for param in self.teacher.parameters():
                param.requires_grad_(False)
        self._teacher_logits = None

    def to(self, device):
        """Move the teacher to ``device``."""
        if self.teacher is not None:
            self.teacher.to(device)
        return self

    def before_forward(self, x):
        """Run the teacher on batch ``x``; call right before the student's forward pass.

        The random state is restored afterwards, so the student draws the same routing
        noise as the teacher did.
        """
        if self.teacher is None:
            return
        devices = [x.device] if x.device.type == 'cuda' else []
        with torch.random.fork_rng(devices=devices):
            self.teacher.train()            # noisy routing as the student (BatchNorm stays)
            try:
                with torch.no_grad():
                    self._teacher_logits = self.teacher.forward_train(x)['pred']['semseg']
            finally:
                self.teacher.eval()

    def add_losses(self, losses, x, outputs, targets):
        """Add the distillation term to a loss dict of ``MultiTaskLoss`` (in place)."""
        if self.teacher is None:
            return losses
        from .losses import distillation_loss
        teacher_logits = self._teacher_logits
        if teacher_logits is None:
            with torch.no_grad():
                teacher_logits = self.teacher(x)['semseg']
        self._teacher_logits = None
        inside = targets['depth'] > 0 if 'depth' in targets else None
        term = distillation_loss(outputs['pred']['semseg'], teacher_logits,
                                 self.temperature, inside)
        losses['semseg_distill'] = term.detach()
        losses['total'] = losses['total'] + self.weight * term
        return losses


@torch.no_grad()
def evaluate_rgbd(model, dataset, teacher=None, tasks=('depth',), batch_size=8, device=None):
    """Metrics of ``model`` on an RGB-D dataset (no augmentation wanted), a nested dict.

    ``tasks``: the supervised tasks to score (depth, normals, edge). With ``teacher`` (the
    starting model), ``semseg_agreement`` gives the fraction of pixels with depth (i.e.
    inside the frame) whose semantic class matches the teacher's, as
    ``scores['semseg_agreement']['with_start']``.
    """
    from .metrics import MultiTaskMeter
    config = model.config
    device = torch.device(device) if device is not None else next(model.parameters()).device
    tasks = [t for t in tasks if t in config.tasks]
    meter = MultiTaskMeter(tasks, config.num_outputs)
    mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=device).view(1, 3, 1, 1)
    was_training = model.training
    model.eval()
    if teacher is not None:
        teacher.eval()
    agree, counted = 0, 0
    try:
        for first in range(0, len(dataset), batch_size):
            batch = collate_rgbd([dataset[i] for i in
                                  range(first, min(first + batch_size, len(dataset)))])
            x = (batch['image'].to(device) - mean) / std
            raw = model(x)
            meter.update({t: raw[t].float() for t in tasks},
                         {t: batch[t].to(device) for t in tasks})
            if teacher is not None and 'semseg' in raw:
                inside = batch['depth'].to(device)[:, 0] > 0
                same = raw['semseg'].argmax(1) == teacher(x)['semseg'].argmax(1)
                agree += int((same & inside).sum())
                counted += int(inside.sum())
    finally:
        model.train(was_training)
    scores = meter.score()
    if teacher is not None:
        scores['semseg_agreement'] = {'with_start': agree / counted if counted else math.nan}
    return scores
