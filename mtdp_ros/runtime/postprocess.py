"""Raw model outputs -> metric outputs at the camera image's size, in PyTorch on the device.

Per task kind (``mtdp_ros.models.tasks``; raw outputs as the models return them,
1 x C x h x w at the model input size):

- labels (``semseg`` / ``human_parts``): argmax over the logits at model resolution, then the label
  map is cropped and resized with nearest-neighbour sampling, so only predicted labels
  appear (no blends at class boundaries). uint8, or uint16 with more than 255 classes.
- depth: metres, bilinear; non-positive or non-finite values become NaN (invalid).
- normals: bilinear, then renormalised to unit length (H x W x 3); a vanishing vector
  (no direction to recover) becomes NaN.
- probability, by the task's activation: sigmoid of the logit (``edge``) or softmax over
  the two logits, channel 1 (``sal``; a one-logit head, MT-CP's, takes the sigmoid);
  bilinear: a probability in [0, 1].

On the GPU this runs in PyTorch on the device (:func:`postprocess_task_reference`). On the
CPU, when the image is at least as large as the model's view of it (the usual camera case),
:func:`postprocess_task_cpu` computes the same with OpenCV: a per-class running maximum for
the argmax (labels equal to ``torch.argmax``, far faster: see the README's CPU figures),
``cv2.resize`` on H x W (x C) float32 (bilinear with the same half-pixel centres as
``F.interpolate``, and more accurate: PyTorch rounds its source coordinates in float32),
nearest-neighbour labels with exact integer arithmetic (equal to PyTorch's except where a
pixel centre lies exactly on a boundary, which PyTorch's float32 rounds either way), and
the normals renormalised in place. Logits holding NaN are the one difference: ``torch.argmax``
picks the NaN class, the CPU path ignores NaN. Shrinking (antialiased) resizes stay on the
PyTorch path.

Camera-aware depth (:func:`focal_correction_factor`): given the camera's intrinsics, metric
depth is rescaled from the model's training camera to the camera in use.
"""

import math
import threading

import cv2
import numpy as np
import torch

from ..models.tasks import find_task, get_task
from .preprocess import Letterbox, unletterbox

# 1 x 3 matrix of cv2.transform: the sum of a pixel's three channels.
_SUM_OF_CHANNELS = np.ones((1, 3), np.float32)
# Below this length a normal carries no usable direction.
MIN_NORMAL_LENGTH = 1e-6


def label_dtype(num_classes):
    """Return the numpy dtype of a label map: uint8 up to 255 classes, uint16 beyond."""
    return np.uint8 if num_classes <= 255 else np.uint16


def postprocess_task(task, raw, plan: Letterbox):
    """One task's raw output (1 x C x h x w) -> its metric output at the image size.

    Returns a tensor on ``raw``'s device: H x W (labels as uint8, or int32/uint16 with more
    than 255 classes, probabilities and depth as float32) or H x W x 3 (normals). CPU
    tensors take :func:`postprocess_task_cpu` where it applies, everything else
    :func:`postprocess_task_reference`.
    """
    if raw.device.type == 'cpu' and cpu_path_applies(task, raw, plan):
        return torch.from_numpy(postprocess_task_cpu(task, raw, plan))
    return postprocess_task_reference(task, raw, plan)


def cpu_path_applies(task, raw, plan: Letterbox):
    """Whether :func:`postprocess_task_cpu` computes this task's output for this plan.

    Not for shrinking resizes (PyTorch antialiases them; OpenCV has no equal filter) nor
    for more than 65535 classes (OpenCV's largest unsigned label type).
    """
    if raw.dim() != 4 or raw.shape[0] != 1 or tuple(raw.shape[-2:]) != tuple(plan.model_size):
        return False                              # the reference path raises the error
    spec = find_task(task)
    if spec is None:
        return False                              # the reference path raises the error
    if spec.kind == 'labels':
        return raw.shape[1] <= 65535
    return all(i >= r for i, r in zip(plan.image_size, plan.resized_size))


def postprocess_task_cpu(task, raw, plan: Letterbox):
    """:func:`postprocess_task_reference` with OpenCV on the CPU, as a numpy array.

    Labels come back as uint8 (uint16 beyond 255 classes). Only where
    :func:`cpu_path_applies`.
    """
    rows, cols = plan.content_slices
    content = raw[0, :, rows, cols].detach().to(torch.float32).numpy()   # C x rh x rw
    spec = get_task(task)
    if spec.kind == 'labels':
        return nearest_resize(argmax_channels(content), plan.image_size)
    if spec.kind == 'depth':
        depth = _resize(content[0], plan, cv2.INTER_LINEAR)
        # NaN fails both comparisons, so it stays invalid.
        depth[~((depth > 0) & (depth < np.inf))] = np.nan
        return depth
    if spec.kind == 'normals':
        return _unit_normals(_resize(np.ascontiguousarray(content[:3].transpose(1, 2, 0)),
                                     plan, cv2.INTER_LINEAR))
    # At model resolution, with PyTorch's own functions (as the reference path).
    if spec.activation == 'sigmoid':
        probability = torch.sigmoid(torch.from_numpy(content[0])).numpy()
    elif content.shape[0] == 1:                    # softmax of one logit: its sigmoid
        probability = torch.sigmoid(torch.from_numpy(content[0])).numpy()
    else:                                          # softmax: probability of class 1
        probability = torch.softmax(torch.from_numpy(content), dim=0)[1].numpy()
    probability = _resize(probability, plan, cv2.INTER_LINEAR)
    return np.clip(probability, 0.0, 1.0, out=probability)


