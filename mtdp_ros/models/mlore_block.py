"""The MLoRE block: task-shared low-rank experts mixed per task by a router.

Per task ``t`` and input ``x`` (paper eqs. (1)-(2); the authors' ``MOEBlock``):

    h      = task_in_t(x)                                   1x1 projection
    g, m   = router_t(h)                                    top-k gates, task-expert mix
    y      = BN_e,t(sum_i g_i up_i(down_i(h))) + m * task_expert_t(h) + generic(h)
    out    = task_out_t(GELU(BN_t(y)))

``down_i`` is a 3x3 convolution to rank ``r_i`` and ``up_i`` a 1x1 convolution back, with no
activation between, so every expert, the task expert and the generic 3x3 path are linear
3x3 convolutions of ``h``: ``reparameterize`` sums them into one kernel per task and sample
(paper eqs. (3)-(7)) in :class:`FusedMLoREBlock`.
"""

import torch
from torch import nn
import torch.nn.functional as F


class LowRankConv(nn.Module):
    """3x3 convolution to ``rank`` channels then 1x1 back: a rank-limited 3x3 convolution."""

    def __init__(self, channels, rank, kernel_size=3):
        super().__init__()
        self.down = nn.Conv2d(channels, rank, kernel_size, padding=kernel_size // 2)
        self.up = nn.Conv2d(rank, channels, 1)
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        nn.init.zeros_(self.down.bias)
        nn.init.kaiming_uniform_(self.up.weight, a=5 ** 0.5)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return self.up(self.down(x))

    def fused_kernel(self):
        """The equivalent single convolution: weight C x C x k x k and bias C."""
        up = self.up.weight.flatten(1)                                  # C x r
        weight = torch.einsum('or,rikl->oikl', up, self.down.weight)
        bias = self.up.bias + up @ self.down.bias
        return weight, bias


class Router(nn.Module):
    """Per-task gate: a pooled branch and a position-aware branch over all H*W positions.

    Returns ``2N + 1`` values per sample: N gate logits, N noise scales (noisy gating in
    training) and the task expert's mixing weight.
    """

    def __init__(self, channels, num_positions, num_experts):
        super().__init__()
        hidden = channels // 4
        self.pool_in = nn.Conv2d(channels, hidden, 1)
        self.pool_norm = nn.LayerNorm(hidden)
        self.pool_out = nn.Conv2d(hidden, hidden, 1)
        self.position_weights = nn.Linear(num_positions, 1)
        self.position_norm = nn.LayerNorm(channels)
        self.position_out = nn.Conv2d(channels, hidden, 1)
        self.gate = nn.Conv2d(hidden * 2, num_experts * 2 + 1, 1)
        self.num_positions = num_positions

    def forward(self, h):
        batch, channels, height, width = h.shape
        if height * width != self.num_positions:
            raise ValueError(f'router expects {self.num_positions} positions, got '
                             f'{height}x{width}; it is tied to the configured image size')
        # Pooled branch: per-position MLP, averaged over positions. The 1x1 output conv
        # is affine, so it commutes with the mean and runs once on the pooled vector.
        pooled = self.pool_in(h).flatten(2).transpose(1, 2)             # B x HW x C/4
        pooled = F.gelu(self.pool_norm(pooled)).mean(dim=1)              # B x C/4
        pooled = F.linear(pooled, self.pool_out.weight.flatten(1), self.pool_out.bias)
        # Position-aware branch: one learned weight per position, then a channel MLP.
        positional = self.position_weights(h.flatten(2)).squeeze(-1)     # B x C
        positional = F.gelu(self.position_norm(positional))
        positional = F.linear(positional, self.position_out.weight.flatten(1),
                              self.position_out.bias)
        features = torch.cat([pooled, positional], dim=1)
        return F.linear(features, self.gate.weight.flatten(1), self.gate.bias)  # B x 2N+1


def top_k_gates(logits, noise_scale, top_k, pre_softmax, training):
    """Sparse expert gates (B x N) from router logits.

    ``pre_softmax``: drop the N-k smallest logits (set to -1e10), then softmax.
    Otherwise: softmax, then zero the N-k smallest probabilities (no renormalisation),
    as the authors' code does. In training, Gaussian noise scaled by the router's noise
    output is added to the logits first (noisy top-k gating).
    """
    if training:
        logits = logits + torch.randn_like(logits) * noise_scale
    num_dropped = logits.shape[1] - top_k
    if pre_softmax:
        if num_dropped:
            dropped = torch.topk(logits, num_dropped, dim=1, largest=False).indices
            logits = logits.scatter(1, dropped, -1e10)
        return torch.softmax(logits, dim=1)
    probs = torch.softmax(logits, dim=1)
    if num_dropped:
        dropped = torch.topk(probs, num_dropped, dim=1, largest=False).indices
        probs = probs.scatter(1, dropped, 0.0)
    return probs


class MLoREBlock(nn.Module):
    """Training form: experts, task experts, generic path and BatchNorms as separate modules."""

    def __init__(self, tasks, channels, num_positions, expert_ranks, task_expert_rank, top_k,
                 pre_softmax):
        super().__init__()
        self.tasks = tuple(tasks)
        self.top_k = top_k
        self.pre_softmax = pre_softmax
        self.experts = nn.ModuleList([LowRankConv(channels, r) for r in expert_ranks])
        self.generic = nn.Conv2d(channels, channels, 3, padding=1)
        self.task_in = nn.ModuleDict({t: nn.Conv2d(channels, channels, 1) for t in tasks})
        self.task_expert = nn.ModuleDict(
            {t: LowRankConv(channels, task_expert_rank) for t in tasks})
        self.task_out = nn.ModuleDict({t: nn.Conv2d(channels, channels, 1) for t in tasks})
        self.expert_norm = nn.ModuleDict({t: nn.BatchNorm2d(channels) for t in tasks})
        self.block_norm = nn.ModuleDict({t: nn.BatchNorm2d(channels) for t in tasks})
        self.routers = nn.ModuleDict(
            {t: Router(channels, num_positions, len(expert_ranks)) for t in tasks})

    @property
    def num_experts(self):
        return len(self.experts)

    def route(self, h, task):
        """Gates (B x N) and the task-expert mixing weight (B) for projected input ``h``."""
        raw = self.routers[task](h)
        n = self.num_experts
        gates = top_k_gates(raw[:, :n], raw[:, n:2 * n], self.top_k, self.pre_softmax,
                            self.training)
        return gates, raw[:, 2 * n]

    def forward(self, x, task):
        """The task's output and its gates (B x N, for the load-balancing loss)."""
        return self.forward_tasks({task: x})[task]

    def forward_tasks(self, inputs):
        """``{task: x}`` -> ``{task: (output, gates)}``; the shared paths run once for all."""
        tasks = list(inputs)
        hs = [self.task_in[t](inputs[t]) for t in tasks]
        routed = [self.route(h, t) for h, t in zip(hs, tasks)]
        h_all = torch.cat(hs)                                           # T*B x C x H x W
        gates = torch.cat([g for g, _ in routed])                       # T*B x N
        # All experts at once: one 3x3 conv to the concatenated ranks, gate each expert's
        # channels, one 1x1 conv back. The same sum as running the experts one by one.
        down_w = torch.cat([e.down.weight for e in self.experts])
        down_b = torch.cat([e.down.bias for e in self.experts])
        up_w = torch.cat([e.up.weight for e in self.experts], dim=1)
        up_b = torch.stack([e.up.bias for e in self.experts])           # N x C
        rank_gates = torch.cat([gates[:, i:i + 1].expand(-1, e.down.out_channels)
                                for i, e in enumerate(self.experts)], dim=1)
        low = F.conv2d(h_all, down_w, down_b, padding=1) * rank_gates[:, :, None, None]
        experts = (F.conv2d(low, up_w) + (gates @ up_b)[:, :, None, None]).chunk(len(tasks))
        # The generic path learns from all tasks through its own gradient only (detached).
        generic = self.generic(h_all.detach() if self.training else h_all).chunk(len(tasks))
        outputs = {}
        for index, task in enumerate(tasks):
            gates_t, mix = routed[index]
            y = (self.expert_norm[task](experts[index])
                 + self.task_expert[task](hs[index]) * mix[:, None, None, None]
                 + generic[index])
            outputs[task] = (self.task_out[task](F.gelu(self.block_norm[task](y))), gates_t)
        return outputs


def _fold_bn(bn):
    """Per-channel scale and shift of an eval-mode BatchNorm."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class FusedMLoREBlock(nn.Module):
    """Inference form: one 3x3 convolution per task and sample (kernels mixed by the gates).

    Buffers hold every expert's fused kernel (N x C*C*9). Per task and sample the kernel is
    the gate-weighted sum (one matmul for all tasks and samples), with both BatchNorms
    folded, the task expert and the generic path added; all tasks and samples then run as
    one grouped convolution (groups = tasks x batch).
    """

    def __init__(self, block: MLoREBlock):
        super().__init__()
        if block.training:
            raise ValueError('reparameterize needs an eval-mode model (BatchNorm statistics)')
        self.tasks = block.tasks
        self.top_k = block.top_k
        self.pre_softmax = block.pre_softmax
        self.task_in = block.task_in
        self.task_out = block.task_out
        self.routers = block.routers
        with torch.no_grad():
            kernels, biases = zip(*(e.fused_kernel() for e in block.experts))
            generic_w, generic_b = block.generic.weight, block.generic.bias
            expert_scale, task_kernel, task_bias, base_kernel, base_bias = [], [], [], [], []
            for task in self.tasks:
                scale_e, shift_e = _fold_bn(block.expert_norm[task])
                scale_o, shift_o = _fold_bn(block.block_norm[task])
                kernel_t, bias_t = block.task_expert[task].fused_kernel()
                # s_o * (s_e * (G.h + g) + t_e + m * (T.h + b) + W.h + w) + t_o
                expert_scale.append(scale_o * scale_e)
                task_kernel.append(kernel_t * scale_o[:, None, None, None])
                task_bias.append(bias_t * scale_o)
                base_kernel.append(generic_w * scale_o[:, None, None, None])
                base_bias.append(scale_o * (shift_e + generic_b) + shift_o)
            buffers = {'expert_kernels': torch.stack(kernels).flatten(1),     # N x C*C*9
                       'expert_biases': torch.stack(biases),                  # N x C
                       'expert_scale': torch.stack(expert_scale),             # T x C
                       'task_kernel': torch.stack(task_kernel),               # T x C x C x 3 x 3
                       'task_bias': torch.stack(task_bias),                   # T x C
                       'base_kernel': torch.stack(base_kernel),
                       'base_bias': torch.stack(base_bias)}
            for name, value in buffers.items():
                self.register_buffer(name, value.detach().clone())

    @property
    def num_experts(self):
        return self.expert_kernels.shape[0]

    def forward(self, x, task):
        return self.forward_tasks({task: x})[task]

    def forward_tasks(self, inputs):
        """``{task: x}`` -> ``{task: (output, gates)}`` with one grouped conv for all."""
        tasks = list(inputs)
        index = [self.tasks.index(t) for t in tasks]

        def per_task(buffer):
            # Python-int indexing: no host data goes to the device (CUDA-graph safe).
            return buffer if index == list(range(len(self.tasks))) else \
                torch.stack([buffer[i] for i in index])
        hs = [self.task_in[t](inputs[t]) for t in tasks]
        n = self.num_experts
        raw = torch.stack([self.routers[t](h) for h, t in zip(hs, tasks)])  # T x B x 2N+1
        num_tasks, batch = raw.shape[:2]
        gates = top_k_gates(raw[..., :n].flatten(0, 1), None, self.top_k, self.pre_softmax,
                            False)                                           # T*B x N
        mix = raw[..., 2 * n]                                                # T x B
        channels, height, width = hs[0].shape[1:]
        kernel = (gates @ self.expert_kernels).view(num_tasks, batch, channels, channels, 3, 3)
        kernel = (kernel * per_task(self.expert_scale)[:, None, :, None, None, None]
                  + mix[:, :, None, None, None, None] * per_task(self.task_kernel)[:, None]
                  + per_task(self.base_kernel)[:, None])
        bias = ((gates @ self.expert_biases).view(num_tasks, batch, channels)
                * per_task(self.expert_scale)[:, None]
                + mix[:, :, None] * per_task(self.task_bias)[:, None]
                + per_task(self.base_bias)[:, None])
        groups = num_tasks * batch
        y = F.conv2d(torch.cat(hs).reshape(1, groups * channels, height, width),
                     kernel.reshape(groups * channels, channels, 3, 3), bias.reshape(-1),
                     padding=1, groups=groups)
        y = F.gelu(y.view(num_tasks, batch, channels, height, width))
        gates = gates.view(num_tasks, batch, n)
        return {t: (self.task_out[t](y[i]), gates[i]) for i, t in enumerate(tasks)}
