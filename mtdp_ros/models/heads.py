"""Task heads that turn decoder features into raw task outputs."""

from torch import nn


class ConvHead(nn.Module):
    """3x3 conv, BatchNorm, GELU, then a 1x1 prediction (the authors' ``conv`` head)."""

    def __init__(self, channels, num_outputs):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.BatchNorm2d(channels), nn.GELU())
        self.pred = nn.Conv2d(channels, num_outputs, 1)
        nn.init.trunc_normal_(self.proj[0].weight, std=0.02)
        nn.init.normal_(self.pred.bias, std=0.02)

    def forward(self, x):
        return self.pred(self.proj(x))
