"""MT-CP's output layers: the final task heads and the deep-supervision pred layers.

Sequential indices reproduce the authors' ``nn.Sequential`` layouts (checkpoint keys).
"""

from torch import nn
import torch.nn.functional as F


class Upsample(nn.Module):
    """Bilinear x``factor`` with ``align_corners=True`` (the authors' ``Interpolate``)."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.factor, mode='bilinear', align_corners=True)


class PredLayer(nn.Module):
    """[1x1 conv (no bias)] -> 1x1 conv (no bias) -> BN -> ReLU -> 1x1 conv to ``out``.

    ``double``: the authors' ``SemSegPred``/``DepthPred``/``NormalPred`` stack two bias-free
    convs; PASCAL's ``HumanPred``/``SalPred`` have one.
    """

    def __init__(self, channels, out, double):
        super().__init__()
        layers = [nn.Conv2d(channels, channels, 1, bias=False)]
        if double:
            layers.append(nn.Conv2d(channels, channels, 1, bias=False))
        layers += [nn.BatchNorm2d(channels), nn.ReLU(True), nn.Conv2d(channels, out, 1)]
        self.module = nn.Sequential(*layers)

    def forward(self, x):
        return self.module(x)


def conv_head(channels, out, upsample):
    """1x1 conv (no bias) -> BN -> ReLU -> 1x1 conv -> [bilinear x upsample]."""
    layers = [nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
              nn.ReLU(True), nn.Conv2d(channels, out, 1)]
    if upsample > 1:
        layers.append(Upsample(upsample))
    return nn.Sequential(*layers)


def depth_head(channels, out, upsample, hidden):
    """Depth head of NYUD: 1x1 (C -> C/2) -> [bilinear x up] -> 1x1 (-> hidden) -> ReLU -> 1x1."""
    layers = [nn.Conv2d(channels, channels // 2, 1)]
    if upsample > 1:
        layers.append(Upsample(upsample))
    layers += [nn.Conv2d(channels // 2, hidden, 1), nn.ReLU(True), nn.Conv2d(hidden, out, 1)]
    return nn.Sequential(*layers)


def build_head(config, slot, task):
    """The final head of ``task`` (task ``slot`` 0, 1, 2 of the dataset's layout)."""
    up = config.head_upsample[task]
    if config.dataset == 'NYUD' and task == 'depth':
        return depth_head(config.C, config.num_outputs[task], up, config.depth_hidden)
    return conv_head(config.C, config.num_outputs[task], up)
