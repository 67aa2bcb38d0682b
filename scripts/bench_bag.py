#!/usr/bin/env python3
"""Throughput of ``mtdp bag`` on a bag of rendered camera frames.

Renders ``--frames`` procedural indoor scenes (``mtdp_ros.training.synthetic``, the kind the
default models know) at a camera's size, records them as sensor_msgs/Image rgb8 with a
CameraInfo per frame into a rosbag2 bag (written by ``rosbags``), then runs
``mtdp bag`` on it for each backend and output storage asked for, and prints frames,
the command's frames per second (first frame to closed bag; the first frame's warm-up
included) and its wall seconds (engine creation, and a first ONNX export, included).

    OMP_NUM_THREADS=2 python3 scripts/bench_bag.py --frames 20 --backends torch,onnxruntime
"""

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def write_scene_bag(path, frames, height, width, storage):
    """A bag of ``frames`` rendered scenes on /camera/image_raw and /camera/camera_info."""
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import StoragePlugin
    from rosbags.typesys import Stores, get_typestore
    from mtdp_ros.training.synthetic import render_scene
    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        images = writer.add_connection('/camera/image_raw', 'sensor_msgs/msg/Image',
                                       typestore=store)
        infos = writer.add_connection('/camera/camera_info', 'sensor_msgs/msg/CameraInfo',
                                      typestore=store)
        for index in range(frames):
            scene = render_scene(1000 + index, height, width)
            # 30 frames per second of bag time.
            stamp_ns = 1_700_000_000_000_000_000 + index * 33_333_333
            header = types['std_msgs/msg/Header'](
                stamp=types['builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9,
                                                           nanosec=stamp_ns % 10**9),
                frame_id='camera_optical_frame')
            fx, fy, cx, cy = scene['intrinsics']
            info = types['sensor_msgs/msg/CameraInfo'](
                header=header, height=height, width=width, distortion_model='plumb_bob',
                d=np.zeros(5), k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1.0]),
                r=np.eye(3).reshape(-1), p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1.0, 0]),
                binning_x=0, binning_y=0,
                roi=types['sensor_msgs/msg/RegionOfInterest'](
                    x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
            image = types['sensor_msgs/msg/Image'](
                header=header, height=height, width=width, encoding='rgb8', is_bigendian=0,
                step=width * 3, data=np.ascontiguousarray(scene['image']).reshape(-1))
            writer.write(infos, stamp_ns, store.serialize_cdr(info, info.__msgtype__))
            writer.write(images, stamp_ns, store.serialize_cdr(image, image.__msgtype__))


def run_once(mtdp, in_path, work, model, backend, storage, repeat):
    """One ``mtdp bag`` run; its figures (None when it failed)."""
    out_path = os.path.join(work, f'out_{backend}_{storage}_{repeat}')
    started = time.perf_counter()
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = mtdp(['bag', in_path, '--out', out_path, '--image-topic', '/camera/image_raw',
                     '--camera-info-topic', '/camera/camera_info', '--storage', storage,
                     '--model', model, '--backend', backend, '--device', 'cpu',
                     '--no-progress'])
    seconds = time.perf_counter() - started
    sys.stderr.write(stderr.getvalue())
    if code:
        return None
    # The command's own rate: from the first frame to the closed bag (engine creation,
    # and for onnxruntime the first export into its cache, excluded).
    summary = re.search(r'in ([0-9.]+) s: ([0-9.]+) fps \(engine ([0-9]+) %', stderr.getvalue())
    size_mb = sum(os.path.getsize(os.path.join(out_path, f)) for f in os.listdir(out_path))
    shutil.rmtree(out_path)
    return {'backend': backend, 'output_storage': storage, 'repeat': repeat,
            'fps': float(summary.group(2)), 'engine_share_pct': int(summary.group(3)),
            'wall_s': round(seconds, 2), 'output_mb': round(size_mb / 1e6, 1)}


def main():
    """Render the bag, run ``mtdp bag`` per backend and storage, print a JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=20)
    parser.add_argument('--size', default='480x640', metavar='HxW')
    parser.add_argument('--model', default='default')
    parser.add_argument('--input-storage', choices=('mcap', 'sqlite3'), default='sqlite3')
    parser.add_argument('--backends', default='torch,onnxruntime')
    parser.add_argument('--storages', default='mcap')
    parser.add_argument('--repeats', type=int, default=1)
    args = parser.parse_args()
    from mtdp_ros.cli import main as mtdp
    height, width = (int(v) for v in args.size.lower().split('x'))
    with tempfile.TemporaryDirectory() as work:
        in_path = os.path.join(work, 'scenes')
        started = time.perf_counter()
        write_scene_bag(in_path, args.frames, height, width, args.input_storage)
        print(f'rendered {args.frames} frames of {height} x {width} into a '
              f'{args.input_storage} bag in {time.perf_counter() - started:.1f} s',
              file=sys.stderr)
        runs = {}
        for repeat in range(args.repeats):
            for backend in args.backends.split(','):
                for storage in args.storages.split(','):
                    result = run_once(mtdp, in_path, work, args.model, backend, storage,
                                      repeat)
                    if result is None:
                        return 1
                    result.update(input_storage=args.input_storage, frames=args.frames,
                                  size=[height, width],
                                  threads=os.environ.get('OMP_NUM_THREADS'))
                    print(json.dumps(result))
                    runs.setdefault((backend, storage), []).append(result)
        for (backend, storage), results in runs.items():
            print(json.dumps({'backend': backend, 'output_storage': storage,
                              'runs': len(results),
                              'median_fps': round(statistics.median(
                                  r['fps'] for r in results), 3),
                              'median_wall_s': round(statistics.median(
                                  r['wall_s'] for r in results), 2)}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
