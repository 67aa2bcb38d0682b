"""TaskDiffusion (ICLR 2025) and TaskDiffusion with MLoRE: ViT + cross-task diffusion decoder."""

import torch
from torch import nn
import torch.nn.functional as F

from .base import MultiTaskModel
from .config import NUM_LEVELS
from .diffusion_decoder import CrossTaskDiffusionDecoder
from .mlore import build_encoder
from .sampler import (alpha_sigma, check_init, check_strength, cosine_log_snr, ddim_sample,
                      draw_noise)


class TaskDiffusionModel(MultiTaskModel):
    """``model(x, steps=S, noise=z)``: all tasks are denoised jointly in S DDIM steps.

    ``steps`` defaults to the trained step count; ``noise`` (B x C_map x H/16 x W/16)
    defaults to a draw from ``generator`` or, without one, from ``seed`` (default 0), so the
    same call gives the same outputs. ``tasks`` only filters the returned outputs: the joint
    denoising needs every task's prediction.

    Video: ``model(x, steps=S, init=state, strength=s, return_state=True)`` returns
    ``(outputs, state)``. ``state`` (B x C_map x H/16 x W/16, the model's dtype) is the
    final prediction re-encoded as a clean cross-task map; passed back as ``init`` with a
    strength s < 1, the next frame starts at t = s from alpha(s) init + sigma(s) noise
    instead of pure noise (see :mod:`.sampler`). s = 1 (the default) is the cold start,
    bit for bit, whatever ``init`` holds.
    """

    def __init__(self, config):
        super().__init__(config)
        self.encoder = build_encoder(config)
        self.level_proj = nn.ModuleList(
            [nn.Conv2d(config.embed_dim, config.decoder_dim, 1) for _ in range(NUM_LEVELS)])
        self.diffusion = CrossTaskDiffusionDecoder(config)

    def noise_shape(self, batch):
        grid = self.config.grid_size
        return (batch, self.config.noise_channels, grid[0], grid[1])

    def _levels(self, x):
        self.check_input(x)
        return [proj(level) for proj, level in zip(self.level_proj, self.encoder(x))]

    def forward(self, x, tasks=None, steps=None, noise=None, generator=None, seed=0,
                init=None, strength=1.0, return_state=False):
        tasks = self.select_tasks(tasks)
        steps = self.config.trained_steps if steps is None else steps
        expected = self.noise_shape(x.shape[0])
        strength = check_strength(strength)
        check_init(init, expected, strength)
        levels = self._levels(x)
        if noise is None:
            noise = draw_noise(expected, x.device, x.dtype, seed, generator)
        elif tuple(noise.shape) != expected:
            raise ValueError(f'noise must be {expected} for this model and batch, '
                             f'got {tuple(noise.shape)}')
        result = ddim_sample(self.diffusion, levels, steps, noise.to(x.dtype),
                             self.config.time_difference, init=init, strength=strength,
                             return_state=return_state)
        logits, state = result if return_state else (result, None)
        size = x.shape[-2:]
        outputs = {t: F.interpolate(logits[t], size=size, mode='bilinear') for t in tasks}
        return (outputs, state) if return_state else outputs

    def forward_train(self, x, targets):
        """One denoising step from a noised ground-truth map at a random time (training)."""
        levels = self._levels(x)
        batch, _, height, width = levels[0].shape
        clean = self.diffusion.label_encoder.encode_targets(targets, (height, width))
        times = torch.rand(batch, device=x.device) * 0.999
        log_snr = cosine_log_snr(times)
        alpha, sigma = alpha_sigma(log_snr.view(batch, 1, 1, 1))
        noised = alpha * clean + sigma * torch.randn_like(clean)
        logits, cache = self.diffusion.denoise(levels, noised, log_snr)
        size = x.shape[-2:]
        pred = {t: F.interpolate(v, size=size, mode='bilinear') for t, v in logits.items()}
        aux = {}
        if self.config.with_aux:
            aux = {t: F.interpolate(v, size=size, mode='bilinear')
                   for t, v in self.diffusion.auxiliary(cache[0]).items()}
        return {'pred': pred, 'aux': aux, 'routes': cache[1]}
