"""Evaluation on held-out synthetic scenes or the NYUD-v2 / PASCAL-Context validation sets.

``evaluate_model(model, 'synthetic', num=200, seed=424242)`` renders scenes ``seed ..
seed + num - 1`` at the model's input size. ``'nyud:DIR'`` / ``'pascal:DIR'`` read the
validation split of the multi-task tarball layout at its native resolution: each image is
letterboxed into the model's input (scaled to fit, zero padded in the normalised space, as
the authors pad), and the predictions are cropped and resized back, so metrics are computed
at the labels' resolution.

Camera-aware depth on synthetic scenes: ``focal_scale`` renders the held-out scenes with the
camera's focal length times that factor, and ``focal_correction`` (default: the engines',
canonical) makes depth metric for that camera as the engines do (``'canonical'``: a zoomed
image shrunk to the training focal length, then ``focal_correction_factor`` for the rest;
``'scale'``: that factor alone; ``'off'``), so the metrics show what a camera other than the
training one costs with and without it.
"""

import math

import torch
import torch.nn.functional as F

from ..runtime.options import check_steps, is_diffusion
from ..runtime.preprocess import check_image, letterbox, normalisation, plan_letterbox, \
    unletterbox
from ..models.tasks import find_task
from .metrics import MultiTaskMeter

# Tolerance of the edge benchmark (fraction of the image diagonal) per data set.
EDGE_MAX_DIST = {'synthetic': 0.011, 'nyud': 0.011, 'pascal': 0.0075}
# The 'partial' focal correction (evaluation only): depth times the factor to this power,
# halfway (in log scale) between no correction and the full one.
PARTIAL_POWER = 0.5


def parse_data_spec(spec):
    """'synthetic' | 'nyud:DIR' | 'pascal:DIR' -> (kind, root or None)."""
    if spec == 'synthetic':
        return 'synthetic', None
    kind, sep, root = str(spec).partition(':')
    if kind in ('nyud', 'pascal') and sep and root:
        return kind, root
    raise ValueError(f'--data must be synthetic, nyud:DIR or pascal:DIR, got {spec!r}')


def _letterbox_batch(images, model_size, config, device):
    """uint8 H x W x 3 images (any sizes) -> normalised model batch and their letterboxes.

    The runtime's letterbox (``mtdp_ros.runtime.preprocess``): evaluation sees exactly the
    input the engines and the node give the model, and maps outputs back the same way.
    """
    gain, offset = normalisation(config.mean, config.std, device)
    batch = torch.zeros((len(images), 3) + tuple(model_size), device=device)
    plans = []
    for index, image in enumerate(images):
        image = check_image(image)
        plan = plan_letterbox(image.shape[:2], model_size)
        letterbox(torch.as_tensor(image, device=device), plan, gain, offset,
                  out=batch[index:index + 1])
        plans.append(plan)
    return batch, plans


@torch.no_grad()
def _forward(model, x, steps):
    if is_diffusion(model.config):
        return model(x, steps=steps)
    return model(x)


