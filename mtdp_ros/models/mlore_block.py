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
            # The authors' -1e10, or the lowest value the dtype holds (fp16: -65504).
            logits = logits.scatter(1, dropped, max(-1e10, torch.finfo(logits.dtype).min))
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

    def fuse(self):
        """This block's inference form (:class:`FusedMLoREBlock`; needs eval mode)."""
        return FusedMLoREBlock(self)

    def fused_extra_elements(self):
        """State elements the fused form holds beyond this block's (sizes, no weights).

        Fused: every expert's kernel and bias; per task the task-expert and base kernels,
        the expert scale and three biases, the 1x1 projections; the routers, stacked.
        """
        channels = self.generic.in_channels
        tasks = len(self.tasks)
        kernel = channels * channels * 9
        fused = (self.num_experts * (kernel + channels) + tasks * (2 * kernel + 3 * channels)
                 + tasks * 2 * (channels * channels + channels)
                 + sum(t.numel() for t in self.routers.parameters()))
        return fused - sum(t.numel() for t in self.state_dict().values())

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


def per_sample_conv3x3(h, kernel, bias, any_batch=False):
    """A 3x3 convolution (padding 1) of each of G maps with its own kernel.

    ``h``: G x C x H x W, ``kernel``: G x O x C x 3 x 3, ``bias``: G x O -> G x O x H x W.
    One grouped convolution (groups = G), the fastest form. ``any_batch``: the same sum as
    nine shifted views of the padded maps times the kernels (one batched MatMul), for an
    exported graph that must take any batch: an ONNX ``Conv`` holds its group count as a
    fixed attribute, which would fix G, hence the batch.
    """
    groups, channels, height, width = h.shape
    out_channels = kernel.shape[1]
    if not any_batch:
        y = F.conv2d(h.reshape(1, groups * channels, height, width),
                     kernel.reshape(groups * out_channels, channels, 3, 3), bias.reshape(-1),
                     padding=1, groups=groups)
        return y.view(groups, out_channels, height, width)
    padded = F.pad(h, (1, 1, 1, 1))
    # Patch index c * 9 + 3i + j matches the kernel's flattened C x 3 x 3 layout.
    patches = torch.stack([padded[:, :, i:i + height, j:j + width]
                           for i in range(3) for j in range(3)], dim=2)
    y = torch.matmul(kernel.reshape(groups, out_channels, channels * 9),
                     patches.reshape(groups, channels * 9, height * width))
    return (y + bias[:, :, None]).reshape(groups, out_channels, height, width)


