"""CBAM (Woo et al., 2018) as MT-CP uses it: a channel gate, then a spatial gate.

Module names follow the authors' ``models/cbam.py`` so their checkpoints load.
"""

import torch
from torch import nn


class ChannelGate(nn.Module):
    """x * sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))); the MLP is shared, C -> C/r -> C."""

    def __init__(self, channels, reduction):
        super().__init__()
        hidden = channels // reduction
        # Index 0 is the authors' Flatten, so the linear layers sit at 1 and 3.
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(),
                                 nn.Linear(hidden, channels))

    def forward(self, x):
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        peak = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + peak)[:, :, None, None]


class SpatialConv(nn.Module):
    """k x k conv (2 -> 1, no bias) -> BN (the authors' ``BasicConv`` without ReLU)."""

    def __init__(self, kernel, momentum):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=(kernel - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=momentum)

    def forward(self, x):
        return self.bn(self.conv(x))


class SpatialGate(nn.Module):
    """x * sigmoid(BN(conv([max_c(x), mean_c(x)])))."""

    def __init__(self, kernel, momentum):
        super().__init__()
        self.spatial = SpatialConv(kernel, momentum)

    def forward(self, x):
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Channel attention then spatial attention (Eq. of the CFM's ``CBAM(.)``)."""

    def __init__(self, channels, reduction=16, kernel=7, momentum=0.01):
        super().__init__()
        self.ChannelGate = ChannelGate(channels, reduction)
        self.SpatialGate = SpatialGate(kernel, momentum)

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


def cbam_from_config(config, channels):
    """A CBAM of ``channels`` with the config's reduction, kernel and BN momentum."""
    return CBAM(channels, config.cbam_reduction, config.cbam_spatial_kernel,
                config.cbam_bn_momentum)
