"""MLoRE: ViT encoder, MLoRE decoder (two blocks per level, four levels), conv heads."""

import torch
from torch import nn
import torch.nn.functional as F

from .base import MultiTaskModel
from .config import NUM_LEVELS
from .heads import ConvHead
from .mlore_block import MLoREBlock
from .vit import ViTEncoder


def build_encoder(config):
    return ViTEncoder(config.image_size, config.patch_size, config.embed_dim, config.depth,
                      config.num_heads, config.mlp_ratio, config.select_layers)


def mlore_block(config, tasks):
    grid = config.grid_size
    return MLoREBlock(tasks, config.decoder_dim, grid[0] * grid[1], config.expert_ranks,
                      config.task_expert_rank, config.top_k, config.pre_softmax)


def level_fusion(channels):
    """Per-pixel softmax weights over the four levels (the authors' ``task_mask``)."""
    return nn.Sequential(nn.Conv2d(channels * NUM_LEVELS, channels, 1), nn.BatchNorm2d(channels),
                         nn.GELU(), nn.Conv2d(channels, NUM_LEVELS, 3, padding=1))


def fuse_levels(fusion, features):
    """Weighted sum of per-level features with weights from ``fusion`` (softmax over levels)."""
    weights = torch.softmax(fusion(torch.cat(features, dim=1)), dim=1)
    return sum(weights[:, i:i + 1] * feature for i, feature in enumerate(features))


class MLoREDecoder(nn.Module):
    """Per level: project the ViT map, two MLoRE blocks per task; then fuse levels, x4 up."""

    def __init__(self, config):
        super().__init__()
        channels = config.decoder_dim
        self.tasks = config.tasks
        self.level_proj = nn.ModuleList(
            [nn.Conv2d(config.embed_dim, channels, 1) for _ in range(NUM_LEVELS)])
        self.blocks1 = nn.ModuleList([mlore_block(config, self.tasks) for _ in range(NUM_LEVELS)])
        self.blocks2 = nn.ModuleList([mlore_block(config, self.tasks) for _ in range(NUM_LEVELS)])
        self.level_fusion = nn.ModuleDict({t: level_fusion(channels) for t in self.tasks})
        if config.vitb_unused_modules:
            # Present in the authors' ViT-B model and checkpoint, never called in forward.
            self.unused_query_fuse = nn.ModuleDict(
                {t: nn.Conv2d(channels * NUM_LEVELS, channels, 1) for t in self.tasks})
            self.unused_route_classifier1 = nn.Conv2d(channels // 2, len(self.tasks), 1)
            self.unused_route_classifier2 = nn.Conv2d(channels // 2, len(self.tasks), 1)

    def forward(self, levels, tasks):
        """Task features at 1/4 input resolution and the gates of every routing site."""
        per_task = {t: [] for t in tasks}
        routes = []
        for index, level in enumerate(levels):
            projected = self.level_proj[index](level)
            first = self.blocks1[index].forward_tasks({t: projected for t in tasks})
            second = self.blocks2[index].forward_tasks({t: first[t][0] for t in tasks})
            for task in tasks:
                per_task[task].append(second[task][0])
            routes += [torch.cat([first[t][1] for t in tasks]),
                       torch.cat([second[t][1] for t in tasks])]
        features = {}
        for task in tasks:
            fused = fuse_levels(self.level_fusion[task], per_task[task])
            features[task] = F.interpolate(fused, scale_factor=4, mode='bilinear')
        return features, routes


class MLoREModel(MultiTaskModel):
    """MLoRE (CVPR 2024). ``model(x, tasks=[...])`` computes only the requested branches."""

    def __init__(self, config):
        super().__init__(config)
        self.encoder = build_encoder(config)
        self.decoder = MLoREDecoder(config)
        self.heads = nn.ModuleDict(
            {t: ConvHead(config.decoder_dim, config.num_outputs[t]) for t in config.tasks})

    def _run(self, x, tasks):
        self.check_input(x)
        features, routes = self.decoder(self.encoder(x), tasks)
        size = x.shape[-2:]
        outputs = {t: F.interpolate(self.heads[t](features[t]), size=size, mode='bilinear')
                   for t in tasks}
        return outputs, routes

    def forward(self, x, tasks=None, steps=None, noise=None, generator=None):
        if steps is not None or noise is not None:
            raise ValueError('steps and noise apply to TaskDiffusion models only')
        outputs, _ = self._run(x, self.select_tasks(tasks))
        return outputs

    def forward_train(self, x, targets=None):
        """Outputs of every task and the gates for the load-balancing loss."""
        outputs, routes = self._run(x, self.config.tasks)
        return {'pred': outputs, 'aux': {}, 'routes': routes}
