"""Camera images in: sensor_msgs/Image and CompressedImage -> uint8 RGB (the one decoder).

cv_bridge exists only in ROS installations (its PyPI namesake is a broken ROS 1 port), so
the encodings a camera commonly sends are converted here, tested against known pixels;
other encodings go to cv_bridge where it is importable.

Camera images of the encodings below become the engine's input (uint8 H x W x 3 RGB), for
the node, ``mtdp bag`` and the bag readers of training alike. Every check a malformed frame
can fail raises :class:`ImageRejected`, whose ``kind`` names the problem so that the node
can count and throttle warnings per kind. Messages are read by their fields only (no ROS
import here), so rclpy messages and rosbags' deserialized ones both work. Outputs are
encoded in :mod:`mtdp_ros.ros.image_output`; the decoders' stderr is captured by
:mod:`mtdp_ros.ros.decoder_log`.

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

import cv2
import numpy as np

from mtdp_ros.ros.decode_work import decode_work_problem
from mtdp_ros.ros.decoder_log import DECODER_MESSAGES

# Bytes per pixel of each supported input encoding.
BYTES_PER_PIXEL = {
    'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1, 'mono16': 2,
    'yuv422': 2, 'uyvy': 2, 'yuv422_yuy2': 2, 'yuyv': 2,
}
SUPPORTED_ENCODINGS = tuple(BYTES_PER_PIXEL)
UYVY_ENCODINGS = ('yuv422', 'uyvy')
YUYV_ENCODINGS = ('yuv422_yuy2', 'yuyv')
# 12 megapixels (4096 x 3072, the largest common machine-vision format; 4K UHD fits). The
# limit bounds one frame's memory: conversion, the engine's post-processing back to full
# size, the output and colour messages peak at about 39 MiB per megapixel above the model's
# own memory (scripts/bench_input_memory.py: 494 MiB at this size, 324 MiB for 4K UHD), and
# a compressed frame's decode buffer at 3 bytes per pixel.
DEFAULT_MAX_PIXELS = 4096 * 3072


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


def pixel_rows(data, width, height, step, bytes_per_pixel):
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
    rows = pixel_rows(data, width, height, step, bytes_per_pixel)
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


def image_msg_to_rgb(msg, max_pixels=DEFAULT_MAX_PIXELS):
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


def compressed_msg_to_rgb(msg, max_pixels=DEFAULT_MAX_PIXELS):
    """A sensor_msgs/CompressedImage (JPEG or PNG) as uint8 H x W x 3 RGB.

    The format is read from the data's signature (a message's ``format`` is free text).
    The size the header declares (:func:`compressed_dimensions`) is checked against
    ``max_pixels`` before anything is decoded, so a small message declaring a huge picture
    allocates nothing. Formats whose header is not checked here (BMP, TIFF, WebP, ...) are
    refused, although OpenCV could decode them. The decoders' messages (libjpeg's "Corrupt
    JPEG data ...", libpng's) are kept off stderr: see :class:`DecoderMessages`.
    """
    if 'compresseddepth' in msg.format.lower().replace(' ', ''):
        raise ImageRejected('encoding', f'compressed depth images ({msg.format!r}) are not '
                                        f'camera images')
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    if buffer.size == 0:
        raise ImageRejected('empty', 'compressed image has no data')
    width, height = compressed_dimensions(buffer)
    check_size(width, height, max_pixels)
    _check_decode_work(buffer, max_pixels)
    image = DECODER_MESSAGES.decode(buffer)
    if image is None:
        raise ImageRejected('decode', f'compressed image ({msg.format or "no format"}, '
                                      f'{buffer.size} bytes) could not be decoded')
    if image.shape[:2] not in ((height, width), (width, height)):
        # libjpeg and libpng decode what their header declares (IMREAD_COLOR turns a JPEG
        # by its EXIF orientation, as image_transport's decoder does: hence the transpose);
        # guard against a decoder that does not, since the size check relied on the header.
        raise ImageRejected('decode', f'decoded {image.shape[1]} x {image.shape[0]} pixels '
                                      f'but the header declares {width} x {height}')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)


# Signatures of formats OpenCV can decode but this module refuses, for a clear message.
_OTHER_SIGNATURES = (
    (b'BM', 'BMP'), (b'II*\x00', 'TIFF'), (b'MM\x00*', 'TIFF'), (b'GIF8', 'GIF'),
    (b'\x00\x00\x00\x0cjP  ', 'JPEG 2000'), (b'\xff\x4f\xff\x51', 'JPEG 2000'),
    (b'\x76\x2f\x31\x01', 'OpenEXR'), (b'#?RADIANCE', 'Radiance HDR'), (b'#?RGBE', 'Radiance HDR'),
    (b'\x59\xa6\x6a\x95', 'Sun raster'), (b'PF', 'PFM'), (b'Pf', 'PFM'),
)
JPEG_SIGNATURE = b'\xff\xd8\xff'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# JPEG markers without a length field: TEM and RST0..RST7.
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])
# SOF0..SOF15 except DHT (0xC4), JPG (0xC8) and DAC (0xCC): the frame header.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _format_name(data):
    """The name of a non-JPEG, non-PNG format from its signature ('unknown' otherwise)."""
    if data[:4] == b'RIFF' and data[8:12] == b'WEBP':
        return 'WebP'
    if data[4:8] == b'ftyp' and data[8:12] in (b'avif', b'avis', b'heic', b'heix', b'mif1'):
        return 'AVIF/HEIF'
    if len(data) >= 2 and data[:1] == b'P' and data[1:2] in b'1234567':
        return 'PNM (PBM/PGM/PPM/PAM)'
    for signature, name in _OTHER_SIGNATURES:
        if data.startswith(signature):
            return name
    return 'unknown'


def _check_decode_work(buffer, max_pixels):
    """Raise ImageRejected (kind 'decode_work') for a bomb: see mtdp_ros/ros/decode_work.py."""
    problem = decode_work_problem(buffer, max_pixels)
    if problem:
        raise ImageRejected('decode_work', problem)


def compressed_dimensions(buffer):
    """(width, height) that a JPEG or PNG header declares, read without decoding.

    Raises :class:`ImageRejected`: kind ``'format'`` for anything but JPEG and PNG (naming
    the format when its signature is known), ``'decode'`` for a header that is truncated or
    malformed (the message says "could not be decoded" and why).
    """
    data = buffer.tobytes() if isinstance(buffer, np.ndarray) else bytes(buffer)
    if data.startswith(PNG_SIGNATURE):
        return _png_dimensions(data)
    if data.startswith(JPEG_SIGNATURE):
        return _jpeg_dimensions(data)
    name = _format_name(data)
    raise ImageRejected('format', f'compressed image format {name} (first bytes '
                                  f'{data[:8].hex(" ")}) is not accepted: only JPEG and PNG, '
                                  f'whose size is checked before decoding')


def _header_error(image_format, size, reason):
    return ImageRejected('decode', f'compressed image ({image_format}, {size} bytes) could not '
                                   f'be decoded: {reason}')


def _png_dimensions(data):
    # IHDR must be the first chunk: length 13, type, width, height (big-endian).
    if len(data) < 33:
        raise _header_error('png', len(data), 'the data ends inside the IHDR header')
    if data[8:16] != b'\x00\x00\x00\x0dIHDR':
        raise _header_error('png', len(data), 'the first chunk is not a 13-byte IHDR')
    return int.from_bytes(data[16:20], 'big'), int.from_bytes(data[20:24], 'big')


def _jpeg_dimensions(data):
    """Walk the marker segments to the first SOFn as libjpeg's read_markers does.

    libjpeg (jdmarker.c next_marker) skips any bytes that are not 0xFF before a marker
    (warning "extraneous bytes") and any number of 0xFF fill bytes; 0xFF 0x00 is a stuffed
    zero, not a marker. A scan (SOS) or the end (EOI) before the frame header means no
    image; so does running out of data.
    """
    position = 2                                  # after SOI
    size = len(data)
    while True:
        while position < size and data[position] != 0xFF:
            position += 1                         # extraneous bytes before a marker
        while position < size and data[position] == 0xFF:
            position += 1                         # the 0xFF and any fill bytes
        if position >= size:
            raise _header_error('jpeg', size, 'the data ends before the frame header (SOF)')
        marker = data[position]
        position += 1
        if marker == 0x00 or marker in _STANDALONE_MARKERS:
            continue
        if marker in (0xD8, 0xD9, 0xDA):
            name = {0xD8: 'a second start of image (SOI)', 0xD9: 'the end of image (EOI)',
                    0xDA: 'a scan (SOS)'}[marker]
            raise _header_error('jpeg', size, f'{name} comes before the frame header (SOF)')
        if position + 2 > size:
            raise _header_error('jpeg', size, f'the data ends inside marker 0x{marker:02x}')
        length = int.from_bytes(data[position:position + 2], 'big')
        if length < 2:
            raise _header_error('jpeg', size, f'marker 0x{marker:02x} has length {length}')
        if marker in _SOF_MARKERS:
            if length < 8 or position + 7 > size:
                raise _header_error('jpeg', size, 'the frame header (SOF) is truncated')
            height = int.from_bytes(data[position + 3:position + 5], 'big')
            width = int.from_bytes(data[position + 5:position + 7], 'big')
            return width, height
        position += length
