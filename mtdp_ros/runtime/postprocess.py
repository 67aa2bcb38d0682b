"""Raw model outputs -> metric outputs at the camera image's size, in PyTorch on the device.

Per task (raw outputs as the models return them, 1 x C x h x w at the model input size):

- ``semseg`` / ``human_parts``: argmax over the logits at model resolution, then the label
  map is cropped and resized with nearest-neighbour sampling, so only predicted labels
  appear (no blends at class boundaries). uint8, or uint16 with more than 255 classes.
- ``depth``: metres, bilinear; non-positive or non-finite values become NaN (invalid).
- ``normals``: bilinear, then renormalised to unit length (H x W x 3); a vanishing vector
  (no direction to recover) becomes NaN.
- ``edge``: sigmoid of the logit, bilinear: a probability in [0, 1].
- ``sal``: softmax over the two logits, channel 1, bilinear: a probability in [0, 1].

Camera-aware depth (:func:`focal_correction_factor`): given the camera's intrinsics, metric
depth is rescaled from the model's training camera to the camera in use.
"""

import math

import numpy as np
import torch

from .preprocess import Letterbox, unletterbox

LABEL_TASKS = ('semseg', 'human_parts')
# Below this length a normal carries no usable direction.
MIN_NORMAL_LENGTH = 1e-6


def label_dtype(num_classes):
    """Return the numpy dtype of a label map: uint8 up to 255 classes, uint16 beyond."""
    return np.uint8 if num_classes <= 255 else np.uint16


def postprocess_task(task, raw, plan: Letterbox):
    """One task's raw output (1 x C x h x w) -> its metric output at the image size.

    Returns a tensor on ``raw``'s device: H x W (labels as uint8 or int32, probabilities
    and depth as float32) or H x W x 3 (normals).
    """
    if raw.dim() != 4 or raw.shape[0] != 1:
        raise ValueError(f'{task}: expected a 1 x C x h x w output, got {tuple(raw.shape)}')
    if task in LABEL_TASKS:
        num_classes = raw.shape[1]
        # Class ids < 2**24 are exact in float32, the dtype nearest-exact resizing needs.
        labels = raw.argmax(dim=1, keepdim=True).to(torch.float32)
        labels = unletterbox(labels, plan, mode='nearest')[0, 0]
        return labels.to(torch.uint8 if num_classes <= 255 else torch.int32)
    raw = raw.to(torch.float32)
    if task == 'depth':
        depth = unletterbox(raw[:, :1], plan)[0, 0]
        valid = torch.isfinite(depth) & (depth > 0)
        return torch.where(valid, depth, torch.full_like(depth, float('nan')))
    if task == 'normals':
        normals = unletterbox(raw[:, :3], plan)[0]                      # 3 x H x W
        # Written out: linalg.vector_norm over dim 0 was ~70x slower on the CPU (measured).
        length = (normals * normals).sum(dim=0, keepdim=True).sqrt()
        unit = normals / length.clamp(min=MIN_NORMAL_LENGTH)
        unit = torch.where(length >= MIN_NORMAL_LENGTH, unit, torch.full_like(unit, float('nan')))
        return unit.permute(1, 2, 0).contiguous()
    if task == 'edge':
        return unletterbox(torch.sigmoid(raw[:, :1]), plan)[0, 0].clamp(0.0, 1.0)
    if task == 'sal':
        probability = torch.softmax(raw, dim=1)[:, 1:2]
        return unletterbox(probability, plan)[0, 0].clamp(0.0, 1.0)
    raise ValueError(f'no post-processing defined for task {task!r}')


def check_intrinsics(intrinsics):
    """``(fx, fy, cx, cy)`` as floats; ValueError naming the problem otherwise."""
    try:
        values = tuple(float(v) for v in intrinsics)
    except (TypeError, ValueError):
        raise ValueError(f'intrinsics must be four numbers (fx, fy, cx, cy), got '
                         f'{intrinsics!r}') from None
    if len(values) != 4:
        raise ValueError(f'intrinsics must be four numbers (fx, fy, cx, cy), got {len(values)}')
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f'intrinsics must be finite, got {values}')
    if values[0] <= 0 or values[1] <= 0:
        raise ValueError(f'intrinsics need positive focal lengths, got fx={values[0]}, '
                         f'fy={values[1]}')
    return values


def focal_correction_factor(intrinsics, train_focal_px, scale=(1.0, 1.0)):
    """Factor that turns depth predicted as if by the training camera into this camera's.

    A network trained on one camera reads depth from apparent size: a thing of size S at
    depth Z spans ``f_train * S / Z`` pixels of its input. Seen by a camera of focal length
    ``f`` through the letterbox (``scale`` model pixels per image pixel), it spans
    ``f * s * S / Z`` model pixels, which the network takes for depth
    ``Z * f_train / (f * s)``; multiplying by ``f * s / f_train`` gives Z back (the
    canonical-camera transformation of Metric3D, applied to the output).

    ``intrinsics``: (fx, fy, cx, cy) of the camera image in pixels; ``scale``: (sy, sx)
    (``Letterbox.scale``). The focal length as seen in the model's input is the mean of
    ``fx * sx`` and ``fy * sy``: the models are trained with square pixels, where the two
    agree (the Kinect of NYUD-v2: 518.86 / 519.47 px, 0.1 %), and the mean weighs both
    axes alike when they do not. Returns None when ``train_focal_px`` is None (unknown).
    """
    fx, fy, _, _ = check_intrinsics(intrinsics)
    if train_focal_px is None:
        return None
    scale_y, scale_x = (float(v) for v in scale)
    return 0.5 * (fx * scale_x + fy * scale_y) / float(train_focal_px)


def postprocess(raw_outputs, plan: Letterbox, tasks=None):
    """``{task: 1 x C x h x w raw}`` -> ``{task: metric tensor at the image size}``."""
    tasks = tuple(raw_outputs) if tasks is None else tuple(tasks)
    missing = [t for t in tasks if t not in raw_outputs]
    if missing:
        raise ValueError(f'raw outputs lack tasks {missing}')
    return {task: postprocess_task(task, raw_outputs[task], plan) for task in tasks}


def to_host_async(outputs):
    """Start copying device tensors to the host; returns the host tensors (not yet valid).

    CUDA tensors go into freshly allocated pinned memory with non-blocking copies on the
    current stream; call :func:`host_to_numpy` after synchronising that stream. Fresh
    buffers (PyTorch caches pinned blocks) mean a later call never overwrites a result the
    caller still holds.
    """
    host = {}
    for task, tensor in outputs.items():
        if tensor.device.type == 'cuda':
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            buffer.copy_(tensor, non_blocking=True)
            host[task] = buffer
        else:
            host[task] = tensor.contiguous()
    return host


def host_to_numpy(host):
    """Host tensors -> numpy arrays (labels uint8/uint16, everything else float32)."""
    result = {}
    for task, tensor in host.items():
        array = tensor.numpy()
        if task in LABEL_TASKS:
            if array.dtype != np.uint8:
                array = array.astype(np.uint16)
        elif array.dtype != np.float32:
            array = array.astype(np.float32)
        result[task] = array
    return result


def to_numpy(outputs):
    """Device tensors -> numpy arrays, synchronising the CUDA stream once for all tasks."""
    host = to_host_async(outputs)
    if any(t.device.type == 'cuda' for t in outputs.values()):
        torch.cuda.current_stream().synchronize()
    return host_to_numpy(host)
