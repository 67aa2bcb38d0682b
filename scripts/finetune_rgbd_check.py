#!/usr/bin/env python3
r"""Before/after figures of RGB-D fine-tuning on synthetic scenes seen by a zoomed camera.

Exports training and held-out scenes as TUM RGB-D folders (``export_synthetic_tum``: the
generator's rooms through a camera with ``--zoom`` times its focal length, a camera the
shipped model does not know), fine-tunes the shipped default model on the training
folder with ``mtdp train``'s Trainer, and prints one JSON line per run: depth abs_rel on
the held-out folder before and after, and the semantic agreement with the starting model
after (fraction of pixels whose class is unchanged).

    OMP_NUM_THREADS=1 python3 scripts/finetune_rgbd_check.py --seeds 0 1 2 \\
        --modes none distill freeze
"""

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from mtdp_ros.models import build_model, load_checkpoint, resolve_model  # noqa: E402
from mtdp_ros.training.finetune import evaluate_rgbd  # noqa: E402
from mtdp_ros.training.tum import export_synthetic_tum, TUMRGBD  # noqa: E402
from mtdp_ros.training.train import Trainer  # noqa: E402

# Held-out synthetic scene seeds start at 424242 (training seeds stay below).
TRAIN_SEED0, VAL_SEED0 = 200000, 424242
MODES = {
    'none': {'distill': 0.0, 'freeze': []},
    'distill': {'distill': 1.0, 'freeze': []},
    'distill10': {'distill': 10.0, 'freeze': []},
    'freeze_distill10': {'distill': 10.0, 'freeze': ['semseg']},
    'freeze': {'distill': 0.0, 'freeze': ['semseg']},
    'freeze_encoder': {'distill': 0.0, 'freeze': ['encoder', 'semseg']},
    'none_bn_train': {'distill': 0.0, 'freeze': [], 'batchnorm': 'train'},
    'freeze_bn_train': {'distill': 0.0, 'freeze': ['semseg'], 'batchnorm': 'train'},
}


def finetune_config(train_dir, out_dir, steps, seed, mode, lr, batch_size, weights):
    """The training config of one run (the recipe's settings at test scale)."""
    return {
        'model': 'default_mlore', 'init': 'model',
        'data': {'source': 'tum', 'root': train_dir, 'camera': 'auto', 'workers': 0,
                 'augment': True},
        'train': {'steps': steps, 'batch_size': batch_size, 'lr': lr, 'warmup_steps': 0,
                  'schedule': 'constant', 'amp': 'off', 'device': 'cpu', 'seed': seed,
                  'log_every': 1000, 'checkpoint_every': 0},
        'loss': {'weights': weights},
        'finetune': dict(MODES[mode]),
        'eval': {'num': 0},
        'output': {'dir': out_dir, 'half': False, 'resume': 'never'},
    }


def main(argv=None):
    """Run the experiment; one JSON line per (seed, mode)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--modes', nargs='+', default=['distill'], choices=sorted(MODES))
    parser.add_argument('--steps', type=int, default=12)
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--lr', type=float, default=2e-4)
    parser.add_argument('--train-scenes', type=int, default=8)
    parser.add_argument('--val-scenes', type=int, default=4)
    parser.add_argument('--zoom', type=float, default=2.0)
    parser.add_argument('--weights', type=float, nargs=3, default=[1.0, 10.0, 50.0],
                        metavar=('DEPTH', 'NORMALS', 'EDGE'), help='loss weights')
    args = parser.parse_args(argv)
    config, weights = resolve_model('default_mlore')
    start = build_model(config)
    load_checkpoint(start, weights)
    start.eval()
    with tempfile.TemporaryDirectory() as tmp:
        val_dir = os.path.join(tmp, 'val')
        export_synthetic_tum(val_dir, range(VAL_SEED0, VAL_SEED0 + args.val_scenes),
                             zoom=args.zoom)
        val = TUMRGBD(val_dir, config.image_size, augment=False)
        before = evaluate_rgbd(start, val, teacher=start, tasks=('depth', 'normals'))
        for seed in args.seeds:
            train_dir = os.path.join(tmp, f'train{seed}')
            first = TRAIN_SEED0 + seed * 1000
            export_synthetic_tum(train_dir, range(first, first + args.train_scenes),
                                 zoom=args.zoom)
            for mode in args.modes:
                torch.manual_seed(seed)
                began = time.time()
                trainer = Trainer(finetune_config(train_dir, os.path.join(tmp, 'run'),
                                                  args.steps, seed, mode, args.lr,
                                                  args.batch_size,
                                                  dict(zip(('depth', 'normals', 'edge'),
                                                           args.weights))),
                                  echo=lambda message: None)
                trainer.fit()
                after = evaluate_rgbd(trainer.model, val, teacher=start,
                                      tasks=('depth', 'normals'))
                print(json.dumps({
                    'seed': seed, 'mode': mode, 'steps': args.steps, 'zoom': args.zoom,
                    'lr': args.lr, 'batch_size': args.batch_size, 'weights': args.weights,
                    'abs_rel_before': round(before['depth']['abs_rel'], 4),
                    'abs_rel_after': round(after['depth']['abs_rel'], 4),
                    'normals_mean_before': round(before['normals']['mean_angle'], 2),
                    'normals_mean_after': round(after['normals']['mean_angle'], 2),
                    'semseg_agreement_after':
                        round(after['semseg_agreement']['with_start'], 4),
                    'seconds': round(time.time() - began, 1)}), flush=True)


if __name__ == '__main__':
    main()
