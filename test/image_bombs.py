"""Hostile compressed images: small messages declaring huge pictures or costly decoding.

Shared by test/test_ros_image_io.py and scripts/bench_input_memory.py.
"""

import struct
import zlib

import cv2
import numpy as np

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def png_chunk(kind, payload):
    """One PNG chunk: length, type, payload, CRC."""
    return (struct.pack('>I', len(payload)) + kind + payload +
            struct.pack('>I', zlib.crc32(kind + payload)))


def png_declaring(width, height, idat=b''):
    """A PNG whose IHDR (valid CRC) declares width x height RGB, with a tiny IDAT."""
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b'IHDR', ihdr) +
            png_chunk(b'IDAT', idat or zlib.compress(bytes(20001))) + png_chunk(b'IEND', b''))


def small_jpeg(height=16, width=16):
    ok, data = cv2.imencode('.jpg', np.full((height, width, 3), 90, np.uint8))
    assert ok
    return data.tobytes()


def jpeg_declaring(width, height, junk=b'\x00'):
    """A small valid JPEG whose SOF0 declares width x height, ``junk`` before the SOF."""
    data = bytearray(small_jpeg())
    sof = data.find(b'\xff\xc0')
    data[sof + 5:sof + 9] = struct.pack('>HH', height, width)
    return bytes(data[:sof]) + junk + bytes(data[sof:])


def bmp_rle_declaring(width, height):
    """A 1 kB 8-bit RLE BMP declaring width x height (OpenCV would allocate all of it)."""
    info = struct.pack('<IiiHHIIiiII', 40, width, height, 1, 8, 1, 16, 2835, 2835, 256, 0)
    return (b'BM' + struct.pack('<IHHI', 1110, 0, 0, 54 + 1024) + info + bytes(1024) +
            b'\x00\x01' * 8)


def progressive_scan_bomb(width, height, scans):
    """A progressive JPEG of a flat grey picture with ``scans`` extra empty scans.

    The last scan of libjpeg's progressive script (a luma AC refinement, a few bytes for a
    flat picture) is repeated before EOI: each copy makes libjpeg pass over every block
    again ("Inconsistent progression sequence" is only a warning). 4096 x 3072 with 20,000
    copies is the reported 33-55 s stall in about 600 kB.
    """
    ok, data = cv2.imencode('.jpg', np.full((height, width, 3), 128, np.uint8),
                            [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    data = data.tobytes()
    assert data.endswith(b'\xff\xd9')
    last_scan = data[data.rfind(b'\xff\xda'):-2]
    return data[:-2] + last_scan * scans + b'\xff\xd9'


def png16_zero(width, height, channels=3):
    """An all-zero 16-bit PNG (inflates about 1000:1: 73 kB for 4096 x 3072 RGB)."""
    ok, data = cv2.imencode('.png', np.zeros((height, width, channels), np.uint16),
                            [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return data.tobytes()


def bombs():
    """(name, data) of hostile messages each declaring (or hiding) a 20000 x 20000 image."""
    return [
        ('jpeg, junk byte before SOF', jpeg_declaring(20000, 20000)),
        ('jpeg, fill bytes and junk before SOF', jpeg_declaring(20000, 20000,
                                                                b'\xff\xff\x17\x00\xff')),
        ('rle bmp', bmp_rle_declaring(20000, 20000)),
        ('png', png_declaring(20000, 20000)),
        ('jpeg header only', jpeg_declaring(20000, 20000)[:200]),
        ('tiff', b'II*\x00' + struct.pack('<I', 8) + bytes(200)),
        ('webp', b'RIFF' + struct.pack('<I', 200) + b'WEBPVP8 ' + bytes(200)),
    ]
