"""Fit a camera image of any size to the model's fixed input size, and map back.

The model is tied to one input size (its position embedding and the MLoRE routers' position
branch are learned for it). A camera image is scaled, keeping its aspect ratio, to fit that
size, normalised with the model's mean and std, and centred in a zero canvas: the authors
pad centred with zeros in the normalised tensor, so padded pixels carry no signal.

Everything runs in PyTorch on the tensor's device (the GPU when the engine uses one).
Pixel coordinates follow the half-pixel convention of ``F.interpolate`` with
``align_corners=False``: pixel ``i`` covers ``[i, i + 1)`` and its centre is ``i + 0.5``.
"""

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one letterbox: where the scaled image lies inside the model input.

    ``image_size`` (H, W) of the camera image, ``model_size`` (h, w) of the model input,
    ``resized_size`` (rh, rw) of the scaled image, ``offset`` (top, left) of its corner in
    the model input. The scale along each axis is ``rh / H`` and ``rw / W`` (equal up to
    rounding to whole pixels).
    """

    image_size: Tuple[int, int]
    model_size: Tuple[int, int]
    resized_size: Tuple[int, int]
    offset: Tuple[int, int]

    @property
    def scale(self) -> Tuple[float, float]:
        """Model pixels per image pixel along (y, x)."""
        return (self.resized_size[0] / self.image_size[0],
                self.resized_size[1] / self.image_size[1])

    @property
    def is_identity(self) -> bool:
        """True when the image already has the model's size (no resize, no padding)."""
        return tuple(self.image_size) == tuple(self.model_size)

    @property
    def content_slices(self) -> Tuple[slice, slice]:
        """Rows and columns of the model input that hold the image (not padding)."""
        top, left = self.offset
        return (slice(top, top + self.resized_size[0]), slice(left, left + self.resized_size[1]))

    def image_to_model(self, points):
        """Map (x, y) image coordinates (N x 2, continuous) into model-input coordinates."""
        points = np.asarray(points, dtype=np.float64)
        scale_y, scale_x = self.scale
        out = np.empty_like(points)
        out[..., 0] = points[..., 0] * scale_x + self.offset[1]
        out[..., 1] = points[..., 1] * scale_y + self.offset[0]
        return out

    def model_to_image(self, points):
        """Map (x, y) model-input coordinates (N x 2, continuous) back into the image."""
        points = np.asarray(points, dtype=np.float64)
        scale_y, scale_x = self.scale
        out = np.empty_like(points)
        out[..., 0] = (points[..., 0] - self.offset[1]) / scale_x
        out[..., 1] = (points[..., 1] - self.offset[0]) / scale_y
        return out