@torch.no_grad()
def evaluate_model(model, data='synthetic', num=200, seed=424242, batch_size=8, device=None,
                   steps=None, amp=None, progress=None, focal_scale=1.0,
                   focal_correction=True):
    """Metrics of ``model`` (train or reparameterised form) on ``data``; a nested dict.

    ``steps``: DDIM steps for TaskDiffusion models (default: the trained count). ``amp``:
    an autocast dtype for the forward pass (None: float32). ``progress``: callable
    ``(done, total)``. ``focal_scale`` (synthetic only): render the scenes with the focal
    length times this factor. ``focal_correction`` (synthetic only; no effect for a model
    whose config states no ``train_focal_px``; the data sets' cameras are not modelled):
    ``'scale'`` rescales depth from the model's training focal length to the scene
    camera's; ``'canonical'`` (or True: the engines' default) first resizes each image so
    that its focal length is the training one where that shrinks it (padded, as the
    engines' letterbox), then rescales what is left; ``'hybrid'`` (the engines' default)
    rescales by the factor for a wider camera and by its square root for a zoomed one;
    ``'partial'`` rescales by the square
    root of the factor (comparison only); ``'off'`` (or False) leaves depth as predicted.
    """
    from mtdp_ros.runtime.postprocess import check_focal_correction
    from .raycast import check_focal_scale
    if focal_correction != 'partial':
        focal_correction = check_focal_correction(focal_correction)
    kind, root = parse_data_spec(data)
    if num is not None and num < 1:
        raise ValueError(f'--num must be >= 1, got {num}')
    focal_scale = check_focal_scale(focal_scale)
    if kind != 'synthetic' and focal_scale != 1.0:
        raise ValueError('--focal-scale applies to --data synthetic only')
    config = model.config
    # The one check of a step count given to an evaluation (mtdp eval passes its --steps).
    steps = check_steps(steps, config, '--steps')
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    meter = MultiTaskMeter(config.tasks, config.num_outputs,
                           edge_max_dist=EDGE_MAX_DIST[kind])

    def run(x):
        if amp is None:
            return _forward(model, x, steps)
        with torch.autocast(device.type, dtype=amp):
            return _forward(model, x, steps)

    try:
        if kind == 'synthetic':
            _evaluate_synthetic(model, run, meter, num, seed, batch_size, device, progress,
                                focal_scale, focal_correction)
        else:
            _evaluate_dataset(model, run, meter, kind, root, num, batch_size, device, progress)
    finally:
        model.train(was_training)
    return meter.score()


def _focal_corrected(raw, intrinsics, train_focal_px, correction='scale'):
    """Raw outputs with depth scaled per image by the engines' focal correction.

    ``correction``: 'scale' or 'hybrid' as the engines; 'partial' (comparison only): the
    factor to the power PARTIAL_POWER whether the camera is wider or narrower.
    """
    from mtdp_ros.runtime.postprocess import corrected_depth_factor, focal_correction_factor
    if 'depth' not in raw or train_focal_px is None:
        return raw
    # Scenes are rendered at the model's input size: the letterbox scale is 1.
    factors = [focal_correction_factor(row.tolist(), train_focal_px) for row in intrinsics]
    if correction == 'partial':
        factors = [factor ** PARTIAL_POWER for factor in factors]
    else:
        factors = [corrected_depth_factor(factor, correction) for factor in factors]
    factors = torch.tensor(factors, dtype=raw['depth'].dtype, device=raw['depth'].device)
    return {**raw, 'depth': raw['depth'] * factors.view(-1, 1, 1, 1)}


def _canonical_run(run, x, intrinsics, config):
    """Raw outputs at the scenes' size through the canonical camera (see evaluate_model).

    Each normalised image is letterboxed with ``max_scale`` = its canonical scale (zero
    padding, as the engines), the batch runs once, and each output is cropped and resized
    back; depth then takes the residual factor of the plan's scale, as in the engines.
    """
    from mtdp_ros.runtime.postprocess import canonical_scale, focal_correction_factor
    size = tuple(x.shape[-2:])
    plans, canvas = [], torch.zeros_like(x)
    for index, row in enumerate(intrinsics.tolist()):
        plan = plan_letterbox(size, config.image_size,
                              canonical_scale(row, config.train_focal_px))
        image = x[index:index + 1]
        if plan.resized_size != size:
            image = F.interpolate(image, size=plan.resized_size, mode='bilinear',
                                  align_corners=False, antialias=True)
        rows, cols = plan.content_slices
        canvas[index:index + 1, :, rows, cols] = image
        plans.append(plan)
    raw = run(canvas)
    outputs = {}
    for task, values in raw.items():
        outputs[task] = torch.cat([unletterbox(values[i:i + 1].float(), plan)
                                   for i, plan in enumerate(plans)])
    if 'depth' in outputs:
        factors = [focal_correction_factor(row, config.train_focal_px, plan.scale)
                   for row, plan in zip(intrinsics.tolist(), plans)]
        factors = torch.tensor(factors, dtype=outputs['depth'].dtype,
                               device=outputs['depth'].device)
        outputs['depth'] = outputs['depth'] * factors.view(-1, 1, 1, 1)
    return outputs


