#!/usr/bin/env python3
"""Peak memory of hostile compressed images and of one camera frame through the node's path.

Each case runs in a fresh subprocess and reports the growth of its peak RSS
(``resource.getrusage().ru_maxrss``) over the peak reached before the case, so that imports,
the model and the network's own activations (warmed up on a small image) are not counted:

- ``bombs``: the seven hostile messages of test/image_bombs.py through
  ``compressed_msg_to_rgb`` (each declares or hides a 20000 x 20000 picture);
- ``frame``: one rgb8 ``sensor_msgs/Image`` of ``--size`` through what the node does with
  it: conversion, the engine (letterbox, network, post-processing back to the camera size),
  a raw and a colour output message per task, as perception_node.py builds them.

- ``--burst N``: the resident memory of the node's stream (decode, engine, every output
  message) after N frames of ``--size``, once frames of ``--small`` come again (memory
  sized for a rare large frame should be returned).

Run from the repository root (``PYTHONPATH`` may point at another checkout to measure it)::

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_input_memory.py --size 2160x3840
"""

import argparse
import json
import os
from pathlib import Path
import resource
import subprocess
import sys

HERE = Path(__file__).resolve().parent


def peak_mb():
    """Peak resident set size of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def resident_mb():
    """Current resident set size of this process, MiB."""
    with open('/proc/self/statm') as statm:
        return int(statm.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def run_bombs():
    """Peak growth while the hostile messages go through compressed_msg_to_rgb."""
    sys.path.insert(0, str(HERE.parent / 'test'))
    import array
    from image_bombs import bombs
    from sensor_msgs.msg import CompressedImage
    from mtdp_ros.ros.image_input import ImageRejected, compressed_msg_to_rgb
    messages = []
    for _, data in bombs():
        msg = CompressedImage()
        msg.format = 'jpeg'
        msg.data = array.array('B', data)
        messages.append(msg)
    before, outcomes = peak_mb(), []
    for msg in messages:
        try:
            image = compressed_msg_to_rgb(msg)
            outcomes.append(f'decoded {image.shape}')
            del image
        except ImageRejected as exc:
            outcomes.append(f'rejected ({exc.kind})')
    return {'case': 'bombs', 'messages': len(messages), 'outcomes': outcomes,
            'peak_growth_mb': round(peak_mb() - before, 1)}


def run_frame(height, width, model):
    """Peak and resident growth of one frame of height x width through the node's path."""
    import numpy as np
    from mtdp_ros.ros import colormaps
    from mtdp_ros.ros.image_input import image_msg_to_rgb
    from mtdp_ros.ros.image_output import numpy_to_image_msg, rgb_to_image_msg
    from mtdp_ros.runtime import create_engine
    engine = create_engine(model, device='cpu')
    engine.infer(np.zeros((48, 64, 3), np.uint8))        # the network's own peak, small image
    rng = np.random.default_rng(0)
    msg = rgb_to_image_msg(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), 'rgb8')
    before_peak, before_resident = peak_mb(), resident_mb()
    rgb = image_msg_to_rgb(msg, max_pixels=2 ** 31 - 1)
    outputs = engine.infer(rgb)
    for task, values in outputs.items():
        encoding = {np.dtype(np.uint8): 'mono8', np.dtype(np.uint16): 'mono16'}.get(
            values.dtype, '32FC3' if values.ndim == 3 else '32FC1')
        raw_msg = numpy_to_image_msg(values, encoding)
        if task in ('semseg', 'human_parts'):
            colored = colormaps.labels_to_color(values)
        elif task == 'depth':
            colored = colormaps.depth_to_color(values)
        elif task == 'normals':
            colored = colormaps.normals_to_color(values)
        else:
            colored = colormaps.probability_to_color(values)
        color_msg = numpy_to_image_msg(colored, 'rgb8')
        del raw_msg, colored, color_msg
    del rgb, outputs
    megapixels = height * width / 1e6
    growth = peak_mb() - before_peak
    return {'case': 'frame', 'size': f'{height}x{width}', 'model': model,
            'megapixels': round(megapixels, 2), 'peak_growth_mb': round(growth, 1),
            'peak_growth_mb_per_megapixel': round(growth / megapixels, 1),
            'resident_growth_mb': round(resident_mb() - before_resident, 1)}


def run_burst(big, small, count_big, count_small, model):
    """Resident memory after a burst of large frames, once frames are small again.

    The frames go through :class:`~mtdp_ros.ros.stream.CameraStream` (decode, engine, every
    output message of every task, the point cloud) in a thread of their own, as in the node
    (its inference thread: glibc gives such a thread its own malloc arena).
    """
    import threading
    import numpy as np
    sys.path.insert(0, str(HERE.parent / 'test'))
    from ros_harness import camera_info
    from mtdp_ros.ros.image_output import rgb_to_image_msg
    from mtdp_ros.ros.stream import CameraStream, FrameSettings
    from mtdp_ros.runtime import create_engine
    engine = create_engine(model, device='cpu')
    stream = CameraStream()
    settings = FrameSettings(tasks=tuple(engine.tasks), max_pixels=2 ** 31 - 1)
    rng = np.random.default_rng(0)
    figures = {}

    def frames(size, count):
        height, width = size
        stream.camera_info = camera_info(width, height)
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for _ in range(count):
            stream.process(engine, rgb_to_image_msg(rgb, 'rgb8'), settings)

    def run():
        frames(small, count_small)
        figures['before_mb'] = round(resident_mb(), 1)
        figures['before_peak_mb'] = round(peak_mb(), 1)
        frames(big, count_big)
        figures['after_big_mb'] = round(resident_mb(), 1)
        frames(small, count_small)
        figures['after_small_mb'] = round(resident_mb(), 1)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    return {'case': 'burst', 'model': model, 'big': '{}x{}'.format(*big),
            'count_big': count_big, 'small': '{}x{}'.format(*small),
            'count_small': count_small, 'peak_mb': round(peak_mb(), 1), **figures}


def main():
    """Run each case in a fresh subprocess and print one JSON line per case."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', action='append', default=None,
                        help='HxW of a raw frame (repeatable; default 2160x3840)')
    parser.add_argument('--model', default='default')
    parser.add_argument('--no-bombs', action='store_true', help='skip the hostile messages')
    parser.add_argument('--burst', type=int, default=0,
                        help='N: resident memory after N frames of the first --size (default '
                             '2160x3840) through the node\'s stream, then small ones again')
    parser.add_argument('--small', default='480x640', help='HxW of the small frames')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.burst:
        big = tuple(int(v) for v in (args.size or ['2160x3840'])[0].split('x'))
        small = tuple(int(v) for v in args.small.split('x'))
        print(json.dumps(run_burst(big, small, args.burst, 5, args.model)))
        return 0
    if args.child == 'bombs':
        print(json.dumps(run_bombs()))
        return 0
    if args.child:
        height, width = (int(v) for v in args.child.split('x'))
        print(json.dumps(run_frame(height, width, args.model)))
        return 0
    cases = ([] if args.no_bombs else ['bombs']) + (args.size or ['2160x3840'])
    for case in cases:
        done = subprocess.run([sys.executable, __file__, '--child', case, '--model',
                               args.model], capture_output=True, text=True)
        if done.returncode != 0:
            print(f'{case}: failed: {done.stderr.strip().splitlines()[-1:]}', file=sys.stderr)
            return 1
        print(done.stdout.strip().splitlines()[-1])
    return 0


if __name__ == '__main__':
    sys.exit(main())
