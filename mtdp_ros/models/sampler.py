"""TaskDiffusion's DDIM sampler over the cross-task label map (thesis ch. 4, Alg. 2).

Time runs from t=1 (pure noise) to t=0. The schedule is the cosine log-SNR schedule;
the step is asymmetric: with ``time_difference`` d and S steps, step i goes from
t_now = 1 - i/S to t_next = max(1 - (i + 1 + d)/S, 0).
"""

import math

import torch

from .label_encoder import MAX_DEPTH_M
from .tasks import get_task


def cosine_log_snr(t, ns=0.0002, ds=0.00025):
    """Cosine schedule: log SNR(t) = -log(cos((t + ns) / (1 + ds) * pi/2)^-2 - 1), clamped."""
    ratio = torch.cos((t + ns) / (1 + ds) * math.pi * 0.5) ** -2 - 1
    return -torch.log(ratio.clamp(min=1e-5))


def alpha_sigma(log_snr):
    """alpha^2 = sigmoid(log SNR), sigma^2 = sigmoid(-log SNR): a variance-preserving pair."""
    return torch.sqrt(torch.sigmoid(log_snr)), torch.sqrt(torch.sigmoid(-log_snr))


def time_pairs(steps, time_difference=1.0):
    """The (t_now, t_next) pair of every sampling step."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f'steps must be a positive integer, got {steps!r}')
    pairs = []
    for step in range(steps):
        t_now = 1 - step / steps
        t_next = max(1 - (step + 1 + time_difference) / steps, 0.0)
        pairs.append((t_now, t_next))
    return pairs


def ddim_sample(decoder, features, steps, noise, time_difference):
    """Denoise the cross-task map from ``noise``; return the last step's task logits.

    ``decoder.denoise(features, x_t, log_snr, cache, upsample)`` predicts task logits from
    the noisy map; ``decoder.label_encoder.encode_predictions`` turns them back into a
    clean map x_0 (argmax one-hot embeddings, clamped/normalised regressions).
    The last step runs at 1/4 input resolution (``upsample``) and gives the outputs.
    """
    batch, _, height, width = noise.shape
    x_t = noise
    cache = None
    pairs = time_pairs(steps, time_difference)
    for index, (t_now, t_next) in enumerate(pairs):
        last = index == len(pairs) - 1
        t = torch.stack([torch.full((), value, device=noise.device, dtype=torch.float32)
                         for value in (t_now, t_next)])
        # The schedule and the time embedding stay float32 under fp16 (the log SNR spans
        # -18.9..11.5); only the DDIM coefficients take the map's dtype.
        log_snr, log_snr_next = cosine_log_snr(t).unsqueeze(1).expand(2, batch)
        alpha, sigma = (v.to(noise.dtype) for v in alpha_sigma(log_snr.view(batch, 1, 1, 1)))
        alpha_next, sigma_next = (v.to(noise.dtype)
                                  for v in alpha_sigma(log_snr_next.view(batch, 1, 1, 1)))
        logits, cache = decoder.denoise(features, x_t, log_snr, cache, upsample=last)
        if last:
            # The final update would only feed a step that does not exist.
            break
        x_0 = decoder.label_encoder.encode_predictions(logits)
        eps = (x_t - alpha * x_0) / sigma.clamp(min=1e-8)          # predicted noise
        x_t = alpha_next * x_0 + sigma_next * eps                   # DDIM update
    # The authors clamp depth in place while re-encoding it, so their outputs carry it.
    for task in logits:
        if get_task(task).kind == 'depth':
            logits[task] = logits[task].clamp(0, MAX_DEPTH_M)
    return logits


def draw_noise(shape, device, dtype=torch.float32, seed=0, generator=None):
    """The sampler's initial map: a standard Gaussian from ``generator`` or from ``seed``."""
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(int(seed))
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)