def _evaluate_synthetic(model, run, meter, num, seed, batch_size, device, progress,
                        focal_scale=1.0, focal_correction=True):
    from .synthetic import render_batch, SCENE_TASKS
    config = model.config
    missing = [t for t in config.tasks if t not in SCENE_TASKS]
    if missing:
        raise ValueError(f'synthetic scenes have no labels for {missing}; evaluate this model '
                         f'on pascal:DIR')
    height, width = config.image_size
    mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=device).view(1, 3, 1, 1)
    done = 0
    for first in range(seed, seed + num, batch_size):
        seeds = list(range(first, min(first + batch_size, seed + num)))
        batch = render_batch(seeds, height, width, device=device, focal_scale=focal_scale)
        x = (batch['image'] - mean) / std
        if focal_correction == 'canonical' and config.train_focal_px is not None:
            raw = _canonical_run(run, x, batch['intrinsics'].cpu(), config)
        else:
            raw = run(x)
        if focal_correction in ('hybrid', 'scale', 'partial'):
            raw = _focal_corrected(raw, batch['intrinsics'].cpu(), config.train_focal_px,
                                   focal_correction)
        meter.update({t: v.float() for t, v in raw.items()},
                     {t: batch[t] for t in config.tasks})
        done += len(seeds)
        if progress:
            progress(done, num)


def _evaluate_dataset(model, run, meter, kind, root, num, batch_size, device, progress):
    from .datasets import build_dataset
    config = model.config
    dataset = build_dataset(kind, root, 'val', config.tasks, None, augment=False)
    total = len(dataset) if num is None else min(num, len(dataset))
    for first in range(0, total, batch_size):
        samples = [dataset[i] for i in range(first, min(first + batch_size, total))]
        x, geometry = _letterbox_batch([s['image'] for s in samples], config.image_size,
                                       config, device)
        raw = run(x)
        for index, sample in enumerate(samples):
            outputs = {t: unletterbox(raw[t][index:index + 1].float(), geometry[index])
                       for t in config.tasks}
            targets = {t: torch.as_tensor(sample[t])[None] for t in config.tasks}
            for task, target in targets.items():
                # H x W x 3 vectors -> 3 x H x W; H x W maps -> 1 x H x W.
                targets[task] = target.permute(0, 3, 1, 2) \
                    if find_task(task).target == 'vector' else target[:, None]
            meter.update(outputs, targets)
        if progress:
            progress(min(first + batch_size, total), total)


def summarize(results):
    """The compact form printed by ``mtdp eval --json`` (fractions, metres, degrees)."""
    summary = {}
    for task, values in results.items():
        spec = find_task(task)                # the metrics the task table keeps
        keys = spec.summary_metrics if spec is not None else tuple(values)
        summary[task] = {k: _round(values[k]) for k in keys if k in values}
    return summary


def _round(value):
    if isinstance(value, float):
        return float(f'{value:.6g}') if math.isfinite(value) else None
    return value


# Quality floors of the shipped default models on held-out synthetic scenes: the one place
# they are defined (scripts/train_default_models.py and the tests read them from here).
FLOORS = {('semseg', 'mIoU'): ('>=', 0.60), ('depth', 'abs_rel'): ('<=', 0.15),
          ('normals', 'mean_angle'): ('<=', 20.0), ('edge', 'odsF'): ('>=', 0.40)}


def check_floors(summary, floors=None):
    """List of human-readable failures of the default models' quality floors."""
    failures = []
    for (task, key), (op, bound) in (floors or FLOORS).items():
        value = summary.get(task, {}).get(key)
        ok = value is not None and (value >= bound if op == '>=' else value <= bound)
        if not ok:
            failures.append(f'{task}.{key} = {value} (needs {op} {bound})')
    return failures


def describe_floors(floors=None):
    """The floors as one line of text, e.g. 'semseg mIoU >= 0.6, depth abs_rel <= 0.15'."""
    return ', '.join(f'{task} {key} {op} {bound:g}'
                     for (task, key), (op, bound) in (floors or FLOORS).items())
