"""sensor_msgs/Image and CompressedImage <-> NumPy (cv_bridge only as a fallback).

cv_bridge exists only in ROS installations (its PyPI namesake is a broken ROS 1 port), so
the encodings a camera commonly sends are converted here, tested against known pixels;
other encodings go to cv_bridge where it is importable.

Camera images of the encodings below become the engine's input (uint8 H x W x 3 RGB); the
node's outputs become ``sensor_msgs/Image`` messages. Every check a malformed frame can
fail raises :class:`ImageRejected`, whose ``kind`` names the problem so that the node can
count and throttle warnings per kind.

Input encodings (names of ``sensor_msgs/image_encodings``):

- ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` (alpha dropped), ``mono8`` (grey replicated);
- ``mono16``: grey scaled linearly from the full 16-bit range (``v * 255 / 65535``, rounded),
  honouring ``is_bigendian``;
- 4:2:2 YUV, BT.601 studio range (as OpenCV and most UVC cameras): ``yuv422`` and ``uyvy``
  are U Y0 V Y1 byte order, ``yuv422_yuy2`` and ``yuyv`` are Y0 U Y1 V; the width must be
  even.

Rows may be padded (``step`` larger than ``width * bytes per pixel``), but the data must be
exactly ``step * height`` bytes.
"""

import array

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

# Bytes per pixel of each supported input encoding.
BYTES_PER_PIXEL = {
    'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1, 'mono16': 2,
    'yuv422': 2, 'uyvy': 2, 'yuv422_yuy2': 2, 'yuyv': 2,
}
SUPPORTED_ENCODINGS = tuple(BYTES_PER_PIXEL)
UYVY_ENCODINGS = ('yuv422', 'uyvy')
YUYV_ENCODINGS = ('yuv422_yuy2', 'yuyv')
# 8K UHD: anything larger is a corrupt header rather than a camera.
DEFAULT_MAX_PIXELS = 7680 * 4320

# Output encodings -> (numpy dtype, channels).
OUTPUT_ENCODINGS = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4),
    'bgra8': (np.uint8, 4), 'mono8': (np.uint8, 1), 'mono16': (np.uint16, 1),
    '32FC1': (np.float32, 1), '32FC3': (np.float32, 3),
}


