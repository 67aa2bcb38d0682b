"""Image messages in (decoding) and out (encoding) against known pixels, every encoding."""

import array
import logging
import os
from pathlib import Path
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from image_bombs import (bmp_rle_declaring, bombs, jpeg_declaring, png_chunk, png_declaring,
                         small_jpeg)
from mtdp_ros.ros import decoder_log, image_input
from mtdp_ros.ros.image_input import (ImageRejected, PNG_SIGNATURE, SUPPORTED_ENCODINGS,
                                      compressed_dimensions, compressed_msg_to_rgb,
                                      image_msg_to_rgb, raw_to_rgb)
from mtdp_ros.ros.image_output import (OUTPUT_ENCODINGS, image_msg_to_numpy,
                                       numpy_to_image_msg, rgb_to_image_msg)


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


@pytest.fixture
def decoder_not_reached(monkeypatch):
    """Fails the test if OpenCV's decoder is called."""
    calls = []
    monkeypatch.setattr(image_input.cv2, 'imdecode', lambda *args: calls.append(args))
    yield calls
    assert not calls, 'the decoder was reached'


@pytest.mark.parametrize('data, kind, words', [
    (jpeg_declaring(20000, 20000), 'too_large', '20000 x 20000 pixels exceeds the limit'),
    (jpeg_declaring(20000, 20000, b'\xff\xff\xff'), 'too_large', '20000 x 20000'),
    (jpeg_declaring(20000, 20000, b'junk\xff\x00more'), 'too_large', '20000 x 20000'),
    (png_declaring(20000, 20000), 'too_large', '20000 x 20000 pixels exceeds the limit'),
    (png_declaring(0, 10), 'empty', 'empty'),
    (jpeg_declaring(16, 0), 'empty', 'empty'),
    (bmp_rle_declaring(20000, 20000), 'format', 'format BMP'),
    (b'II*\x00' + bytes(20), 'format', 'format TIFF'),
    (b'RIFF\x10\x00\x00\x00WEBPVP8 ' + bytes(20), 'format', 'format WebP'),
    (b'GIF89a' + bytes(20), 'format', 'format GIF'),
    (b'P6\n20000 20000\n255\n', 'format', 'format PNM'),
    (b'this is no image at all', 'format', 'format unknown'),
    (b'\xff\xd8', 'format', 'format unknown'),
    (b'\xff\xd8\xff\xe0 this is not a jpeg', 'decode', 'ends before the frame header'),
    (small_jpeg()[:small_jpeg().find(b'\xff\xc0') + 6], 'decode', 'SOF) is truncated'),
    (small_jpeg()[:small_jpeg().find(b'\xff\xc0') + 3], 'decode', 'ends inside marker 0xc0'),
    (b'\xff\xd8\xff\xda\x00\x08' + bytes(20), 'decode', 'a scan (SOS) comes before'),
    (b'\xff\xd8\xff\xd9', 'decode', 'end of image (EOI) comes before'),
    (b'\xff\xd8\xff\xe0\x00\x01', 'decode', 'has length 1'),
    (png_declaring(20, 20)[:30], 'decode', 'ends inside the IHDR'),
    (PNG_SIGNATURE + png_chunk(b'tEXt', bytes(13)), 'decode', 'not a 13-byte IHDR'),
])
def test_hostile_headers_are_refused_before_decoding(decoder_not_reached, data, kind, words):
    with pytest.raises(ImageRejected) as caught:
        compressed_msg_to_rgb(compressed(data, 'jpeg'))
    assert caught.value.kind == kind
    assert words in str(caught.value)
    if kind == 'decode':
        # The node's log and its tests look for this phrase.
        assert 'could not be decoded' in str(caught.value)


def test_jpeg_scan_skips_junk_fill_bytes_and_standalone_markers_as_libjpeg_does():
    width, height = 48, 32
    ok, jpeg = cv2.imencode('.jpg', np.full((height, width, 3), 90, np.uint8))
    jpeg = jpeg.tobytes()
    sof = jpeg.find(b'\xff\xc0')
    for junk in (b'\x00', b'\xff\xff\xff', b'ab\xff\x00cd', b'\xff\xd0\xff\x01'):
        data = jpeg[:sof] + junk + jpeg[sof:]
        assert compressed_dimensions(np.frombuffer(data, np.uint8)) == (width, height)
        # libjpeg agrees: it decodes the same size (with a warning for extraneous bytes).
        assert compressed_msg_to_rgb(compressed(data, 'jpeg')).shape == (height, width, 3)


def test_rejected_and_tampered_frames_leave_the_decoder_working():
    rgb = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    ok, png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    for _, data in bombs():
        with pytest.raises(ImageRejected):
            compressed_msg_to_rgb(compressed(data, 'jpeg'))
    # A PNG whose IDAT is cut: libpng fails; the next good frame decodes exactly.
    with pytest.raises(ImageRejected, match='could not be decoded'):
        compressed_msg_to_rgb(compressed(png.tobytes()[:-40], 'png'))
    np.testing.assert_array_equal(compressed_msg_to_rgb(compressed(png, 'png')), rgb)


def test_decoder_warnings_are_counted_and_throttled(capfd, caplog):
    clock = [100.0]
    messages = decoder_log.DecoderMessages(period=10.0, clock=lambda: clock[0])
    corrupt = jpeg_declaring(16, 16, b'\x00')         # "1 extraneous bytes before marker"
    with caplog.at_level(logging.WARNING, logger='mtdp_ros.runtime.decoder'):
        for _ in range(5):
            image = messages.decode(np.frombuffer(corrupt, np.uint8))
            assert image.shape == (16, 16, 3)
        clock[0] += 11.0
        messages.decode(np.frombuffer(corrupt, np.uint8))
    assert messages.counts['Corrupt JPEG data'] == 6
    logged = [r.getMessage() for r in caplog.records if 'Corrupt JPEG data' in r.getMessage()]
    assert len(logged) == 2, logged
    assert '(4 similar suppressed)' in logged[1]
    # Nothing of libjpeg's reached the process's stderr.
    assert 'Corrupt JPEG' not in capfd.readouterr().err


def test_other_output_on_stderr_during_a_decode_is_passed_on(capfd):
    messages = decoder_log.DecoderMessages()
    passed = []
    messages._sort(b'Corrupt JPEG data: 2 extraneous bytes before marker 0xd9\n'
                   b'another thread said this\n', passed)
    assert passed == ['another thread said this']
    messages._report(b'libpng warning: iCCP: known incorrect sRGB profile\nhello\n')
    assert capfd.readouterr().err == 'hello\n'
    assert messages.counts == {'Corrupt JPEG data': 1, 'libpng warning': 1}


def test_bombs_do_not_raise_peak_memory():
    # In a fresh process: peak RSS after the hostile messages minus peak after imports.
    # Decoding them (before the header checks) added 2.3 GB for these seven.
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[1])]!r}
        import test_ros_image_io as t
        from mtdp_ros.ros.image_input import ImageRejected, compressed_msg_to_rgb
        payloads = [data for _, data in t.bombs()]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kinds = []
        for data in payloads:
            try:
                compressed_msg_to_rgb(t.compressed(data, 'jpeg'))
            except ImageRejected as exc:
                kinds.append(exc.kind)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(len(kinds), (after - before) // 1024)
    """)
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0, done.stderr
    rejected, growth_mb = (int(v) for v in done.stdout.split())
    assert rejected == len(bombs())
    assert growth_mb < 20, f'peak RSS grew by {growth_mb} MB'


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
