"""Colour images of the node's outputs (uint8 H x W x 3 RGB), for RViz and people.

- labels: a fixed palette, one distinct colour per class id (stable across frames, runs
  and models, so that a class keeps its colour);
- depth: a turbo-like rainbow from near (dark blue) to far (dark red) over a given or
  per-frame range; invalid pixels black;
- normals: the usual ``(n + 1) / 2`` mapping of the x, y, z components to red, green and
  blue (camera optical frame: x right, y down, z forward); invalid pixels black;
- probabilities (edges, saliency): grey levels, 0 black and 1 white; invalid pixels black.

Invalid is any non-finite value (NaN, the outputs' marker, or an infinity; for normals, any
non-finite component). It is masked explicitly before the float-to-integer conversion: the
integer value of a NaN is undefined, and OpenCV's ``convertScaleAbs`` gives 0 for it up to
4.x but 255 from 5.0.

:func:`colorize` picks the map by the task's kind (``mtdp_ros.models.tasks``).

Each runs in a few OpenCV and NumPy calls, under a millisecond at 640 x 480.
"""

import colorsys

import cv2
import numpy as np

from mtdp_ros.models.tasks import get_task

# Golden-ratio hue steps give neighbouring ids far-apart hues.
_GOLDEN_RATIO = 0.6180339887498949


def label_palette(num_colors=256):
    """``num_colors`` x 3 uint8 RGB: a distinct colour per class id.

    Hues advance by the golden ratio; saturation and brightness cycle through a few levels
    so that ids whose hues nearly repeat still differ.
    """
    palette = np.empty((num_colors, 3), np.uint8)
    for index in range(num_colors):
        hue = (index * _GOLDEN_RATIO) % 1.0
        saturation = (0.9, 0.6, 0.75)[index % 3]
        value = (0.95, 0.7)[(index // 3) % 2]
        palette[index] = [round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)]
    return palette


_PALETTE_256 = label_palette(256)
# cv2.applyColorMap copies the entries of a 256 x 1 x 3 table as they are, so a table in
# RGB order yields RGB images directly.
_PALETTE_LUT = np.ascontiguousarray(_PALETTE_256.reshape(256, 1, 3))


def _turbo_lut():
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    if hasattr(cv2, 'COLORMAP_TURBO'):
        return np.ascontiguousarray(cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO))
    return np.ascontiguousarray(cv2.applyColorMap(ramp, cv2.COLORMAP_JET))


# Entry 0 is dark blue, 255 dark red (OpenCV's maps are BGR: reversed into RGB).
TURBO_RGB = np.ascontiguousarray(_turbo_lut()[:, 0, ::-1])
# The depth table: level 0 is black (invalid), levels 1..255 span the turbo map.
_DEPTH_RGB = np.vstack([np.zeros((1, 3), np.uint8),
                        TURBO_RGB[np.rint(np.linspace(0, 255, 255)).astype(int)]])
_DEPTH_LUT = np.ascontiguousarray(_DEPTH_RGB.reshape(256, 1, 3))


def labels_to_color(labels):
    """uint8/uint16 H x W class ids -> RGB (ids above 255 reuse the palette cyclically)."""
    labels = np.asarray(labels)
    if labels.dtype != np.uint8:
        labels = (labels.astype(np.int64) % 256).astype(np.uint8)
    return cv2.applyColorMap(np.ascontiguousarray(labels), _PALETTE_LUT)


def depth_range(depth, minimum=0.0, maximum=0.0):
    """The (near, far) metres that a depth colouring spans.

    A positive ``maximum`` greater than ``minimum`` fixes the range; otherwise it is the
    frame's finite minimum and maximum (``minimum`` still fixes the near end when positive).
    """
    if maximum > minimum:
        return float(minimum), float(maximum)
    # fmin/fmax skip NaN (the invalid marker) without copying the valid pixels out.
    low = float(np.fmin.reduce(depth, axis=None)) if depth.size else float('nan')
    high = float(np.fmax.reduce(depth, axis=None)) if depth.size else float('nan')
    if not (np.isfinite(low) and np.isfinite(high)):
        finite = depth[np.isfinite(depth)]
        if finite.size == 0:
            return 0.0, 1.0
        low, high = float(finite.min()), float(finite.max())
    near = float(minimum) if minimum > 0 else low
    far = high
    if far <= near:
        far = near + 1e-3
    return near, far


def _keep(image, valid):
    """``image`` (uint8, any channels) with the pixels where ``valid`` is False set to 0."""
    return cv2.bitwise_and(image, image, mask=valid.view(np.uint8))


def depth_to_color(depth, minimum=0.0, maximum=0.0):
    """Colour float H x W depth in metres (NaN invalid): near blue to far red, invalid black."""
    depth = np.asarray(depth, dtype=np.float32)
    near, far = depth_range(depth, minimum, maximum)
    scale = 254.0 / (far - near)
    # Valid depth -> levels 1..255 (clipped to the range first: convertScaleAbs takes an
    # absolute value). NaN is replaced before the conversion (no NaN reaches it), and every
    # non-finite pixel is set to level 0, black, after it.
    clipped = np.clip(depth, near, far)
    cv2.patchNaNs(clipped, near)
    levels = cv2.convertScaleAbs(clipped, alpha=scale, beta=1.0 - near * scale)
    return cv2.applyColorMap(_keep(levels, np.isfinite(depth)), _DEPTH_LUT)


def normals_to_color(normals):
    """Colour float H x W x 3 unit normals, each component mapped by ``(n + 1) / 2``.

    A normal with a non-finite component is invalid and comes out black, a colour no unit
    vector produces (it would need n = (-1, -1, -1)).
    """
    normals = np.asarray(normals, dtype=np.float32)
    # One pass finds the invalid pixels: the grey level is a weighted mean of the three
    # components, non-finite exactly when one of them is (NaN and infinities propagate).
    valid = np.isfinite(cv2.cvtColor(normals, cv2.COLOR_RGB2GRAY))
    # Clipped to [-1, 1] first: convertScaleAbs takes an absolute value, so a component
    # below -1 would come back bright. NaN is replaced before the conversion.
    clipped = np.clip(normals, -1.0, 1.0)
    # patchNaNs on a one-channel view of the same memory (its one-channel path is faster).
    cv2.patchNaNs(clipped.reshape(clipped.shape[0], -1), -1.0)
    return _keep(cv2.convertScaleAbs(clipped, alpha=127.5, beta=127.5), valid)


def probability_to_color(probability):
    """Colour float H x W in [0, 1] as grey (0 black, 1 white; non-finite black)."""
    probability = np.asarray(probability, dtype=np.float32)
    clipped = np.clip(probability, 0.0, 1.0)
    cv2.patchNaNs(clipped, 0.0)     # no NaN reaches the conversion; infinities masked after
    grey = _keep(cv2.convertScaleAbs(clipped, alpha=255.0), np.isfinite(probability))
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)


def colorize(task, values, depth_min=0.0, depth_max=0.0):
    """The rgb8 picture of one task's output, by the task's kind (the one colouring path).

    The node, ``mtdp bag``, ``mtdp infer`` and the demo all colour through here;
    ``depth_min`` / ``depth_max`` fix the depth range (0, 0: each frame's own, see
    :func:`depth_range`).
    """
    kind = get_task(task).kind
    if kind == 'labels':
        return labels_to_color(values)
    if kind == 'depth':
        return depth_to_color(values, depth_min, depth_max)
    if kind == 'normals':
        return normals_to_color(values)
    return probability_to_color(values)