def _fold_bn(bn):
    """Per-channel scale and shift of an eval-mode BatchNorm."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _stack(modules, attribute, tasks):
    return torch.stack([getattr(modules[t], attribute).detach().flatten(1)
                        if getattr(modules[t], attribute).dim() > 1
                        else getattr(modules[t], attribute).detach() for t in tasks])


class FusedMLoREBlock(nn.Module):
    """Inference form: one 3x3 convolution per task and sample (kernels mixed by the gates).

    Buffers hold every expert's fused kernel (N x C*C*9). Per task and sample the kernel is
    the gate-weighted sum (one matmul for all tasks and samples), with both BatchNorms
    folded, the task expert and the generic path added; all tasks and samples then run as
    one grouped convolution (groups = tasks x batch). The per-task 1x1 projections and the
    routers are stacked too, so a block costs a fixed number of kernels whatever the number
    of tasks (what matters at batch 1 on a GPU).
    """

    def __init__(self, block: MLoREBlock):
        super().__init__()
        if block.training:
            raise ValueError('reparameterize needs an eval-mode model (BatchNorm statistics)')
        self.tasks = block.tasks
        self.channels = block.experts[0].down.weight.shape[1]
        # Set by a dynamic-batch ONNX export (see per_sample_conv3x3).
        self.conv_for_any_batch = False
        self.top_k = block.top_k
        self.pre_softmax = block.pre_softmax
        tasks = self.tasks
        routers = [block.routers[t] for t in tasks]
        self.pool_eps = routers[0].pool_norm.eps
        self.position_eps = routers[0].position_norm.eps
        with torch.no_grad():
            # Written expert by expert into one buffer: stacking a list of kernels would
            # hold every expert's kernel twice (the largest transient of fusing).
            first_weight = block.experts[0].down.weight
            channels = first_weight.shape[1]
            expert_kernels = first_weight.new_empty(
                (len(block.experts), channels * channels * 9))
            biases = []
            for index, expert in enumerate(block.experts):
                kernel, bias = expert.fused_kernel()
                expert_kernels[index] = kernel.flatten()
                biases.append(bias)
                del kernel
            generic_w, generic_b = block.generic.weight, block.generic.bias
            expert_scale, task_kernel, task_bias, base_kernel, base_bias = [], [], [], [], []
            for task in tasks:
                scale_e, shift_e = _fold_bn(block.expert_norm[task])
                scale_o, shift_o = _fold_bn(block.block_norm[task])
                kernel_t, bias_t = block.task_expert[task].fused_kernel()
                # s_o * (s_e * (G.h + g) + t_e + m * (T.h + b) + W.h + w) + t_o
                expert_scale.append(scale_o * scale_e)
                task_kernel.append(kernel_t * scale_o[:, None, None, None])
                task_bias.append(bias_t * scale_o)
                base_kernel.append(generic_w * scale_o[:, None, None, None])
                base_bias.append(scale_o * (shift_e + generic_b) + shift_o)
            router_parts = {}
            for name in ('pool_in', 'pool_norm', 'pool_out', 'position_weights',
                         'position_norm', 'position_out', 'gate'):
                modules = {t: getattr(block.routers[t], name) for t in tasks}
                router_parts[f'{name}_weight'] = _stack(modules, 'weight', tasks)
                router_parts[f'{name}_bias'] = _stack(modules, 'bias', tasks)
            # One weight per position and one bias per task: T x HW and T.
            router_parts['position_weights_weight'] = router_parts[
                'position_weights_weight'].flatten(1)
            router_parts['position_weights_bias'] = router_parts['position_weights_bias'].flatten()
            buffers = {'expert_kernels': expert_kernels,                      # N x C*C*9
                       'expert_biases': torch.stack(biases),                  # N x C
                       'expert_scale': torch.stack(expert_scale),             # T x C
                       'task_kernel': torch.stack(task_kernel),               # T x C x C x 3 x 3
                       'task_bias': torch.stack(task_bias),                   # T x C
                       'base_kernel': torch.stack(base_kernel),
                       'base_bias': torch.stack(base_bias),
                       'in_weight': _stack(block.task_in, 'weight', tasks),   # T x C x C
                       'in_bias': _stack(block.task_in, 'bias', tasks),       # T x C
                       'out_weight': _stack(block.task_out, 'weight', tasks),
                       'out_bias': _stack(block.task_out, 'bias', tasks),
                       **router_parts}
            # Every value is a new tensor (stack/einsum results): no copy is needed, and
            # none is made, so fusing a block holds one fused form, not two.
            for name, value in buffers.items():
                self.register_buffer(name, value.detach().contiguous())

    @property
    def num_experts(self):
        return self.expert_kernels.shape[0]

    def forward(self, x, task):
        return self.forward_tasks({task: x})[task]

    def _params(self, index):
        """Buffers of the selected tasks (Python-int indexing keeps CUDA graphs possible)."""
        everything = index == list(range(len(self.tasks)))
        return lambda name: (getattr(self, name) if everything else
                             torch.stack([getattr(self, name)[i] for i in index]))

    def _route(self, h, param):
        """Router logits of every task at once: h is B x T x C x HW -> B x T x 2N+1."""
        pooled = torch.einsum('tkc,btcp->btpk', param('pool_in_weight'), h)
        pooled = pooled + param('pool_in_bias')[None, :, None]
        pooled = F.layer_norm(pooled, (self.channels // 4,), eps=self.pool_eps)
        pooled = F.gelu(pooled * param('pool_norm_weight')[None, :, None]
                        + param('pool_norm_bias')[None, :, None]).mean(dim=2)   # B x T x C/4
        pooled = (torch.einsum('tjk,btk->btj', param('pool_out_weight'), pooled)
                  + param('pool_out_bias'))
        positional = (torch.einsum('tp,btcp->btc', param('position_weights_weight'), h)
                      + param('position_weights_bias')[None, :, None])
        positional = F.layer_norm(positional, (self.channels,), eps=self.position_eps)
        positional = F.gelu(positional * param('position_norm_weight')
                            + param('position_norm_bias'))
        positional = (torch.einsum('tkc,btc->btk', param('position_out_weight'), positional)
                      + param('position_out_bias'))
        features = torch.cat([pooled, positional], dim=2)
        return torch.einsum('tjc,btc->btj', param('gate_weight'), features) + param('gate_bias')

    def forward_tasks(self, inputs):
        """``{task: x}`` -> ``{task: (output, gates)}``: a fixed number of kernels for all."""
        tasks = list(inputs)
        index = [self.tasks.index(t) for t in tasks]
        param = self._params(index)
        num_tasks = len(tasks)
        first = inputs[tasks[0]]
        batch, _, height, width = first.shape
        # A Python int, not the input's traced size: an exported 1x1 kernel needs a fixed
        # shape even when the batch axis is dynamic.
        channels = self.channels
        in_weight = param('in_weight')
        if all(inputs[t] is first for t in tasks):
            # One input for all tasks (the first block of a level): one 1x1 conv.
            h = F.conv2d(first, in_weight.reshape(num_tasks * channels, channels, 1, 1),
                         param('in_bias').reshape(-1))
        else:
            h = F.conv2d(torch.cat([inputs[t] for t in tasks], dim=1),
                         in_weight.reshape(num_tasks * channels, channels, 1, 1),
                         param('in_bias').reshape(-1), groups=num_tasks)
        h = h.view(batch, num_tasks, channels, height * width)
        raw = self._route(h, param).transpose(0, 1)                           # T x B x 2N+1
        n = self.num_experts
        gates = top_k_gates(raw[..., :n].reshape(num_tasks * batch, n), None, self.top_k,
                            self.pre_softmax, False)                          # T*B x N
        mix = raw[..., 2 * n]                                                 # T x B
        kernel = (gates @ self.expert_kernels).view(num_tasks, batch, channels, channels, 3, 3)
        kernel = (kernel * param('expert_scale')[:, None, :, None, None, None]
                  + mix[:, :, None, None, None, None] * param('task_kernel')[:, None]
                  + param('base_kernel')[:, None])
        bias = ((gates @ self.expert_biases).view(num_tasks, batch, channels)
                * param('expert_scale')[:, None]
                + mix[:, :, None] * param('task_bias')[:, None]
                + param('base_bias')[:, None])
        y = per_sample_conv3x3(h.transpose(0, 1).reshape(num_tasks * batch, channels,
                                                         height, width),
                               kernel.reshape(num_tasks * batch, channels, channels, 3, 3),
                               bias.reshape(num_tasks * batch, channels),
                               any_batch=self.conv_for_any_batch)
        y = F.gelu(y).view(num_tasks, batch, channels, height, width).transpose(0, 1)
        out = F.conv2d(y.reshape(batch, num_tasks * channels, height, width),
                       param('out_weight').reshape(num_tasks * channels, channels, 1, 1),
                       param('out_bias').reshape(-1), groups=num_tasks)
        out = out.view(batch, num_tasks, channels, height, width)
        gates = gates.view(num_tasks, batch, n)
        return {t: (out[:, i], gates[i]) for i, t in enumerate(tasks)}
