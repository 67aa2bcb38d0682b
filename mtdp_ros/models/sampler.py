"""TaskDiffusion's DDIM sampler over the cross-task label map (thesis ch. 4, Alg. 2).

Time runs from t=1 (pure noise) to t=0. The schedule is the cosine log-SNR schedule;
the step is asymmetric: with ``time_difference`` d and S steps, step i goes from
t_now = 1 - i/S to t_next = max(1 - (i + 1 + d)/S, 0).

Warm start (video): given the previous frame's clean map x0_prev and a strength s in (0, 1],
the sampler starts at t = s from x_s = alpha(s) x0_prev + sigma(s) z (the forward process
applied to the previous answer) and takes the S steps of the same schedule squeezed into
[0, s]: t_now = s (1 - i/S), t_next = max(s (1 - (i + 1 + d)/S), 0). s = 1 is the cold
start exactly: x_1 = z (alpha(1) = 8e-5, so the previous map is not used at all).
"""

import math
import numbers

import torch
import torch.nn.functional as F

from .label_encoder import MAX_DEPTH_M
from .tasks import get_task


def cosine_log_snr(t, ns=0.0002, ds=0.00025):
    """Cosine schedule: log SNR(t) = -log(cos((t + ns) / (1 + ds) * pi/2)^-2 - 1), clamped."""
    ratio = torch.cos((t + ns) / (1 + ds) * math.pi * 0.5) ** -2 - 1
    return -torch.log(ratio.clamp(min=1e-5))


def alpha_sigma(log_snr):
    """alpha^2 = sigmoid(log SNR), sigma^2 = sigmoid(-log SNR): a variance-preserving pair."""
    return torch.sqrt(torch.sigmoid(log_snr)), torch.sqrt(torch.sigmoid(-log_snr))


def check_strength(strength):
    """``strength`` as a float in (0, 1]; ValueError naming the problem otherwise."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise ValueError(f'strength must be a number in (0, 1], got {strength!r}')
    value = float(strength)
    if not 0.0 < value <= 1.0:           # also rejects NaN
        raise ValueError(f'strength must lie in (0, 1], got {strength!r}')
    return value


def check_init(init, expected, strength):
    """Raise ValueError unless ``init`` fits a warm start at ``strength`` (None: cold).

    ``init``: the clean cross-task map a previous call returned (``return_state``), of
    shape ``expected``; a strength below 1 needs it.
    """
    if init is None:
        if strength != 1.0:
            raise ValueError(f'strength {strength} < 1 needs init: the state returned '
                             f'for the previous frame (return_state=True)')
        return
    if not isinstance(init, torch.Tensor) or not init.is_floating_point():
        raise ValueError(f'init must be the state a previous call returned (a floating-point '
                         f'tensor), got {getattr(init, "dtype", type(init).__name__)}')
    if tuple(init.shape) != expected:
        raise ValueError(f'init must be {expected} (the state returned for this input), '
                         f'got {tuple(init.shape)}')


def time_pairs(steps, time_difference=1.0, strength=1.0):
    """The (t_now, t_next) pair of every sampling step, starting at t = ``strength``."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f'steps must be a positive integer, got {steps!r}')
    strength = check_strength(strength)
    pairs = []
    for step in range(steps):
        # strength 1.0 multiplies exactly: the cold schedule is unchanged to the bit.
        t_now = strength * (1 - step / steps)
        t_next = max(strength * (1 - (step + 1 + time_difference) / steps), 0.0)
        pairs.append((t_now, t_next))
    return pairs


def warm_start_map(init, noise, strength):
    """x_s = alpha(s) x0_prev + sigma(s) z: the previous clean map noised to time s."""
    t = torch.full((1,), float(strength), device=noise.device, dtype=torch.float32)
    alpha, sigma = (v.to(noise.dtype).view(1, 1, 1, 1)
                    for v in alpha_sigma(cosine_log_snr(t)))
    return alpha * init.to(noise.dtype) + sigma * noise


def ddim_sample(decoder, features, steps, noise, time_difference, init=None, strength=1.0,
                return_state=False):
    """Denoise the cross-task map from ``noise``; return the last step's task logits.

    ``decoder.denoise(features, x_t, log_snr, cache, upsample)`` predicts task logits from
    the noisy map; ``decoder.label_encoder.encode_predictions`` turns them back into a
    clean map x_0 (argmax one-hot embeddings, clamped/normalised regressions).
    The last step runs at 1/4 input resolution (``upsample``) and gives the outputs.
    ``init``/``strength``: warm start from a previous clean map (module docstring; s = 1
    ignores ``init``). ``return_state``: also return the final clean map (see
    :func:`final_state`), the ``init`` of the next frame.
    """
    batch, _, height, width = noise.shape
    strength = check_strength(strength)
    x_t = noise if init is None or strength == 1.0 else warm_start_map(init, noise, strength)
    cache = None
    pairs = time_pairs(steps, time_difference, strength)
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
    if return_state:
        return logits, final_state(decoder.label_encoder, logits, (height, width))
    return logits


def final_state(label_encoder, logits, size):
    """The clean map x_0 of the final prediction at the map's resolution ``size``.

    The last step's logits (1/4 input resolution) re-encoded, then resized bilinearly to
    the map, as the authors' sampler resizes its 1/4-resolution map after every step.
    """
    clean = label_encoder.encode_predictions(logits)
    if tuple(clean.shape[-2:]) != tuple(size):
        clean = F.interpolate(clean, size=size, mode='bilinear')
    return clean


def draw_noise(shape, device, dtype=torch.float32, seed=0, generator=None):
    """The sampler's initial map: a standard Gaussian from ``generator`` or from ``seed``."""
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(int(seed))
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)
