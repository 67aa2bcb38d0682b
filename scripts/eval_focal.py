#!/usr/bin/env python3
"""Depth at other focal lengths: abs_rel of each focal correction on held-out scenes.

For each model and focal scale F, the held-out synthetic scenes are rendered with the
focal length times F and evaluated as ``mtdp eval --model M --data synthetic --num N
--seed 424242 --focal-scale F --focal-correction C`` does, for C in canonical, scale, off
(the model is loaded once), and for a partial correction (depth times the square root of
the scale factor). Prints a Markdown table of depth abs_rel (and RMSE). Each batch is
rendered and run once for all corrections but canonical (see
:func:`evaluate_corrections`); for F <= 1 canonical is scale by construction (the image
would have to grow past the model input, so it is fitted as usual and rescaled).

Run from the repository root::

    OMP_NUM_THREADS=2 .venv/bin/python scripts/eval_focal.py --num 40
"""

import argparse
import json
from pathlib import Path
import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mtdp_ros.cli.eval import load_model  # noqa: E402
from mtdp_ros.training.evaluate import (_canonical_run, _focal_corrected, _forward,  # noqa
                                        EDGE_MAX_DIST, summarize)
from mtdp_ros.training.metrics import MultiTaskMeter  # noqa: E402
from mtdp_ros.training.synthetic import render_batch  # noqa: E402

SCALES = (0.5, 0.6, 0.8, 1.0, 1.25, 1.6, 2.0)
CORRECTIONS = ('off', 'partial', 'scale', 'canonical', 'hybrid')


def evaluate_corrections(model, num, seed, focal_scale, corrections, batch_size=8):
    """{correction: depth metrics} on the held-out scenes at ``focal_scale``.

    As ``evaluate_model(..., focal_scale=F, focal_correction=C)`` for each C (the same
    scenes, network and corrections), but each batch is rendered once and the network run
    once for off, partial and scale (they differ only in the depth factor) and once more
    for canonical where it differs (F > 1).
    """
    config = model.config
    meters = {c: MultiTaskMeter(('depth',), config.num_outputs,
                                edge_max_dist=EDGE_MAX_DIST['synthetic'])
              for c in corrections}
    height, width = config.image_size
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)

    def run(x):
        return _forward(model, x, None)

    for first in range(seed, seed + num, batch_size):
        seeds = list(range(first, min(first + batch_size, seed + num)))
        batch = render_batch(seeds, height, width, device='cpu', focal_scale=focal_scale)
        x = (batch['image'] - mean) / std
        intrinsics = batch['intrinsics'].cpu()
        plain = run(x)
        for correction in corrections:
            if correction == 'canonical' and focal_scale > 1.0:
                raw = _canonical_run(run, x, intrinsics, config)
            elif correction == 'off':
                raw = plain
            else:
                raw = _focal_corrected(plain, intrinsics, config.train_focal_px, correction)
            meters[correction].update({'depth': raw['depth'].float()},
                                      {'depth': batch['depth']})
    return {c: summarize(meter.score())['depth'] for c, meter in meters.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', default='default_mlore,default_taskdiffusion')
    parser.add_argument('--num', type=int, default=40)
    parser.add_argument('--seed', type=int, default=424242)
    parser.add_argument('--scales', default=','.join(str(s) for s in SCALES))
    parser.add_argument('--corrections', default=','.join(CORRECTIONS))
    parser.add_argument('--json', metavar='FILE', help='also write every result here')
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(',')]
    corrections = args.corrections.split(',')
    results = []
    for name in args.models.split(','):
        model, _ = load_model(name, None, 'cpu')
        print(f'\n{name}: depth abs_rel (RMSE m), {args.num} scenes from seed {args.seed}')
        print('| F | ' + ' | '.join(corrections) + ' |')
        print('| --- |' + ' --- |' * len(corrections))
        for scale in scales:
            depth = evaluate_corrections(model, args.num, args.seed, scale, corrections)
            for correction in corrections:
                results.append({'model': name, 'focal_scale': scale, 'correction': correction,
                                'depth': depth[correction]})
            print(f'| {scale:g} | ' + ' | '.join(
                f'{depth[c]["abs_rel"]:.3f} ({depth[c]["rmse"]:.3f})' for c in corrections)
                + ' |', flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
    main()
