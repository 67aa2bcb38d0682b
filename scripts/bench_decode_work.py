#!/usr/bin/env python3
"""Time of decoding compressed camera images of the pixel limit, normal and hostile.

Cases (4096 x 3072 pixels, ``input.max_pixels``'s default), each the median of
``--repeat`` runs through ``compressed_msg_to_rgb`` (header checks, work checks, decode):

- ``progressive``: a normal progressive JPEG (libjpeg's 10-scan script) of a noisy picture;
- ``baseline``: the same picture as a baseline JPEG;
- ``N extra scans``: the scan bomb of test/image_bombs.py with N empty scans; up to
  ``MAX_JPEG_SCANS`` they decode, beyond it they are refused before decoding. ``--raw``
  times ``cv2.imdecode`` alone for them (what the node paid before the scan check);
- ``png16``: the 73 kB all-zero 16-bit PNG (refused), and ``--raw`` its decode.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_decode_work.py --raw
"""

import argparse
import array
from pathlib import Path
import statistics
import sys
import time

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / 'test'), str(ROOT)]

from image_bombs import png16_zero, progressive_scan_bomb  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402

from mtdp_ros.ros.image_input import ImageRejected, compressed_msg_to_rgb  # noqa: E402
from mtdp_ros.ros.decode_work import MAX_JPEG_SCANS  # noqa: E402

WIDTH, HEIGHT = 4096, 3072


def median_s(function, repeat):
    """Median wall time of ``function()`` over ``repeat`` runs, and its last result."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def through_node_path(data):
    """What the node does with a compressed frame: 'decoded' or the rejection kind."""
    msg = CompressedImage()
    msg.format = 'jpeg'
    msg.data = array.array('B', data)
    try:
        compressed_msg_to_rgb(msg)
    except ImageRejected as exc:
        return f'refused ({exc.kind})'
    return 'decoded'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--raw', action='store_true',
                        help='also time cv2.imdecode alone on the hostile cases')
    args = parser.parse_args()
    noisy = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    noisy = cv2.GaussianBlur(noisy, (0, 0), 3)
    cases = [
        ('progressive', cv2.imencode('.jpg', noisy, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]),
        ('baseline', cv2.imencode('.jpg', noisy)[1]),
    ]
    for extra in (MAX_JPEG_SCANS - 10, MAX_JPEG_SCANS - 9, 200, 20000):
        cases.append((f'{extra} extra scans', progressive_scan_bomb(WIDTH, HEIGHT, extra)))
    cases.append(('png16', png16_zero(WIDTH, HEIGHT)))
    print(f'{"case":<20} {"bytes":>9} {"node path":<24} {"median s":>9} {"imdecode s":>10}')
    for name, data in cases:
        data = bytes(data)
        seconds, outcome = median_s(lambda: through_node_path(data), args.repeat)
        raw = ''
        hostile = 'scans' in name or name == 'png16'
        if args.raw and hostile and not name.startswith('20000'):
            buffer = np.frombuffer(data, np.uint8)
            raw = f'{median_s(lambda: cv2.imdecode(buffer, cv2.IMREAD_COLOR), 1)[0]:10.3f}'
        print(f'{name:<20} {len(data):>9} {outcome:<24} {seconds:9.3f} {raw:>10}', flush=True)


if __name__ == '__main__':
    main()
