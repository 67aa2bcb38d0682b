#!/usr/bin/env python3
"""Warm start on synthetic video: accuracy, flicker and time of cold and warm settings.

For each motion (static, slow, fast), ``--num`` sequences of ``--length`` frames are
rendered once at the model's input size (``mtdp_ros.training.synthetic_video``); every
setting then runs them frame by frame as the node would (``mtdp_ros.training.
evaluate_video.VideoRun``: the same noise draw every frame, warm/cold decided by
``WarmStartState``). The settings take each frame in turn (interleaved), so a change in
the machine's load hits all alike; ``ms_per_frame`` is the median wall time of the
network per frame.

Settings: ``cold:S`` (S steps from noise), ``warm:S:STRENGTH`` (S steps from the previous
frame's map at t = STRENGTH) and ``warm:S:STRENGTH:nocut`` (the same without the
scene-cut test); ``cold:S:newnoise`` draws new noise every frame (the engines use one
fixed draw, ``diffusion.seed``). Prints one JSON line per motion and setting, then a
markdown table with each setting against ``cold:3`` (relative change of abs_rel and mIoU,
flicker and time ratios).

    OMP_NUM_THREADS=1 python scripts/bench_warm_start.py --num 2 --length 10
"""

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_SETTINGS = ('cold:1,cold:2,cold:3,cold:5,warm:1:0.1,warm:1:0.03,warm:1:0.01,'
                    'warm:1:0.003,warm:2:0.03,warm:2:0.01,warm:1:0.01:nocut')
BASELINE = 'cold:3'


def parse_setting(text):
    """'cold:3[:newnoise]' / 'warm:1:0.01[:nocut]' -> dict of VideoRun settings."""
    parts = text.split(':')
    try:
        if parts[0] == 'cold' and len(parts) in (2, 3) and parts[2:] in ([], ['newnoise']):
            return dict(steps=int(parts[1]), warm_start=False, strength=1.0, cut=True,
                        new_noise=len(parts) == 3)
        if parts[0] == 'warm' and len(parts) in (3, 4) and parts[3:] in ([], ['nocut']):
            return dict(steps=int(parts[1]), warm_start=True, strength=float(parts[2]),
                        cut=len(parts) == 3, new_noise=False)
    except ValueError:
        pass
    raise ValueError(f'setting {text!r}: use cold:STEPS[:newnoise] or '
                     f'warm:STEPS:STRENGTH[:nocut]')


def summary_row(metrics, temporal):
    return {'abs_rel': metrics['depth']['abs_rel'], 'mIoU': metrics['semseg']['mIoU'],
            'depth_flicker': temporal['depth_flicker'],
            'semseg_flicker': temporal['semseg_flicker'],
            'normals_flicker': temporal.get('normals_flicker'),
            'edge_flicker': temporal.get('edge_flicker'),
            'ms_per_frame': temporal['ms_per_frame'], 'warm_frames': temporal['warm_frames'],
            'cold_frames': temporal['cold_frames'], 'pairs': temporal['pairs']}


def run_motion(model, motion, args, settings):
    from mtdp_ros.training.evaluate_video import frame_images, render_sequences, VideoRun
    sequences = render_sequences(model.config, args.num, args.seed, args.length, motion)
    runs = {}
    for name, setting in settings.items():
        threshold = args.cut_threshold if setting['cut'] else math.inf
        runs[name] = VideoRun(model, setting['steps'], setting['warm_start'],
                              setting['strength'], 'cpu', cut_threshold=threshold,
                              max_gap_s=args.max_gap, new_noise=setting['new_noise'])
    for frames in sequences:
        images = frame_images(frames)
        for index in range(frames['image'].shape[0]):
            order = list(runs)
            shift = index % len(order)
            for name in order[shift:] + order[:shift]:
                runs[name].frame(frames, index, images[index])
    return {name: summary_row(*run.score()) for name, run in runs.items()}


def table(results):
    lines = ['| motion | setting | depth abs_rel | mIoU | depth flicker | semseg flicker | '
             'ms/frame | abs_rel vs cold-3 | mIoU vs cold-3 | flicker vs cold-3 '
             '(depth / semseg) | time vs cold-3 | warm/cold frames |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for motion, rows in results.items():
        base = rows.get(BASELINE)
        for name, row in rows.items():
            rel = ['-'] * 4
            if base:
                rel = [f'{(row["abs_rel"] / base["abs_rel"] - 1) * 100:+.1f} %',
                       f'{(row["mIoU"] / base["mIoU"] - 1) * 100:+.1f} %',
                       f'{row["depth_flicker"] / base["depth_flicker"]:.2f} / '
                       f'{row["semseg_flicker"] / base["semseg_flicker"]:.2f}',
                       f'{row["ms_per_frame"] / base["ms_per_frame"]:.2f}']
            lines.append(f'| {motion} | {name} | {row["abs_rel"]:.4f} | {row["mIoU"]:.4f} | '
                         f'{row["depth_flicker"]:.4f} | {row["semseg_flicker"]:.4f} | '
                         f'{row["ms_per_frame"]:.0f} | ' + ' | '.join(rel)
                         + f' | {row["warm_frames"]}/{row["cold_frames"]} |')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='default_taskdiffusion')
    parser.add_argument('--motions', default='static,slow,fast')
    parser.add_argument('--settings', default=DEFAULT_SETTINGS)
    parser.add_argument('--num', type=int, default=2, help='sequences per motion')
    parser.add_argument('--length', type=int, default=10, help='frames per sequence')
    parser.add_argument('--seed', type=int, default=424242)
    parser.add_argument('--cut-threshold', type=float, default=None)
    parser.add_argument('--max-gap', type=float, default=0.5)
    parser.add_argument('--threads', type=int, help='torch.set_num_threads')
    parser.add_argument('--out', help='also write the results as JSON here')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from mtdp_ros.cli.eval import load_model
    from mtdp_ros.runtime.warm_start import DEFAULT_CUT_THRESHOLD
    args.cut_threshold = args.cut_threshold or DEFAULT_CUT_THRESHOLD
    settings = {text: parse_setting(text) for text in args.settings.split(',')}
    model, random_weights = load_model(args.model, None, 'cpu')
    if random_weights:
        print(f'warning: {args.model} has random weights here', file=sys.stderr)
    results = {}
    for motion in args.motions.split(','):
        results[motion] = run_motion(model, motion, args, settings)
        for name, row in results[motion].items():
            print(json.dumps({'motion': motion, 'setting': name, **row}), flush=True)
    meta = {'model': args.model, 'num': args.num, 'length': args.length, 'seed': args.seed,
            'threads': torch.get_num_threads(), 'cut_threshold': args.cut_threshold}
    print(json.dumps(meta))
    print(table(results))
    if args.out:
        with open(args.out, 'w') as handle:
            json.dump({'meta': meta, 'results': results}, handle, indent=1)


if __name__ == '__main__':
    main()
