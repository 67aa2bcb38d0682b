"""Image message conversions against known pixels, for every supported encoding."""

import array

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from mtdp_ros.ros.conversions import (ImageRejected, OUTPUT_ENCODINGS, SUPPORTED_ENCODINGS,
                                      compressed_msg_to_rgb, image_msg_to_numpy,
                                      image_msg_to_rgb, numpy_to_image_msg, raw_to_rgb,
                                      rgb_to_image_msg)


def make_msg(encoding, width, height, data, step=None, bigendian=False):
    msg = Image()
    msg.encoding, msg.width, msg.height = encoding, width, height
    msg.step = step if step is not None else len(data) // max(height, 1)
    msg.is_bigendian = int(bigendian)
    msg.data = array.array('B', bytes(data))
    return msg


# Two pixels: (10, 20, 30) and (200, 150, 100), in each 8-bit colour encoding's byte order.
COLOUR_CASES = {
    'rgb8': [10, 20, 30, 200, 150, 100],
    'bgr8': [30, 20, 10, 100, 150, 200],
    'rgba8': [10, 20, 30, 255, 200, 150, 100, 0],
    'bgra8': [30, 20, 10, 7, 100, 150, 200, 255],
}


@pytest.mark.parametrize('encoding', sorted(COLOUR_CASES))
def test_colour_encodings_known_pixels(encoding):
    rgb = image_msg_to_rgb(make_msg(encoding, 2, 1, COLOUR_CASES[encoding]))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 2, 3)
    assert rgb.flags['C_CONTIGUOUS']
    np.testing.assert_array_equal(rgb[0], [[10, 20, 30], [200, 150, 100]])


def test_mono8_replicates_grey():
    rgb = image_msg_to_rgb(make_msg('mono8', 3, 1, [0, 7, 255]))
    np.testing.assert_array_equal(rgb[0], [[0, 0, 0], [7, 7, 7], [255, 255, 255]])


@pytest.mark.parametrize('bigendian', [False, True])
def test_mono16_scales_full_range_with_byte_order(bigendian):
    values = np.array([0, 128, 129, 4660, 32896, 65535], dtype='>u2' if bigendian else '<u2')
    rgb = image_msg_to_rgb(make_msg('mono16', 6, 1, values.tobytes(), bigendian=bigendian))
    # v * 255 / 65535 rounded: 128 -> 0.498 -> 0, 129 -> 0.502 -> 1, 4660 -> 18.1 -> 18,
    # 32896 -> 128 exactly.
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 0, 1, 18, 128, 255])
    np.testing.assert_array_equal(rgb[0, :, 0], rgb[0, :, 2])


def bt601_rgb(y, u, v):
    """Reference BT.601 studio-range YUV -> RGB (the ITU formula, in floating point)."""
    c, d, e = y - 16.0, u - 128.0, v - 128.0
    r = 1.164383 * c + 1.596027 * e
    g = 1.164383 * c - 0.391762 * d - 0.812968 * e
    b = 1.164383 * c + 2.017232 * d
    return np.clip(np.rint([r, g, b]), 0, 255)


# (Y, U, V) of black, white, red, green, blue, a mid grey and an arbitrary colour.
YUV_SAMPLES = [(16, 128, 128), (235, 128, 128), (81, 90, 240), (145, 54, 34),
               (41, 240, 110), (126, 128, 128), (100, 160, 90)]


