"""TaskDiffusion's cross-task label encoder: all task labels as one map to denoise.

Class tasks are embedded with a table (one extra row for ignored pixels), regression tasks
with a 1x1 convolution (and a learned embedding for invalid pixels: those marked 255, the
authors' ignore value, and nothing else; see ``authors_ignore_regions``); the embeddings are
fused by one 1x1 convolution and squashed to [-scale, scale] with a sigmoid. Saliency
(PASCAL) keeps its own embedding beside the fused map.
"""

import torch
from torch import nn
import torch.nn.functional as F

from .tasks import get_task

IGNORE_INDEX = 255
SALIENCY_THRESHOLD = 0.85
MAX_DEPTH_M = 80.0


class CrossTaskLabelEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.tasks = config.tasks
        self.num_outputs = config.num_outputs
        self.class_tasks = tuple(t for t in self.tasks if config.is_class_task(t))
        # Tasks whose embedding stays beside the fused map (saliency, the authors' layout).
        self.separate_tasks = tuple(t for t in self.tasks
                                    if get_task(t).separate_label_embedding)
        self.scale = config.scale
        dim = config.label_dim
        self.label_embed = nn.ModuleDict()
        self.invalid_embed = nn.ModuleDict()
        for task in self.tasks:
            if task in self.class_tasks:
                self.label_embed[task] = nn.Embedding(config.num_outputs[task] + 1, dim)
            else:
                self.label_embed[task] = nn.Conv2d(config.num_outputs[task], dim, 1)
                self.invalid_embed[task] = nn.Embedding(1, dim)
        fused_tasks = [t for t in self.tasks if t not in self.separate_tasks]
        self.label_fuse = nn.Conv2d(dim * len(fused_tasks), config.decoder_dim, 1)

    def _combine(self, embeddings):
        fused = self.label_fuse(torch.cat([embeddings[t] for t in self.tasks
                                           if t not in self.separate_tasks], 1))
        parts = [embeddings[t] for t in self.separate_tasks if t in embeddings] + [fused]
        return (torch.sigmoid(torch.cat(parts, dim=1)) * 2 - 1) * self.scale

    def _embed_classes(self, task, labels):
        return self.label_embed[task](labels).permute(0, 3, 1, 2)

    def encode_predictions(self, logits):
        """Clean map x_0 from predicted logits (what the sampler re-encodes each step)."""
        embeddings = {}
        for task in self.tasks:
            raw = logits[task]
            if task in self.class_tasks and get_task(task).activation == 'softmax':
                # Two-class probability (saliency): the class is "probability > threshold".
                labels = (torch.softmax(raw, dim=1)[:, 1] > SALIENCY_THRESHOLD).long()
                embeddings[task] = self._embed_classes(task, labels)
            elif task in self.class_tasks:
                embeddings[task] = self._embed_classes(task, raw.argmax(dim=1))
            else:
                embeddings[task] = self.label_embed[task](_regression_value(task, raw))
        return self._combine(embeddings)

    def encode_targets(self, targets, size):
        """Clean map x_0 from ground truth at input size, resized to ``size`` (training)."""
        embeddings = {}
        for task in self.tasks:
            target = targets[task]
            if task in self.class_tasks:
                labels = F.interpolate(target.float(), size=size, mode='nearest').long()
                labels[labels == IGNORE_INDEX] = self.num_outputs[task]
                embeddings[task] = self._embed_classes(task, labels[:, 0])
            else:
                # As the authors' ``forward_train``: invalid = elements equal to 255, averaged
                # over channels; the value map (255s included) is embedded and blended.
                target = authors_ignore_regions(task, target.float())
                invalid = _invalid_mask(task, target).float().mean(dim=1, keepdim=True)
                invalid = F.interpolate(invalid, size=size, mode='bilinear')
                value = F.interpolate(target, size=size, mode='bilinear')
                invalid_code = self.invalid_embed[task].weight.view(1, -1, 1, 1)
                embeddings[task] = (invalid * invalid_code
                                    + (1 - invalid) * self.label_embed[task](value))
        return self._combine(embeddings)


def _regression_value(task, raw):
    spec = get_task(task)
    if spec.kind == 'depth':
        return raw.clamp(0, MAX_DEPTH_M)
    if spec.activation == 'sigmoid':
        return torch.sigmoid(raw)
    if spec.activation == 'l2_normalize':
        return F.normalize(raw, p=2, dim=1)
    return raw


def authors_ignore_regions(task, target):
    """Targets as the authors' model sees them: zero normals set to the ignore value 255.

    Our target format marks a pixel without a normal by the zero vector; the authors'
    data pipeline (``AddIgnoreRegions`` in their ``data/transforms.py``) writes 255 into
    all three channels there before the label encoder runs. Depth keeps 0 (no
    measurement) as a value: the authors neither mark nor mask it in the encoder.
    """
    if get_task(task).target == 'vector':
        zero = (target == 0).all(dim=1, keepdim=True)
        return torch.where(zero, torch.full_like(target, IGNORE_INDEX), target)
    return target


def _invalid_mask(task, target):
    """Elements equal to the ignore value 255: the authors' only invalid mark."""
    return target == IGNORE_INDEX
