"""Swin transformer with the authors' module names (MT-CP's task decoders and unused backbone).

MT-CP runs one small Swin per task on the shared map through ``forward_tokens`` (the
authors' ``forward2``): no patch embedding, the map's pixels are the tokens. Windows are
zero-padded right/bottom, and odd blocks roll by ``window // 2`` even on maps smaller than
the window (unlike the original Swin). ``patch_embed`` exists (and is in checkpoints) but is
only called by ``forward``, which MT-CP never uses.
"""

import torch
from torch import nn
import torch.nn.functional as F


def window_partition(x, window):
    """(B, H, W, C) -> (B * nW, window * window, C), windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_merge(windows, window, h, w):
    """Inverse of :func:`window_partition` for an (h, w) map."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def relative_position_index(window):
    """(w*w, w*w) index into the (2w-1)^2 bias table of every token pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                        indexing='ij')).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shift_mask(hp, wp, window, shift, device=None):
    """-100 where two tokens of a rolled window come from different regions, else 0.

    The regions are the slices (0, -w), (-w, -s), (-s, None) of the padded map, as in the
    authors' ``BasicLayer``; (nW, w*w, w*w).
    """
    # Region label 3 * row band + column band, each band 0, 1, 2 by those slices (built by
    # comparisons rather than slice assignment, which the ONNX exporter cannot take when a
    # slice is empty, as (0, -w) is on a map no larger than the window).
    def bands(size):
        pos = torch.arange(size, device=device)
        return (pos >= size - window).float() + (pos >= size - shift).float()

    region = (3 * bands(hp)[:, None] + bands(wp)[None, :]).view(1, hp, wp, 1)
    ids = window_partition(region, window).squeeze(-1)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class DropPath(nn.Module):
    """Stochastic depth: drops whole residual branches per sample in training."""

    def __init__(self, rate):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x):
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    """Linear -> GELU (erf) -> Linear."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """softmax(q k^T / sqrt(d) + B + M) v within each window; B a learnt relative bias."""

    def __init__(self, dim, window, heads):
        super().__init__()
        self.window = window
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Persistent: the authors' checkpoints hold it.
        self.register_buffer('relative_position_index', relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(x)


class SwinBlock(nn.Module):
    """x + W-MSA(LN(x)) (rolled by ``shift`` when shift > 0), then x + MLP(LN(x))."""

    def __init__(self, dim, heads, window, shift, mlp_ratio, drop_path):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, h, w, mask):
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        pad_r = (self.window - w % self.window) % self.window
        pad_b = (self.window - h % self.window) % self.window
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(x, self.window), mask if self.shift else None)
        x = window_merge(windows, self.window, hp, wp)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated (x00, x10, x01, x11) -> LN(4c) -> Linear(4c -> 2c)."""

    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x, h, w):
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """Blocks of one resolution (odd ones shifted), then optional patch merging."""

    def __init__(self, dim, depth, heads, window, mlp_ratio, drop_paths, downsample):
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.blocks = nn.ModuleList([
            SwinBlock(dim, heads, window, 0 if i % 2 == 0 else self.shift, mlp_ratio,
                      drop_paths[i]) for i in range(depth)])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x, h, w):
        hp = -(-h // self.window) * self.window
        wp = -(-w // self.window) * self.window
        mask = shift_mask(hp, wp, self.window, self.shift, x.device).to(x.dtype)
        for block in self.blocks:
            x = block(x, h, w, mask)
        if self.downsample is None:
            return x, None
        return x, self.downsample(x, h, w)


class PatchEmbed(nn.Module):
    """Conv(patch, stride patch) -> LN (only ``forward`` uses it)."""

    def __init__(self, patch, in_chans, dim):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % self.patch, 0, (-h) % self.patch))
        x = self.proj(x)
        return self.norm(x.flatten(2).transpose(1, 2)), x.shape[-2:]


class SwinTransformer(nn.Module):
    """Hierarchical Swin; stage ``i`` output goes through ``norm{i}``."""

    def __init__(self, in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio=4.0,
                 patch_size=4, drop_path_rate=0.0, out_indices=None, pretrain_img_size=224):
        super().__init__()
        self.num_layers = len(depths)
        self.out_indices = tuple(range(self.num_layers) if out_indices is None
                                 else out_indices)
        self.num_features = [embed_dim * 2 ** i for i in range(self.num_layers)]
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        total = sum(depths)
        # Stochastic depth rising linearly to drop_path_rate (plain floats: builds on 'meta').
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            self.layers.append(SwinStage(
                self.num_features[i], depth, num_heads[i], window_size, mlp_ratio,
                rates[first:first + depth], downsample=i < self.num_layers - 1))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(self.num_features[i]))
        self.apply(_init_weights)

    def forward_tokens(self, x):
        """Stage outputs of a B x C x H x W map taken as tokens (the authors' ``forward2``)."""
        # Plain ints: the window padding and shift mask are shape constants (an exported
        # graph must not re-derive them from traced sizes).
        h, w = int(x.shape[-2]), int(x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        return self._stages(x, h, w)

    def forward(self, image):
        """Stage outputs of an image (patch embedding first); MT-CP never calls this."""
        x, (h, w) = self.patch_embed(image)
        return self._stages(x, h, w)

    def _stages(self, x, h, w):
        outs = []
        for i, stage in enumerate(self.layers):
            out, x = stage(x, h, w)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(out)
                outs.append(out.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2)
                            .contiguous())
            h, w = (h + 1) // 2, (w + 1) // 2
        return outs


def _init_weights(module):
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