class ImageRejected(ValueError):
    """A frame that cannot be used; ``kind`` is a short category for counting/throttling."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def check_size(width, height, max_pixels=DEFAULT_MAX_PIXELS):
    """Raise ImageRejected for an empty or absurdly large image."""
    if width <= 0 or height <= 0:
        raise ImageRejected('empty', f'image is empty: {width} x {height} pixels')
    if width * height > max_pixels:
        raise ImageRejected('too_large', f'image of {width} x {height} pixels exceeds the limit '
                                         f'of {max_pixels} pixels (input.max_pixels)')


def _pixel_rows(data, width, height, step, bytes_per_pixel):
    """The data as a height x (width * bytes_per_pixel) uint8 view, row padding removed."""
    row_bytes = width * bytes_per_pixel
    if step < row_bytes:
        raise ImageRejected('step', f'step {step} is smaller than width {width} x '
                                    f'{bytes_per_pixel} bytes per pixel = {row_bytes}')
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size != step * height:
        raise ImageRejected('size', f'data holds {buffer.size} bytes but step {step} x height '
                                    f'{height} = {step * height} are required')
    return buffer.reshape(height, step)[:, :row_bytes]


def raw_to_rgb(encoding, width, height, step, data, is_bigendian=False,
               max_pixels=DEFAULT_MAX_PIXELS):
    """Decode raw image bytes into a C-contiguous uint8 H x W x 3 RGB array.

    Raises :class:`ImageRejected` (a ValueError) naming the problem.
    """
    if encoding not in BYTES_PER_PIXEL:
        raise ImageRejected('encoding', f'unsupported encoding {encoding!r}; supported: '
                                        f'{", ".join(SUPPORTED_ENCODINGS)}')
    width, height, step = int(width), int(height), int(step)
    check_size(width, height, max_pixels)
    bytes_per_pixel = BYTES_PER_PIXEL[encoding]
    rows = _pixel_rows(data, width, height, step, bytes_per_pixel)
    if encoding == 'rgb8':
        return np.ascontiguousarray(rows.reshape(height, width, 3))
    if encoding == 'bgr8':
        return cv2.cvtColor(rows.reshape(height, width, 3), cv2.COLOR_BGR2RGB)
    if encoding == 'rgba8':
        return cv2.cvtColor(rows.reshape(height, width, 4), cv2.COLOR_RGBA2RGB)
    if encoding == 'bgra8':
        return cv2.cvtColor(rows.reshape(height, width, 4), cv2.COLOR_BGRA2RGB)
    if encoding == 'mono8':
        return cv2.cvtColor(np.ascontiguousarray(rows), cv2.COLOR_GRAY2RGB)
    if encoding == 'mono16':
        grey16 = rows.view('>u2' if is_bigendian else '<u2').astype(np.float32)
        # 65535 / 255 = 257 exactly: full scale maps to 255, rounding half up.
        grey8 = np.floor(grey16 * (1.0 / 257.0) + 0.5).astype(np.uint8)
        return cv2.cvtColor(grey8, cv2.COLOR_GRAY2RGB)
    # 4:2:2 YUV: one U and one V per pair of pixels.
    if width % 2:
        raise ImageRejected('odd_width', f'{encoding} needs an even width, got {width}')
    packed = np.ascontiguousarray(rows).reshape(height, width, 2)
    code = cv2.COLOR_YUV2RGB_UYVY if encoding in UYVY_ENCODINGS else cv2.COLOR_YUV2RGB_YUYV
    return cv2.cvtColor(packed, code)


def image_msg_to_rgb(msg: Image, max_pixels=DEFAULT_MAX_PIXELS):
    """A sensor_msgs/Image as uint8 H x W x 3 RGB (see the module docstring).

    Encodings this module does not know (Bayer patterns, 16-bit colour...) go to cv_bridge
    where it is installed (a ROS 2 installation); without it they are rejected.
    """
    try:
        return raw_to_rgb(msg.encoding, msg.width, msg.height, msg.step, msg.data,
                          bool(msg.is_bigendian), max_pixels)
    except ImageRejected as exc:
        if exc.kind != 'encoding' or _cv_bridge() is None:
            raise
        check_size(int(msg.width), int(msg.height), max_pixels)
        try:
            return np.ascontiguousarray(_cv_bridge().imgmsg_to_cv2(msg, 'rgb8'))
        except Exception as bridge_error:  # noqa: B902 - cv_bridge raises several types
            raise ImageRejected('encoding', f'{exc}; cv_bridge could not convert it either: '
                                            f'{bridge_error}') from None


_BRIDGE = []


def _cv_bridge():
    """A shared cv_bridge.CvBridge, or None where cv_bridge is not importable."""
    if not _BRIDGE:
        try:
            from cv_bridge import CvBridge
            _BRIDGE.append(CvBridge())
        except Exception:  # noqa: B902 - missing, or the broken PyPI port
            _BRIDGE.append(None)
    return _BRIDGE[0]


def compressed_msg_to_rgb(msg: CompressedImage, max_pixels=DEFAULT_MAX_PIXELS):
    """A sensor_msgs/CompressedImage (JPEG, PNG, ... as OpenCV reads) as uint8 RGB."""
    if 'compresseddepth' in msg.format.lower().replace(' ', ''):
        raise ImageRejected('encoding', f'compressed depth images ({msg.format!r}) are not '
                                        f'camera images')
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    if buffer.size == 0:
        raise ImageRejected('empty', 'compressed image has no data')
    # Refuse a huge image from its header, before decoding allocates it.
    declared = compressed_dimensions(buffer)
    if declared is not None:
        check_size(declared[0], declared[1], max_pixels)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageRejected('decode', f'compressed image ({msg.format or "no format"}, '
                                      f'{buffer.size} bytes) could not be decoded')
    check_size(image.shape[1], image.shape[0], max_pixels)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def compressed_dimensions(buffer):
    """(width, height) declared in a PNG or JPEG header, or None for other/unreadable data."""
    data = buffer.tobytes() if isinstance(buffer, np.ndarray) else bytes(buffer)
    if data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) >= 24 and data[12:16] == b'IHDR':
        return int.from_bytes(data[16:20], 'big'), int.from_bytes(data[20:24], 'big')
    if data[:2] != b'\xff\xd8':
        return None
    # JPEG: walk the marker segments up to the first start-of-frame (SOF0..SOF15 except
    # DHT 0xC4, JPG 0xC8 and DAC 0xCC), whose payload holds the height and width.
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:          # fill byte
            position += 1
            continue
        length = int.from_bytes(data[position + 2:position + 4], 'big')
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if position + 9 > len(data):
                return None
            height = int.from_bytes(data[position + 5:position + 7], 'big')
            width = int.from_bytes(data[position + 7:position + 9], 'big')
            return width, height
        position += 2 + length
    return None


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
    rows = _pixel_rows(msg.data, msg.width, msg.height, msg.step, channels * dtype.itemsize)
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