@pytest.mark.parametrize('encoding', ['yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv'])
def test_yuv422_known_pixels(encoding):
    uyvy = encoding in ('yuv422', 'uyvy')
    data = []
    for y, u, v in YUV_SAMPLES:
        # A pair of pixels sharing chroma: the second one 20 levels brighter.
        y2 = y + 20
        data += [u, y, v, y2] if uyvy else [y, u, y2, v]
    width = 2 * len(YUV_SAMPLES)
    rgb = image_msg_to_rgb(make_msg(encoding, width, 1, data))
    assert rgb.shape == (1, width, 3)
    for index, (y, u, v) in enumerate(YUV_SAMPLES):
        for offset, luma in enumerate((y, y + 20)):
            expected = bt601_rgb(luma, u, v)
            got = rgb[0, 2 * index + offset].astype(int)
            # OpenCV's fixed-point coefficients round differently by at most one level.
            assert np.abs(got - expected).max() <= 1, (encoding, (luma, u, v), got, expected)
    # Exact anchors: studio black and white.
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(image_msg_to_rgb(make_msg(
        encoding, 2, 1, [128, 235, 128, 235] if uyvy else [235, 128, 235, 128]))[0],
        [[255, 255, 255], [255, 255, 255]])


def test_yuv_byte_orders_differ():
    # The same bytes read as UYVY and YUYV must give different pictures.
    data = [16, 235, 128, 235]
    assert not np.array_equal(image_msg_to_rgb(make_msg('uyvy', 2, 1, data)),
                              image_msg_to_rgb(make_msg('yuyv', 2, 1, data)))


def test_row_padding_is_skipped():
    # Two rows of two rgb8 pixels, each row padded to 8 bytes with junk.
    data = [1, 2, 3, 4, 5, 6, 99, 99, 7, 8, 9, 10, 11, 12, 99, 99]
    rgb = image_msg_to_rgb(make_msg('rgb8', 2, 2, data, step=8))
    np.testing.assert_array_equal(rgb.reshape(-1), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])


@pytest.mark.parametrize('encoding', SUPPORTED_ENCODINGS)
def test_every_encoding_round_trips_a_picture(encoding):
    rng = np.random.default_rng(3)
    # Pairs of equal pixels so 4:2:2 chroma subsampling loses nothing.
    pairs = rng.integers(0, 256, size=(6, 4, 3), dtype=np.uint8)
    rgb = np.repeat(pairs, 2, axis=1)
    if encoding in ('mono8', 'mono16'):
        rgb = np.repeat(rgb[..., :1], 3, axis=2)
    back = image_msg_to_rgb(rgb_to_image_msg(rgb, encoding))
    assert back.shape == rgb.shape
    tolerance = 3 if encoding in ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv') else 0
    assert np.abs(back.astype(int) - rgb).max() <= tolerance


@pytest.mark.parametrize('encoding, width, height, step, size, kind, words', [
    ('bayer_rggb8', 2, 2, 2, 4, 'encoding', 'unsupported encoding'),
    ('8UC3', 2, 2, 6, 12, 'encoding', 'unsupported encoding'),
    ('rgb8', 2, 2, 6, 11, 'size', 'data holds 11 bytes'),
    ('rgb8', 2, 2, 6, 13, 'size', 'data holds 13 bytes'),
    ('rgb8', 2, 2, 5, 10, 'step', 'step 5 is smaller'),
    ('rgb8', 0, 2, 0, 0, 'empty', 'empty'),
    ('mono8', 2, 0, 2, 0, 'empty', 'empty'),
    ('rgb8', 100000, 100000, 300000, 0, 'too_large', 'exceeds the limit'),
    ('yuyv', 3, 1, 6, 6, 'odd_width', 'even width'),
])
def test_malformed_frames_are_rejected_with_reason(encoding, width, height, step, size, kind,
                                                   words):
    with pytest.raises(ImageRejected) as caught:
        image_msg_to_rgb(make_msg(encoding, width, height, bytes(size), step=step))
    assert caught.value.kind == kind
    assert words in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_max_pixels_is_configurable():
    with pytest.raises(ImageRejected, match='exceeds the limit of 5 pixels'):
        raw_to_rgb('mono8', 3, 2, 3, bytes(6), max_pixels=5)
    assert raw_to_rgb('mono8', 3, 2, 3, bytes(6), max_pixels=6).shape == (2, 3, 3)