def plan_letterbox(image_size, model_size, max_scale=None) -> Letterbox:
    """Plan the letterbox that fits an image of ``image_size`` (H, W) into ``model_size`` (h, w).

    The image is scaled by ``min(h / H, w / W)`` (up or down), rounded to whole pixels, and
    centred; the leftover rows and columns are split with the extra one at the bottom/right.
    ``max_scale``: scale by at most this much (the canonical camera of
    :func:`mtdp_ros.runtime.postprocess.canonical_scale`: a zoomed camera's image is
    shrunk further so that its focal length matches the training camera's, and padded).
    """
    image_h, image_w = (int(v) for v in image_size)
    model_h, model_w = (int(v) for v in model_size)
    if min(image_h, image_w) < 1:
        raise ValueError(f'image size {image_size} must be positive')
    if min(model_h, model_w) < 1:
        raise ValueError(f'model size {model_size} must be positive')
    scale = min(model_h / image_h, model_w / image_w)
    if max_scale is not None:
        scale = min(scale, float(max_scale))
    resized_h = min(model_h, max(1, int(round(image_h * scale))))
    resized_w = min(model_w, max(1, int(round(image_w * scale))))
    offset = ((model_h - resized_h) // 2, (model_w - resized_w) // 2)
    return Letterbox((image_h, image_w), (model_h, model_w), (resized_h, resized_w), offset)


def check_image(image) -> np.ndarray:
    """Return the image as a C-contiguous uint8 H x W x 3 array; ValueError if it is not one."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f'image must be a numpy array (H x W x 3 uint8 RGB), '
                         f'got {type(image).__name__}')
    if image.dtype != np.uint8:
        raise ValueError(f'image must be uint8 (H x W x 3 RGB), got dtype {image.dtype}')
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'image must be H x W x 3 (RGB), got shape {image.shape}')
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f'image is empty: shape {image.shape}')
    return np.ascontiguousarray(image)


def normalisation(mean, std, device, dtype=torch.float32):
    """Per-channel (gain, offset) with ``x_norm = x_uint8 * gain + offset`` (1 x 3 x 1 x 1)."""
    mean = torch.tensor(mean, dtype=torch.float64)
    std = torch.tensor(std, dtype=torch.float64)
    gain = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
    offset = (-mean / std).view(1, 3, 1, 1)
    return gain.to(device=device, dtype=dtype), offset.to(device=device, dtype=dtype)


def letterbox(image, plan: Letterbox, gain, offset, out=None, dtype=torch.float32):
    """Scale, normalise and pad one image into a 1 x 3 x h x w model input.

    ``image``: uint8 H x W x 3 tensor on the target device. ``gain``/``offset`` from
    :func:`normalisation`. Resizing is bilinear (antialiased when shrinking) on the 0-255
    values; padding is zero in the normalised tensor. ``out``, when given, receives the
    result (a static buffer for CUDA graphs) and is returned.
    """
    if tuple(image.shape) != (*plan.image_size, 3):
        raise ValueError(f'image shape {tuple(image.shape)} does not match the letterbox '
                         f'plan {plan.image_size}')
    pixels = image.permute(2, 0, 1).unsqueeze(0).to(torch.float32)      # 1 x 3 x H x W
    if tuple(plan.resized_size) != tuple(plan.image_size):
        shrinking = plan.resized_size[0] < plan.image_size[0]
        pixels = F.interpolate(pixels, size=plan.resized_size, mode='bilinear',
                               align_corners=False, antialias=shrinking)
    normalised = pixels * gain + offset
    if out is None:
        if plan.is_identity:
            return normalised.to(dtype).contiguous()
        out = torch.zeros((1, 3, *plan.model_size), dtype=dtype, device=image.device)
    elif not plan.is_identity:
        out.zero_()
    rows, cols = plan.content_slices
    out[:, :, rows, cols] = normalised
    return out


def unletterbox(tensor, plan: Letterbox, mode='bilinear'):
    """Crop the image region out of a B x C x h x w model-size map and resize it to H x W.

    ``mode``: ``'bilinear'`` for continuous maps (antialiased when shrinking) or
    ``'nearest'`` for label maps (each image pixel takes the label of the model pixel its
    centre falls in, so no label is ever invented at a boundary).
    """
    if tuple(tensor.shape[-2:]) != tuple(plan.model_size):
        raise ValueError(f'map of size {tuple(tensor.shape[-2:])} is not the model size '
                         f'{plan.model_size}')
    rows, cols = plan.content_slices
    cropped = tensor[:, :, rows, cols]
    if tuple(plan.resized_size) == tuple(plan.image_size):
        return cropped
    if mode == 'nearest':
        return F.interpolate(cropped, size=plan.image_size, mode='nearest-exact')
    if mode == 'bilinear':
        shrinking = plan.image_size[0] < plan.resized_size[0]
        return F.interpolate(cropped, size=plan.image_size, mode='bilinear',
                             align_corners=False, antialias=shrinking)
    raise ValueError(f"unknown resize mode {mode!r}; use 'bilinear' or 'nearest'")


def letterbox_batch(images, plans, gain, offset, device, dtype=torch.float32):
    """uint8 H x W x 3 numpy images -> one B x 3 x h x w input, each row by its own plan.

    On a CUDA ``device`` each image goes up through its own pinned buffer with a
    non-blocking copy (a shared staging buffer would be overwritten before its copy ran).
    """
    cuda = torch.device(device).type == 'cuda'
    rows = []
    for image, plan in zip(images, plans):
        pixels = torch.from_numpy(image)
        if cuda:
            pixels = pixels.pin_memory().to(device, non_blocking=True)
        rows.append(letterbox(pixels, plan, gain, offset, dtype=dtype))
    return rows[0] if len(rows) == 1 else torch.cat(rows)
