"""Spatial Refinement Modules chained as the trace-back (the authors' ``SPF``/``TraceBack``).

One SRM step with a prediction map ``p`` and a decoder feature ``f``:
    p' = resize(CBAM_p(p), size of f) (bilinear),  f' = CBAM_f(f)
    out = ReLU(BN(W_o [p', f']))     (C channels: this level's prediction features)
    back = ReLU(BN(W_b [p', f']))    (the next step's ``p``)
The trace-back runs over the decoder stages from coarse to fine (1/16, 1/8, 1/4); step 0
takes the CFM output as ``p`` (downsampled from 1/4 to 1/16).
"""

import torch
from torch import nn
import torch.nn.functional as F

from .cbam import cbam_from_config


class SpatialRefinement(nn.Module):
    """One SRM step (names follow the authors' ``SPF``)."""

    def __init__(self, config, pred_dim, back_dim):
        super().__init__()
        self.sem_cbam = cbam_from_config(config, pred_dim)
        self.dep_cbam = cbam_from_config(config, back_dim)
        self.sem_conv = nn.Conv2d(pred_dim + back_dim, config.spf_out, 1)
        self.dep_conv = nn.Conv2d(pred_dim + back_dim, back_dim, 1)
        self.b1 = nn.BatchNorm2d(config.spf_out)
        self.b2 = nn.BatchNorm2d(back_dim)

    def forward(self, pred, feature):
        pred = self.sem_cbam(pred)
        feature = self.dep_cbam(feature)
        pred = F.interpolate(pred, size=feature.shape[-2:], mode='bilinear',
                             align_corners=False)
        both = torch.cat([pred, feature], dim=1)
        return (torch.relu(self.b1(self.sem_conv(both))),
                torch.relu(self.b2(self.dep_conv(both))))


class TraceBack(nn.Module):
    """Three SRM steps from coarse to fine; returns the ``out`` of each step."""

    def __init__(self, config):
        super().__init__()
        slots = config.trace_back_spf
        modules = [SpatialRefinement(config, *slots[i]) for i in range(3)]
        # The authors' loop appends its last module twice: slot 3 is slot 2 again (same
        # tensors in their checkpoints), and is never called.
        self.spf_modules = nn.ModuleList(modules + [modules[2]])

    def forward(self, features, initial_pred):
        """``features``: decoder stages coarse to fine; ``initial_pred``: the CFM output."""
        outs, pred = [], initial_pred
        for step, feature in enumerate(features):
            out, pred = self.spf_modules[step](pred, feature)
            outs.append(out)
        return outs