def argmax_channels(logits):
    """Index of the largest of C x h x w logits per pixel (the first on ties), uint8/uint16.

    A running maximum over the classes with OpenCV's vectorised compare/max/masked copy:
    numpy's and PyTorch's argmax over the leading axis walk it with a stride (measured
    18x slower for 40 classes at 240 x 320).
    """
    num_classes = logits.shape[0]
    dtype = label_dtype(num_classes)
    best = np.array(logits[0], dtype=np.float32, order='C')
    labels = np.zeros(best.shape, dtype)
    label = np.empty(best.shape, dtype)
    for index in range(1, num_classes):
        scores = np.ascontiguousarray(logits[index])
        greater = cv2.compare(scores, best, cv2.CMP_GT)
        cv2.max(best, scores, dst=best)
        label.fill(index)
        cv2.copyTo(label, greater, labels)
    return labels


def nearest_indices(count, source_count):
    """Source index of each of ``count`` output pixels: the one its centre falls in.

    Exact integer arithmetic: ``floor((i + 0.5) * source_count / count)``. A centre that
    lies exactly on a boundary takes the pixel after it (half-open pixels). PyTorch's
    ``nearest-exact`` computes the same in float32 and can round such a tie either way.
    """
    index = np.arange(count, dtype=np.int64)
    return np.minimum((2 * index + 1) * source_count // (2 * count), source_count - 1)


def nearest_resize(labels, image_size):
    """Resize an h x w label map to H x W: each pixel takes the label its centre falls in."""
    height, width = image_size
    if labels.shape == (height, width):
        return labels
    rows = nearest_indices(height, labels.shape[0])
    cols = nearest_indices(width, labels.shape[1])
    return labels.take(rows, axis=0).take(cols, axis=1)


def _resize(values, plan: Letterbox, interpolation):
    """An h x w (x C) array of the image's part of the model input -> H x W (x C)."""
    height, width = plan.image_size
    if values.shape[:2] == (height, width):
        return np.array(values, order='C')          # a copy the caller may modify
    return cv2.resize(values, (width, height), interpolation=interpolation)


class _NormalsScratch(threading.local):
    """The temporaries of :func:`_unit_normals`, kept for the last image size (per thread).

    Fresh multi-megabyte temporaries every frame come from the kernel page by page (glibc
    maps and unmaps blocks this large): 3.7 ms at 480 x 640 against 1.0 ms with the
    buffers kept (measured on the 2-core VM).
    """

    def __init__(self):
        self.shape = None

    def buffers(self, height, width):
        """(square H x W x 3, length H x W, not_short H x W uint8, inverse3 H x W x 3)."""
        if self.shape != (height, width):
            self.square = np.empty((height, width, 3), np.float32)
            self.length = np.empty((height, width), np.float32)
            self.not_short = np.empty((height, width), np.uint8)
            self.inverse3 = np.empty((height, width, 3), np.float32)
            self.shape = (height, width)
        return self.square, self.length, self.not_short, self.inverse3


_NORMALS_SCRATCH = _NormalsScratch()


def _unit_normals(normals):
    """H x W x 3 float32 vectors -> unit length in place; NaN where too short to point.

    OpenCV's vectorised per-pixel operations: 2.5x less CPU time than the same in numpy
    (einsum, broadcast divide) at 480 x 640 (measured), into buffers kept between frames.
    """
    square, length, not_short, inverse3 = _NORMALS_SCRATCH.buffers(*normals.shape[:2])
    cv2.multiply(normals, normals, dst=square)
    cv2.transform(square, _SUM_OF_CHANNELS, dst=length)
    cv2.sqrt(length, dst=length)
    # >= is false for NaN: a NaN length counts as short.
    cv2.compare(length, MIN_NORMAL_LENGTH, cv2.CMP_GE, dst=not_short)
    cv2.max(length, MIN_NORMAL_LENGTH, dst=length)
    cv2.divide(1.0, length, dst=length)
    cv2.merge([length, length, length], dst=inverse3)
    cv2.multiply(normals, inverse3, dst=normals)
    if cv2.countNonZero(not_short) < not_short.size:
        normals[not_short == 0] = np.nan
    return normals


def postprocess_task_reference(task, raw, plan: Letterbox):
    """One task's raw output -> its metric output, in PyTorch on ``raw``'s device.

    The exact path (and the GPU one). Returns a tensor on ``raw``'s device: H x W (labels
    as uint8 or int32, probabilities and depth as float32) or H x W x 3 (normals).
    """
    if raw.dim() != 4 or raw.shape[0] != 1:
        raise ValueError(f'{task}: expected a 1 x C x h x w output, got {tuple(raw.shape)}')
    spec = find_task(task)
    if spec is None:
        raise ValueError(f'no post-processing defined for task {task!r}')
    if spec.kind == 'labels':
        num_classes = raw.shape[1]
        # Class ids < 2**24 are exact in float32, the dtype nearest-exact resizing needs.
        labels = raw.argmax(dim=1, keepdim=True).to(torch.float32)
        labels = unletterbox(labels, plan, mode='nearest')[0, 0]
        return labels.to(torch.uint8 if num_classes <= 255 else torch.int32)
    raw = raw.to(torch.float32)
    if spec.kind == 'depth':
        depth = unletterbox(raw[:, :1], plan)[0, 0]
        valid = torch.isfinite(depth) & (depth > 0)
        return torch.where(valid, depth, torch.full_like(depth, float('nan')))
    if spec.kind == 'normals':
        normals = unletterbox(raw[:, :3], plan)[0]                      # 3 x H x W
        # Written out: linalg.vector_norm over dim 0 was ~70x slower on the CPU (measured).
        length = (normals * normals).sum(dim=0, keepdim=True).sqrt()
        unit = normals / length.clamp(min=MIN_NORMAL_LENGTH)
        unit = torch.where(length >= MIN_NORMAL_LENGTH, unit, torch.full_like(unit, float('nan')))
        return unit.permute(1, 2, 0).contiguous()
    if spec.activation == 'sigmoid':
        return unletterbox(torch.sigmoid(raw[:, :1]), plan)[0, 0].clamp(0.0, 1.0)
    # Softmax: class 1 (a one-logit head, MT-CP's saliency: its sigmoid).
    probability = (torch.sigmoid(raw) if raw.shape[1] == 1
                   else torch.softmax(raw, dim=1)[:, 1:2])
    return unletterbox(probability, plan)[0, 0].clamp(0.0, 1.0)


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


# depth.focal_correction: how depth is made metric for a camera of another focal length
# (see Engine.infer); the default was chosen by scripts/eval_focal.py (README, Camera-aware
# depth): 'hybrid' rescales fully when the camera is wider than the training one and by the
# square root of the factor when it zooms in (the network already reads part of a zoom
# from other cues, so the full factor overshoots); the only mode that beat no correction
# at every focal scale measured (0.5 to 2).
FOCAL_CORRECTIONS = ('hybrid', 'canonical', 'scale', 'off')
DEFAULT_FOCAL_CORRECTION = 'hybrid'
# 'hybrid' when zooming in (factor > 1): depth times the factor to this power.
HYBRID_ZOOM_POWER = 0.5


def corrected_depth_factor(factor, correction):
    """The factor depth is multiplied by under ``correction`` for a full factor ``factor``.

    'hybrid': ``factor`` for a camera wider than the training one (factor <= 1), else
    ``factor ** HYBRID_ZOOM_POWER``; every other mode: ``factor`` (canonical's residual).
    """
    if correction == 'hybrid' and factor > 1.0:
        return float(factor) ** HYBRID_ZOOM_POWER
    return factor


def check_focal_correction(value):
    """One of FOCAL_CORRECTIONS; True and False are aliases of the default and 'off'."""
    if value is True:
        return DEFAULT_FOCAL_CORRECTION
    if value is False:
        return 'off'
    if value not in FOCAL_CORRECTIONS:
        raise ValueError(f'focal correction must be one of {", ".join(FOCAL_CORRECTIONS)} '
                         f'(or true/false), got {value!r}')
    return value


def canonical_scale(intrinsics, train_focal_px):
    """Letterbox scale that gives the camera the training focal length (None: unknown).

    Metric3D's canonical camera: an image of focal length f resized by ``f_train / f`` looks
    as if taken by the training camera, so the network's depth needs no correction. The
    engines use it as ``plan_letterbox``'s ``max_scale``: a zoomed camera's image is shrunk
    (and padded); a wide one would have to grow past the model input, so it is fitted as
    usual and the rest is corrected on the output (:func:`focal_correction_factor` with
    the plan's scale).
    """
    fx, fy, _, _ = check_intrinsics(intrinsics)
    if train_focal_px is None:
        return None
    return float(train_focal_px) / (0.5 * (fx + fy))


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
        if get_task(task).kind == 'labels':
            if array.dtype != np.uint8:
                array = array.astype(np.uint16, copy=False)
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
