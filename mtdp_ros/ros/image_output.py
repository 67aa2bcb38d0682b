"""NumPy -> sensor_msgs/Image: the node's output images, and camera frames for tests.

:func:`numpy_to_image_msg` writes an output array (labels, depth, normals, colours) as an
Image of one of ``OUTPUT_ENCODINGS``; :func:`image_msg_to_numpy` reads such an Image back
(tests, tools). :func:`rgb_to_image_msg` encodes an RGB picture in any camera encoding that
:mod:`mtdp_ros.ros.image_input` decodes (the demo camera and the tests use it, so every
input encoding is tested from known pixels).
"""

import array

import cv2
import numpy as np
from sensor_msgs.msg import Image

from mtdp_ros.ros.image_input import UYVY_ENCODINGS, YUYV_ENCODINGS, pixel_rows

# Output encodings -> (numpy dtype, channels).
OUTPUT_ENCODINGS = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4),
    'bgra8': (np.uint8, 4), 'mono8': (np.uint8, 1), 'mono16': (np.uint16, 1),
    '32FC1': (np.float32, 1), '32FC3': (np.float32, 3),
}


def _as_byte_array(values: np.ndarray):
    """An ``array.array('B')`` holding the bytes of a C-contiguous array.

    Assigning an ``array.array`` to a message's ``uint8[]`` field skips rclpy's per-element
    range check, which costs seconds for a camera image.
    """
    data = array.array('B')
    data.frombytes(memoryview(np.ascontiguousarray(values)).cast('B'))
    return data


def numpy_to_image_msg(values, encoding, header=None) -> Image:
    """A sensor_msgs/Image holding ``values`` (H x W or H x W x C) with ``encoding``.

    ``values`` must already have the dtype and channel count of the encoding (see
    OUTPUT_ENCODINGS); the data is written little-endian (``is_bigendian`` = 0) as the
    machine's native order on every platform ROS 2 supports.
    """
    if encoding not in OUTPUT_ENCODINGS:
        raise ValueError(f'cannot write encoding {encoding!r}; supported: '
                         f'{", ".join(OUTPUT_ENCODINGS)}')
    dtype, channels = OUTPUT_ENCODINGS[encoding]
    values = np.asarray(values)
    if values.dtype != dtype:
        raise ValueError(f'{encoding} needs {np.dtype(dtype).name} data, got {values.dtype}')
    shape_channels = 1 if values.ndim == 2 else (values.shape[2] if values.ndim == 3 else -1)
    if shape_channels != channels:
        raise ValueError(f'{encoding} needs {channels} channel(s), got shape {values.shape}')
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(values.shape[0]), int(values.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels * np.dtype(dtype).itemsize
    msg.data = _as_byte_array(values.astype(np.dtype(dtype).newbyteorder('<'), copy=False))
    return msg


def image_msg_to_numpy(msg: Image):
    """The pixels of an Image of an OUTPUT_ENCODINGS encoding as H x W (x C) NumPy."""
    if msg.encoding not in OUTPUT_ENCODINGS:
        raise ValueError(f'cannot read encoding {msg.encoding!r}')
    dtype, channels = OUTPUT_ENCODINGS[msg.encoding]
    dtype = np.dtype(dtype).newbyteorder('>' if msg.is_bigendian else '<')
    rows = pixel_rows(msg.data, msg.width, msg.height, msg.step, channels * dtype.itemsize)
    values = np.ascontiguousarray(rows).view(dtype).astype(dtype.newbyteorder('='))
    if channels == 1:
        return values.reshape(msg.height, msg.width)
    return values.reshape(msg.height, msg.width, channels)


def rgb_to_image_msg(rgb, encoding='rgb8', header=None) -> Image:
    """An RGB uint8 image as a message of a camera encoding (for the demo camera and tests).

    Supports every input encoding, so that tests can produce each one from known pixels.
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width = rgb.shape[:2]
    if encoding in OUTPUT_ENCODINGS and encoding not in ('mono8', 'mono16'):
        conversions = {'rgb8': None, 'bgr8': cv2.COLOR_RGB2BGR, 'rgba8': cv2.COLOR_RGB2RGBA,
                       'bgra8': cv2.COLOR_RGB2BGRA}
        code = conversions.get(encoding)
        if code is None and encoding != 'rgb8':
            raise ValueError(f'cannot write camera encoding {encoding!r}')
        pixels = rgb if code is None else cv2.cvtColor(rgb, code)
        return numpy_to_image_msg(pixels, encoding, header)
    if encoding == 'mono8':
        return numpy_to_image_msg(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 'mono8', header)
    if encoding == 'mono16':
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
        return numpy_to_image_msg(grey, 'mono16', header)
    if encoding in UYVY_ENCODINGS + YUYV_ENCODINGS:
        if width % 2:
            raise ValueError(f'{encoding} needs an even width, got {width}')
        yuv = rgb_to_yuv601(rgb)
        packed = pack_yuv422(yuv, uyvy=encoding in UYVY_ENCODINGS)
        msg = Image()
        if header is not None:
            msg.header = header
        msg.height, msg.width, msg.encoding, msg.is_bigendian = height, width, encoding, 0
        msg.step = width * 2
        msg.data = _as_byte_array(packed)
        return msg
    raise ValueError(f'cannot write camera encoding {encoding!r}')


def rgb_to_yuv601(rgb):
    """RGB uint8 -> Y, U, V planes (H x W x 3 float) of BT.601 studio range."""
    rgb = rgb.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    return np.stack([y, u, v], axis=-1)


def pack_yuv422(yuv, uyvy):
    """Float Y, U, V planes -> packed 4:2:2 bytes (H x W x 2), chroma averaged per pair."""
    height, width = yuv.shape[:2]
    y = np.clip(np.rint(yuv[..., 0]), 0, 255).astype(np.uint8)
    u = np.clip(np.rint((yuv[:, 0::2, 1] + yuv[:, 1::2, 1]) / 2), 0, 255).astype(np.uint8)
    v = np.clip(np.rint((yuv[:, 0::2, 2] + yuv[:, 1::2, 2]) / 2), 0, 255).astype(np.uint8)
    packed = np.empty((height, width // 2, 4), np.uint8)
    if uyvy:
        packed[..., 0], packed[..., 1], packed[..., 2], packed[..., 3] = (
            u, y[:, 0::2], v, y[:, 1::2])
    else:
        packed[..., 0], packed[..., 1], packed[..., 2], packed[..., 3] = (
            y[:, 0::2], u, y[:, 1::2], v)
    return packed.reshape(height, width, 2)
