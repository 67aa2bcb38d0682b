"""Decoding work is bounded before decoding: JPEG scan bombs and inflating PNGs."""

import array

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage

from image_bombs import png16_zero, progressive_scan_bomb, small_jpeg
from mtdp_ros.ros import image_input
from mtdp_ros.ros.image_input import DEFAULT_MAX_PIXELS, ImageRejected, compressed_msg_to_rgb
from mtdp_ros.ros.decode_work import (decode_work_problem, jpeg_scan_count, MAX_JPEG_SCANS,
                                      png_decoded_bytes)


def compressed(data, fmt='jpeg'):
    msg = CompressedImage()
    msg.format = fmt
    msg.data = array.array('B', bytes(data))
    return msg


@pytest.fixture
def decoder_not_reached(monkeypatch):
    """Fails the test if OpenCV's decoder is called."""
    calls = []
    monkeypatch.setattr(image_input.cv2, 'imdecode', lambda *args: calls.append(args))
    yield calls
    assert not calls, 'the decoder was reached'


def test_the_reported_scan_bomb_is_refused_before_decoding(decoder_not_reached):
    # 4096 x 3072 (within the pixel limit) with 20,000 empty scans: about a minute of
    # libjpeg's time before the scan count was checked.
    bomb = progressive_scan_bomb(4096, 3072, 20000)
    assert len(bomb) < 700_000
    with pytest.raises(ImageRejected) as caught:
        compressed_msg_to_rgb(compressed(bomb), DEFAULT_MAX_PIXELS)
    assert caught.value.kind == 'decode_work'
    assert f'more than {MAX_JPEG_SCANS} scans' in str(caught.value)


def test_scan_counts_of_what_encoders_write():
    grey = np.full((40, 56), 90, np.uint8)
    colour = np.full((40, 56, 3), 90, np.uint8)
    progressive = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    assert jpeg_scan_count(cv2.imencode('.jpg', colour)[1]) == 1
    assert jpeg_scan_count(cv2.imencode('.jpg', colour, progressive)[1]) == 10
    assert jpeg_scan_count(cv2.imencode('.jpg', grey, progressive)[1]) == 6
    # Entropy-coded data full of 0xFF 0x00 stuffing and restart markers is skipped whole.
    noisy = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    restarts = [cv2.IMWRITE_JPEG_RST_INTERVAL, 2, *progressive]
    assert jpeg_scan_count(cv2.imencode('.jpg', noisy, restarts)[1]) == 10


def test_an_sos_inside_a_marker_segment_is_not_a_scan():
    # An APP1 segment (EXIF) may carry a thumbnail JPEG with its own SOS: not counted.
    thumbnail = small_jpeg()
    app1 = b'\xff\xe1' + (len(thumbnail) + 8).to_bytes(2, 'big') + b'Exif\x00\x00' + thumbnail
    jpeg = small_jpeg()
    assert jpeg_scan_count(jpeg[:2] + app1 * 40 + jpeg[2:]) == 1


def test_scans_up_to_the_limit_decode_and_one_more_is_refused():
    at_limit = progressive_scan_bomb(64, 48, MAX_JPEG_SCANS - 10)
    assert jpeg_scan_count(at_limit) == MAX_JPEG_SCANS
    assert decode_work_problem(at_limit, DEFAULT_MAX_PIXELS) is None
    assert compressed_msg_to_rgb(compressed(at_limit)).shape == (48, 64, 3)
    over = progressive_scan_bomb(64, 48, MAX_JPEG_SCANS - 9)
    with pytest.raises(ImageRejected, match='scans') as caught:
        compressed_msg_to_rgb(compressed(over))
    assert caught.value.kind == 'decode_work'


def test_an_inflating_16_bit_png_is_refused_before_decoding(decoder_not_reached):
    bomb = png16_zero(4096, 3072)                    # 73 kB, 75 MB of rows
    assert len(bomb) < 80_000
    assert png_decoded_bytes(bomb) == 4096 * 3072 * 6
    with pytest.raises(ImageRejected) as caught:
        compressed_msg_to_rgb(compressed(bomb, 'png'), DEFAULT_MAX_PIXELS)
    assert caught.value.kind == 'decode_work'
    assert 'PNG rows hold 75497472 bytes' in str(caught.value)


def test_pngs_within_the_budget_decode():
    # Every 8-bit PNG at the pixel limit, and a 16-bit RGB one at two thirds of it.
    limit = 4096 * 3072
    rgba8 = cv2.imencode('.png', np.zeros((16, 16, 4), np.uint8))[1].tobytes()
    assert png_decoded_bytes(rgba8) == 16 * 16 * 4
    assert decode_work_problem(rgba8, 16 * 16) is None
    assert decode_work_problem(png16_zero(2048, 4096), limit) is None
    small16 = png16_zero(24, 16)
    assert compressed_msg_to_rgb(compressed(small16, 'png')).shape == (16, 24, 3)
    assert decode_work_problem(small16, 24 * 16 * 6 // 4 - 1) is not None
