#!/usr/bin/env python3
"""Frames per second of ``mtdp bag`` over many bags: the one-machine loop against Ray.

Renders a bag of ``--frames`` procedural indoor scenes (as ``bench_bag.py``) and copies
it into ``--bags`` bags, then runs, each in a fresh process, for every repeat:

- ``loop-T`` for each T of ``--loop-threads``: ``mtdp bag BAGS --out OUT`` without Ray (one
  engine, bags one after another, PyTorch with T threads; default: all cores);
- ``ray-N`` for each N of ``--workers``: ``mtdp bag BAGS --out OUT --ray --workers N`` (a
  local Ray cluster of N CPUs started by the command, N engine actors of one thread each).

Prints a JSON line per run (frames, wall seconds of the whole command: interpreter, model
load and cluster start included, frames/s over that wall time, and the command's own
figure) and the medians per configuration.

    python3 scripts/bench_fleet.py --bags 4 --frames 8 --workers 1,2 --repeats 3
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'scripts'))


def run_once(bags, out, model, extra, threads):
    """One command; its figures (None when it failed)."""
    env = dict(os.environ)
    env.pop('OMP_NUM_THREADS', None)
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    command = [sys.executable, '-m', 'mtdp_ros.cli', 'bag', bags, '--out', out,
               '--image-topic', '/camera/image_raw', '--camera-info-topic',
               '/camera/camera_info', '--model', model, '--device', 'cpu', '--no-progress',
               *extra]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        return None
    summary = re.search(r'processed \(([0-9]+) frames in ([0-9.]+) s, ([0-9.]+) frames/s, '
                        r'engine ([0-9]+) %', result.stderr)
    shutil.rmtree(out)
    frames = int(summary.group(1))
    return {'frames': frames, 'wall_s': round(wall, 2),
            'fps_wall': round(frames / wall, 3), 'fps_command': float(summary.group(3)),
            'engine_share_pct': int(summary.group(4))}


def main():
    """Render the bags, run each configuration, print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bags', type=int, default=4)
    parser.add_argument('--frames', type=int, default=8, help='frames per bag')
    parser.add_argument('--size', default='480x640', metavar='HxW')
    parser.add_argument('--model', default='default')
    parser.add_argument('--workers', default='1,2',
                        help='Ray worker counts to measure (empty: none)')
    parser.add_argument('--loop-threads', default=str(os.cpu_count()),
                        help='thread counts of the loop without Ray (empty: none)')
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    from bench_bag import write_scene_bag
    height, width = (int(v) for v in args.size.lower().split('x'))
    threads = [int(v) for v in args.loop_threads.split(',') if v]
    configs = [(f'loop-{t}', [], t) for t in threads]
    configs += [(f'ray-{n}', ['--ray', '--workers', str(n)], None)
                for n in (int(v) for v in args.workers.split(',') if v)]
    with tempfile.TemporaryDirectory() as work:
        bags = os.path.join(work, 'bags')
        os.mkdir(bags)
        # Rendering is slow: one bag rendered, the others copies of it (same work each).
        write_scene_bag(os.path.join(bags, 'bag0'), args.frames, height, width, 'mcap')
        for index in range(1, args.bags):
            shutil.copytree(os.path.join(bags, 'bag0'), os.path.join(bags, f'bag{index}'))
        runs = {}
        for repeat in range(args.repeats):
            for name, extra, threads in configs:
                result = run_once(bags, os.path.join(work, 'out'), args.model, extra, threads)
                if result is None:
                    return 1
                result.update(config=name, repeat=repeat, bags=args.bags,
                              size=[height, width])
                print(json.dumps(result), flush=True)
                runs.setdefault(name, []).append(result)
        for name, results in runs.items():
            print(json.dumps({'config': name, 'runs': len(results),
                              'median_fps_wall': statistics.median(
                                  r['fps_wall'] for r in results),
                              'median_fps_command': statistics.median(
                                  r['fps_command'] for r in results),
                              'median_wall_s': statistics.median(
                                  r['wall_s'] for r in results)}), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
