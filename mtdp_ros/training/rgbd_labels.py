"""What a depth camera can supervise, in the model's target format, from one RGB-D frame.

* ``depth``: metric z-depth in metres (0 = no measurement, ignored by the loss);
* ``normals``: unit normals in the camera optical frame (x right, y down, z forward),
  facing the camera, derived from the depth with the camera intrinsics (back-projection,
  cross product of central neighbour differences); the zero vector (ignored) where the
  depth or a neighbour is missing or across a depth discontinuity;
* ``edge``: depth-discontinuity edges (1 where the right or lower neighbour lies across a
  relative depth jump of more than ``EDGE_JUMP``, as the synthetic scenes' depth edges),
  ``IGNORE_INDEX`` where the pixel or that neighbour has no depth.

:func:`make_sample` letterboxes a frame into the model's input with the runtime's
letterbox (``mtdp_ros.runtime.preprocess.plan_letterbox``): training sees the geometry the
engines give the model.
"""

import cv2
import numpy as np
import torch

from ..runtime.camera_geometry import scale_intrinsics
from ..runtime.preprocess import plan_letterbox
from .datasets import IMAGENET_MEAN_255, photometric_distortion, to_tensors

IGNORE_INDEX = 255
# Relative depth jump that makes a depth-discontinuity edge (the synthetic scenes' rule).
EDGE_JUMP = 0.05
# The tasks an RGB-D frame supervises (semantic labels do not exist in a recording).
SUPERVISED_TASKS = ('depth', 'normals', 'edge')


def normals_from_depth(depth, intrinsics, jump=EDGE_JUMP):
    """Unit normals (H x W x 3, camera optical frame, facing the camera) of a depth map.

    ``depth`` H x W metres (0 or non-finite = invalid); ``intrinsics`` (fx, fy, cx, cy).
    Each pixel is back-projected to ``P = z ((u - cx) / fx, (v - cy) / fy, 1)``; the
    normal is ``(P[v+1] - P[v-1]) x (P[u+1] - P[u-1])``, normalised and turned towards the
    camera. Pixels on the border, without depth, with a neighbour without depth or across
    a relative depth jump larger than ``jump`` get the zero vector (ignored by the loss).
    """
    depth = clean_depth(depth)
    height, width = depth.shape
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    points = np.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], axis=-1)
    normals = np.zeros((height, width, 3), np.float32)
    if height < 3 or width < 3:
        return normals
    centre = depth[1:-1, 1:-1]
    valid = centre > 0
    for neighbour in (depth[1:-1, 2:], depth[1:-1, :-2], depth[2:, 1:-1], depth[:-2, 1:-1]):
        valid &= (neighbour > 0) & (np.abs(neighbour - centre) <= jump
                                    * np.minimum(neighbour, centre))
    du = points[1:-1, 2:] - points[1:-1, :-2]
    dv = points[2:, 1:-1] - points[:-2, 1:-1]
    normal = np.cross(dv, du)
    # Face the camera: the normal points against the viewing ray.
    facing = np.sign(-(normal * points[1:-1, 1:-1]).sum(-1, keepdims=True))
    normal = normal * np.where(facing == 0, 1.0, facing)
    length = np.linalg.norm(normal, axis=-1, keepdims=True)
    valid &= length[..., 0] > 0
    normal = np.where(valid[..., None], normal / np.maximum(length, 1e-12), 0.0)
    normals[1:-1, 1:-1] = normal
    return normals


def depth_edges(depth, jump=EDGE_JUMP):
    """Depth-discontinuity edges (H x W float32: 1 edge, 0 not, ``IGNORE_INDEX`` unknown).

    A pixel is an edge when its right or lower neighbour lies across a relative depth jump
    larger than ``jump``; it is unknown when it has no depth or such a neighbour has none.
    """
    depth = clean_depth(depth)
    edge = np.zeros(depth.shape, np.float32)
    unknown = depth <= 0
    for axis in (1, 0):
        n = depth.shape[axis]
        a = np.take(depth, np.arange(n - 1), axis=axis)
        b = np.take(depth, np.arange(1, n), axis=axis)
        both = (a > 0) & (b > 0)
        crossing = both & (np.abs(a - b) > jump * np.minimum(a, b))
        missing = ~both
        index = [slice(None), slice(None)]
        index[axis] = slice(0, n - 1)
        edge[tuple(index)] = np.maximum(edge[tuple(index)], crossing)
        unknown[tuple(index)] |= missing
    edge[unknown] = IGNORE_INDEX
    return edge


def clean_depth(depth):
    """Depth map as H x W float32 metres with every invalid value (NaN, inf, <= 0) 0."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f'a depth map must be H x W, got shape {depth.shape}')
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)


def make_sample(image, depth, intrinsics, size, augment=False, rng=None, name=''):
    """One training sample (tensors in the model's target format) from an RGB-D frame.

    ``image`` H x W x 3 uint8 RGB, ``depth`` metres (the image's size or another: it is
    resized to the image with nearest neighbours), ``intrinsics`` of the image,
    ``size`` the model's (H, W). The frame is letterboxed into ``size`` (padding: mean
    colour, no depth), then normals and edges are derived at that resolution with the
    scaled intrinsics. ``augment``: horizontal flip and the photometric distortion of the
    dataset transform.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'an RGB frame must be H x W x 3 uint8, got {image.shape} '
                         f'{image.dtype}')
    depth = clean_depth(depth)
    height, width = image.shape[:2]
    if depth.shape != (height, width):
        depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
    target_h, target_w = size
    plan = plan_letterbox((height, width), size)
    new_h, new_w = plan.resized_size
    if (new_h, new_w) != (height, width):
        mode = cv2.INTER_AREA if new_w < width else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=mode)
        depth = cv2.resize(depth, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    top, left = plan.offset
    intr = scale_intrinsics(intrinsics, plan.scale, plan.offset)
    canvas = np.empty((target_h, target_w, 3), np.uint8)
    canvas[...] = np.asarray(IMAGENET_MEAN_255).round().astype(np.uint8)
    canvas[top:top + new_h, left:left + new_w] = image
    padded = np.zeros((target_h, target_w), np.float32)
    padded[top:top + new_h, left:left + new_w] = depth
    image, depth = canvas, padded
    if augment:
        rng = rng or np.random.default_rng()
        if rng.random() < 0.5:
            image, depth = image[:, ::-1].copy(), depth[:, ::-1].copy()
            fx, fy, cx, cy = intr
            intr = (fx, fy, target_w - 1 - cx, cy)
        image = photometric_distortion(image, PyRandom(rng))
    sample = {'name': name, 'image': image, 'depth': depth,
              'normals': normals_from_depth(depth, intr), 'edge': depth_edges(depth)}
    tensors = to_tensors(sample)
    tensors['intrinsics'] = torch.tensor(intr, dtype=torch.float32)
    return tensors


def worker_id():
    """The data-loader worker running this call (0 in the main process)."""
    info = torch.utils.data.get_worker_info()
    return info.id if info is not None else 0


class PyRandom:
    """The ``random.Random`` calls ``photometric_distortion`` makes, on a NumPy generator."""

    def __init__(self, rng):
        self.rng = rng

    def random(self):
        return float(self.rng.random())

    def uniform(self, low, high):
        return float(self.rng.uniform(low, high))

    def randint(self, low, high):
        return int(self.rng.integers(low, high + 1))
