"""TaskDiffusion's cross-task diffusion decoder (thesis ch. 4; the authors' head).

Given the ViT's four level maps and the noisy cross-task map x_t at 1/16 resolution:
1. condition: per level, a 1x1 conv over [level features, x_t];
2. time: learned sinusoidal embedding of log SNR, then an MLP; every block below is
   FiLM-modulated by it (scale + 1, shift);
3. task interaction: shared per-level convs on the condition give pixel-wise task-relation
   maps (T x T per level); each task mixes all tasks' image features with its sigmoid
   relations, and a per-task level fusion (softmax over levels) merges the levels;
4. refinement: ``module_layers`` residual FiLM blocks per task, the last at 1/4 resolution;
5. prediction: a 3x3 conv per task.
The task features of step 3 depend on the image only, so the sampler computes them once.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F

from .config import NUM_LEVELS
from .label_encoder import CrossTaskLabelEncoder
from .mlore import fuse_levels, level_fusion, mlore_block


class FiLMConv(nn.Module):
    """conv_1 -> BatchNorm -> FiLM(time) [-> GELU -> conv_2] [+ input]."""

    def __init__(self, in_dim, mid_dim, time_dim, kernel_size=3, out_dim=None,
                 out_kernel_size=1, residual=False):
        super().__init__()
        self.conv_1 = nn.Conv2d(in_dim, mid_dim, kernel_size, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(mid_dim)
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, mid_dim * 2))
        self.conv_2 = (nn.Conv2d(mid_dim, out_dim, out_kernel_size,
                                 padding=out_kernel_size // 2) if out_dim else None)
        self.residual = residual

    def forward(self, x, time):
        y = self.norm(self.conv_1(x))
        scale, shift = self.time_mlp(time)[:, :, None, None].chunk(2, dim=1)
        y = torch.addcmul(shift, y, scale + 1)          # y * (scale + 1) + shift, one pass
        if self.conv_2 is not None:
            y = self.conv_2(F.gelu(y))
        return y + x if self.residual else y


class LearnedSinusoidalEmbedding(nn.Module):
    """[t, sin(2 pi w t), cos(2 pi w t)] with learned frequencies w, always in float32.

    t is a log SNR in about -18.9..11.5: in fp16 the phase 2 pi w t loses ~1e-2 rad, and the
    embedding was off by 0.04 with the shipped weights. As diffusers does for timestep
    embeddings, the frequencies stay float32 when the model is cast to fp16/bf16 (see
    ``_apply``), the sinusoid is computed in float32, and only the result takes the dtype
    of the layer after it (``out_dtype``: the model's dtype).
    """

    def __init__(self, dim):
        super().__init__()
        self.weights = nn.Parameter(torch.randn(dim // 2))
        self.out_dtype = torch.float32

    def _apply(self, fn, recurse=True):
        weights = self.weights.data
        super()._apply(fn, recurse)
        dtype = self.weights.dtype
        if dtype in (torch.float16, torch.bfloat16):
            # Keep the float32 frequencies (on the new device), not their rounded copy.
            self.weights.data = weights.to(self.weights.device, torch.float32)
        if dtype.is_floating_point:
            self.out_dtype = dtype
        return self

    def forward(self, t):
        t = t.float()
        freqs = t[:, None] * self.weights.float()[None, :] * (2 * math.pi)
        return torch.cat([t[:, None], freqs.sin(), freqs.cos()], dim=-1).to(self.out_dtype)


def image_task_block(channels):
    """Per-task image feature branch of TaskDiffusion without MLoRE (two conv units)."""
    layers = []
    for _ in range(2):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
                   nn.GELU(), nn.Conv2d(channels, channels, 1)]
    return nn.Sequential(*layers)


class TaskInteraction(nn.Module):
    """Task- and level-interaction over the condition (the authors' ``FPN_withtime``)."""

    def __init__(self, config, time_dim):
        super().__init__()
        channels, tasks = config.decoder_dim, config.tasks
        self.tasks = tasks
        self.use_mlore = config.has_mlore
        self.shared_convs = nn.ModuleList([
            nn.ModuleList([FiLMConv(channels, channels, time_dim, 3, out_dim=channels)
                           for _ in range(2)]) for _ in range(NUM_LEVELS)])
        self.relation_maps = nn.ModuleList(
            [FiLMConv(channels, len(tasks) ** 2, time_dim, 3) for _ in range(NUM_LEVELS)])
        if self.use_mlore:
            self.task_feats = nn.ModuleList([
                nn.ModuleList([mlore_block(config, tasks) for _ in range(2)])
                for _ in range(NUM_LEVELS)])
        else:
            self.task_feats = nn.ModuleList([
                nn.ModuleDict({t: image_task_block(channels) for t in tasks})
                for _ in range(NUM_LEVELS)])
        self.task_heads = nn.ModuleList([
            nn.ModuleDict({t: FiLMConv(channels, channels, time_dim, 1) for t in tasks})
            for _ in range(NUM_LEVELS)])
        self.level_fusion = nn.ModuleDict({
            t: FiLMConv(channels * NUM_LEVELS, channels, time_dim, 1, out_dim=NUM_LEVELS,
                        out_kernel_size=3) for t in tasks})

    def image_task_features(self, levels):
        """Per level, each task's image features (B x T x C x h x w) and MLoRE gates."""
        per_level, routes = [], []
        for index, level in enumerate(levels):
            if self.use_mlore:
                first_block, second_block = self.task_feats[index]
                first = first_block.forward_tasks({t: level for t in self.tasks})
                second = second_block.forward_tasks({t: first[t][0] for t in self.tasks})
                feats = [second[t][0] for t in self.tasks]
                routes += [torch.cat([first[t][1] for t in self.tasks]),
                           torch.cat([second[t][1] for t in self.tasks])]
            else:
                feats = [self.task_feats[index][task](level) for task in self.tasks]
            per_level.append(torch.stack(feats, dim=1))
        return per_level, routes

    def forward(self, condition, time, task_features):
        num_tasks = len(self.tasks)
        per_task_levels = {t: [] for t in self.tasks}
        for index, cond in enumerate(condition):
            shared = cond
            for conv in self.shared_convs[index]:
                shared = conv(shared, time)
            relation = self.relation_maps[index](shared, time)
            batch, _, height, width = relation.shape
            relation = torch.sigmoid(relation.view(batch, num_tasks, num_tasks, height, width))
            mixed = mix_tasks(relation, task_features[index])
            for position, task in enumerate(self.tasks):
                per_task_levels[task].append(
                    self.task_heads[index][task](mixed[:, position], time))
        return {task: fuse_levels(lambda x, t=task: self.level_fusion[t](x, time), levels)
                for task, levels in per_task_levels.items()}


def mix_tasks(relation, features):
    """Task i takes sum_j R_ij * F_j: every task's features, pixel-wise weighted.

    ``relation`` B x T x T x h x w, ``features`` B x T x C x h x w -> B x T x C x h x w.
    T multiply-adds over whole maps: as an einsum, PyTorch's CPU path ran one tiny
    matrix product per pixel (h * w of them) and took 30x longer.
    """
    mixed = relation[:, :, 0, None] * features[:, None, 0]
    for source in range(1, features.shape[1]):
        mixed = torch.addcmul(mixed, relation[:, :, source, None], features[:, None, source])
    return mixed


class AuxiliaryHead(nn.Module):
    """Training-only head on the image task features of all levels (deep supervision)."""

    def __init__(self, config, num_outputs):
        super().__init__()
        channels = config.decoder_dim
        self.has_mlore = config.has_mlore
        if config.has_mlore:
            self.level_fusion = level_fusion(channels)
        else:
            self.conv_1 = nn.Conv2d(channels * NUM_LEVELS, channels, 3, padding=1)
            self.conv_2 = nn.Conv2d(channels, channels, 1)
            self.conv_3 = nn.Conv2d(channels * NUM_LEVELS, channels, 1)
            self.norm = nn.BatchNorm2d(channels)
        self.pred = nn.Conv2d(channels, num_outputs, 3, padding=1)

    def forward(self, levels):
        if self.has_mlore:
            fused = fuse_levels(self.level_fusion, levels)
        else:
            stacked = torch.cat(levels, dim=1)
            fused = self.conv_2(F.gelu(self.norm(self.conv_1(stacked)))) + self.conv_3(stacked)
        return self.pred(fused)


class CrossTaskDiffusionDecoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        channels = config.decoder_dim
        self.tasks = config.tasks
        self.config = config
        self.label_encoder = CrossTaskLabelEncoder(config)
        self.condition = nn.ModuleList([nn.Conv2d(channels + config.noise_channels, channels, 1)
                                        for _ in range(NUM_LEVELS)])
        sinusoidal_dim = 16
        self.time_embed = nn.Sequential(
            LearnedSinusoidalEmbedding(sinusoidal_dim), nn.Linear(sinusoidal_dim + 1, channels),
            nn.GELU(), nn.Linear(channels, channels))
        self.task_interaction = TaskInteraction(config, channels)
        self.refine = nn.ModuleList([
            nn.ModuleDict({t: FiLMConv(channels, channels, channels, 3, out_dim=channels,
                                       residual=True) for t in self.tasks})
            for _ in range(config.module_layers)])
        self.pred_heads = nn.ModuleDict({t: nn.Conv2d(channels, config.num_outputs[t], 3,
                                                      padding=1) for t in self.tasks})
        if config.with_aux:
            self.aux_heads = nn.ModuleDict(
                {t: AuxiliaryHead(config, config.num_outputs[t]) for t in self.tasks})

    def denoise(self, levels, x_t, log_snr, cache=None, upsample=True):
        """Task logits from the noisy map; ``cache`` carries the image task features."""
        if cache is None:
            cache = self.task_interaction.image_task_features(levels)
        task_features, _ = cache
        condition = [conv(torch.cat([level, x_t], dim=1))
                     for conv, level in zip(self.condition, levels)]
        time = self.time_embed(log_snr)
        features = self.task_interaction(condition, time, task_features)
        for index, layer in enumerate(self.refine):
            for task in self.tasks:
                feature = features[task]
                if upsample and index == len(self.refine) - 1:
                    feature = F.interpolate(feature, scale_factor=4, mode='bilinear')
                features[task] = layer[task](feature, time)
        logits = {t: self.pred_heads[t](features[t]) for t in self.tasks}
        return logits, cache

    def auxiliary(self, task_features):
        """Auxiliary-head logits at 1/4 resolution from the cached image task features."""
        out = {}
        for position, task in enumerate(self.tasks):
            levels = [F.interpolate(feats[:, position], scale_factor=4, mode='bilinear')
                      for feats in task_features]
            out[task] = self.aux_heads[task](levels)
        return out
