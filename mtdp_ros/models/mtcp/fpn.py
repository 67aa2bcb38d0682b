"""MT-CP's dynamic FPN: fuses a task decoder's three stages into one map at 1/4."""

from torch import nn
import torch.nn.functional as F


class DynamicFPN(nn.Module):
    """Top-down FPN: f_3 = L_3(x_3); f_i = up_nearest(f_{i+1}) + L_i(x_i); out = conv3x3(f_1).

    The authors also evaluate ``fpn_convs[1]`` and ``fpn_convs[2]`` on the coarser sums and
    discard the results; they exist here (their checkpoints hold them) but are not run.
    """

    def __init__(self, in_channels, channels):
        super().__init__()
        self.lateral_convs = nn.ModuleList([nn.Conv2d(c, channels, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1)
                                        for _ in in_channels])

    def forward(self, features):
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        fused = laterals[-1]
        for lateral in reversed(laterals[:-1]):
            # PyTorch's legacy 'nearest' (not 'nearest-exact'), as the authors.
            fused = F.interpolate(fused, size=lateral.shape[-2:], mode='nearest') + lateral
        return self.fpn_convs[0](fused)
