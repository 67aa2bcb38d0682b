"""ViT encoder that taps chosen transformer blocks for a dense decoder.

The position embedding is learned for the configured image size (no resizing at run time);
it keeps the authors' leading class-token slot, which the dense models never use.
"""

import torch
from torch import nn
import torch.nn.functional as F


class PatchEmbed(nn.Module):
    """Non-overlapping patches projected by one strided convolution."""

    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # B x N x C


class Attention(nn.Module):
    """Multi-head self-attention; scaled dot product through PyTorch's fused kernel."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6 as in the ViT weights)."""

    def __init__(self, dim, num_heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """Plain ViT returning the outputs of ``select_layers`` and the final normed output.

    Returns a list of ``len(select_layers) + 1`` maps, each B x C x H/p x W/p.
    """

    def __init__(self, image_size, patch_size, embed_dim, depth, num_heads, mlp_ratio,
                 select_layers):
        super().__init__()
        self.grid_size = (image_size[0] // patch_size, image_size[1] // patch_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.select_layers = tuple(select_layers)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_vit_weights)

    def forward(self, x):
        if tuple(x.shape[-2:]) != (self.grid_size[0] * self.patch_embed.proj.stride[0],
                                   self.grid_size[1] * self.patch_embed.proj.stride[1]):
            raise ValueError(f'input {tuple(x.shape[-2:])} does not match the configured '
                             f'image size; the position embedding is tied to it')
        tokens = self.patch_embed(x) + self.pos_embed[:, 1:]
        levels = []
        for index, block in enumerate(self.blocks, start=1):
            tokens = block(tokens)
            if index in self.select_layers:
                levels.append(self._to_map(tokens))
        levels.append(self._to_map(self.norm(tokens)))
        return levels

    def _to_map(self, tokens):
        batch, _, dim = tokens.shape
        return tokens.transpose(1, 2).reshape(batch, dim, *self.grid_size)


def _init_vit_weights(module):
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