def compressed(data, fmt):
    msg = CompressedImage()
    msg.format = fmt
    msg.data = array.array('B', bytes(data))
    return msg


def test_png_decodes_exactly_and_jpeg_closely():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    ok, png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    np.testing.assert_array_equal(compressed_msg_to_rgb(compressed(png, 'png')), rgb)
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0] = 200     # a flat red picture survives JPEG almost unchanged
    ok, jpeg = cv2.imencode('.jpg', cv2.cvtColor(smooth, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
    decoded = compressed_msg_to_rgb(compressed(jpeg, 'rgb8; jpeg compressed bgr8'))
    assert decoded.shape == (32, 48, 3)
    assert np.abs(decoded.astype(int) - smooth).max() <= 3


def test_corrupt_and_hostile_compressed_frames_are_rejected():
    with pytest.raises(ImageRejected) as caught:
        compressed_msg_to_rgb(compressed(b'\xff\xd8\xff\xe0 this is not a jpeg', 'jpeg'))
    assert caught.value.kind == 'decode'
    with pytest.raises(ImageRejected) as caught:
        compressed_msg_to_rgb(compressed(b'', 'jpeg'))
    assert caught.value.kind == 'empty'
    with pytest.raises(ImageRejected, match='compressed depth'):
        compressed_msg_to_rgb(compressed(b'1234', '16UC1; compressedDepth png'))
    # A PNG whose header claims 60000 x 60000 pixels: refused before decoding.
    ok, png = cv2.imencode('.png', np.zeros((2, 2, 3), np.uint8))
    forged = bytearray(png.tobytes())
    forged[16:24] = (60000).to_bytes(4, 'big') + (60000).to_bytes(4, 'big')
    with pytest.raises(ImageRejected) as caught:
        compressed_msg_to_rgb(compressed(forged, 'png'))
    assert caught.value.kind == 'too_large'


def test_jpeg_header_size_is_read_before_decoding():
    ok, jpeg = cv2.imencode('.jpg', np.zeros((30, 50, 3), np.uint8))
    with pytest.raises(ImageRejected, match='50 x 30 pixels exceeds the limit of 1000'):
        compressed_msg_to_rgb(compressed(jpeg, 'jpeg'), max_pixels=1000)


@pytest.mark.parametrize('encoding', sorted(OUTPUT_ENCODINGS))
def test_output_messages_hold_the_exact_values(encoding):
    dtype, channels = OUTPUT_ENCODINGS[encoding]
    rng = np.random.default_rng(1)
    shape = (5, 7) if channels == 1 else (5, 7, channels)
    if np.dtype(dtype).kind == 'f':
        values = rng.normal(size=shape).astype(dtype)
        values.flat[3] = np.nan
    else:
        values = rng.integers(0, np.iinfo(dtype).max, size=shape).astype(dtype)
    msg = numpy_to_image_msg(values, encoding)
    assert (msg.width, msg.height, msg.encoding, msg.is_bigendian) == (7, 5, encoding, 0)
    assert msg.step == 7 * channels * np.dtype(dtype).itemsize
    assert len(msg.data) == msg.step * 5
    # Independent read of the bytes (little-endian as declared).
    raw = np.frombuffer(bytes(msg.data), dtype=np.dtype(dtype).newbyteorder('<'))
    np.testing.assert_array_equal(raw.reshape(shape), values)
    np.testing.assert_array_equal(image_msg_to_numpy(msg), values)


def test_output_message_refuses_wrong_dtype_or_channels():
    with pytest.raises(ValueError, match='32FC1 needs float32'):
        numpy_to_image_msg(np.zeros((2, 2), np.float64), '32FC1')
    with pytest.raises(ValueError, match='3 channel'):
        numpy_to_image_msg(np.zeros((2, 2), np.uint8), 'rgb8')
    with pytest.raises(ValueError, match='cannot write encoding'):
        numpy_to_image_msg(np.zeros((2, 2), np.uint8), 'yuv422')
