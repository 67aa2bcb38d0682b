"""Coherence Fusion Module (CFM; the authors' ``GAAF_module2``).

For a task's map ``s`` and the concatenated maps ``aux = [d1, d2]`` of the two other tasks:
    d_i' = d_i * sigmoid(G_i(d_i))                       (gated auxiliary tasks)
    f = ReLU(W_1 [d1', d2'])
    a = ReLU(BN(CBAM_a(f))),  b = ReLU(BN(CBAM_b(f))),  s' = BN(CBAM_s(s))
    A = softmax(a^T b)  (HW x HW, no scaling)            (matrix-product fusion)
    out = BN(CBAM_o((A s'^T)^T))                         (no residual in the code)
"""

import torch
from torch import nn

from .cbam import cbam_from_config


class CoherenceFusion(nn.Module):
    """One task's CFM; names follow the authors' ``GAAF_module2``."""

    def __init__(self, config):
        super().__init__()
        c, gate, wide = config.C, config.gaaf_gate, config.gaaf_conv
        self.split = c
        self.cbam_sem = cbam_from_config(config, c)
        self.cbam_dep = cbam_from_config(config, 2 * c)
        self.cbam_dep2 = cbam_from_config(config, 2 * c)
        self.shared_dep2 = cbam_from_config(config, c)
        self.cbam_sem_norm = nn.BatchNorm2d(c)
        self.cbam_dep_norm = nn.BatchNorm2d(2 * c)
        self.cbam_dep2_norm = nn.BatchNorm2d(2 * c)
        self.shared_dep2_norm = nn.BatchNorm2d(c)
        self.gate1 = nn.Conv2d(gate, gate, 1)
        self.gate2 = nn.Conv2d(gate, gate, 1)
        self.conv1 = nn.Conv2d(wide, wide, 1)
        # conv2 and conv3 are never called by the authors' forward (their checkpoints hold
        # them).
        self.conv2 = nn.Conv2d(wide, wide, 1)
        self.conv3 = nn.Conv2d(wide, wide, 1)

    def forward(self, main, aux):
        s = self.cbam_sem_norm(self.cbam_sem(main))
        d1, d2 = aux[:, :self.split], aux[:, self.split:]
        d1 = d1 * torch.sigmoid(self.gate1(d1))
        d2 = d2 * torch.sigmoid(self.gate2(d2))
        fused = torch.relu(self.conv1(torch.cat([d1, d2], dim=1)))
        a = torch.relu(self.cbam_dep_norm(self.cbam_dep(fused)))
        b = torch.relu(self.cbam_dep2_norm(self.cbam_dep2(fused)))
        n, ch, h, w = b.shape
        affinity = torch.softmax(a.reshape(n, ch, h * w).transpose(1, 2)
                                 @ b.reshape(n, ch, h * w), dim=-1)
        out = (affinity @ s.reshape(n, s.shape[1], h * w).transpose(1, 2)).transpose(1, 2)
        out = out.reshape(n, s.shape[1], h, w)
        return self.shared_dep2_norm(self.shared_dep2(out))
