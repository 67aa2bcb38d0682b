"""``mtdp train CONFIG.yaml``: train or fine-tune a model (one GPU, CPU, or torchrun DDP).

Several GPUs: ``torchrun --nproc_per_node N -m mtdp_ros.cli train CONFIG.yaml`` (or the
``mtdp`` script: ``torchrun --nproc_per_node N $(command -v mtdp) train CONFIG.yaml``).
"""

import json

from mtdp_ros.cli import CommandError
from mtdp_ros.runtime.options import DEVICES


def register(subparsers):
    """Add the ``train`` sub-command."""
    parser = subparsers.add_parser(
        'train', help='train or fine-tune a model from a YAML config',
        description='Train per CONFIG.yaml (sections model, init, data, train, loss, eval, '
                    'output; see mtdp_ros/training/config.py). Options override the file. '
                    'Prints a JSON summary as the last line.')
    parser.add_argument('config', metavar='CONFIG.yaml', help='training configuration')
    parser.add_argument('--steps', type=int, help='optimiser steps (train.steps)')
    parser.add_argument('--batch-size', type=int, help='batch size per process')
    parser.add_argument('--lr', type=float, help='peak learning rate')
    parser.add_argument('--time-budget-min', type=float, metavar='MIN',
                        help='fit the schedule into this wall time and stop within it')
    parser.add_argument('--device', choices=DEVICES)
    parser.add_argument('--amp', choices=('auto', 'off', 'bf16', 'fp16'))
    parser.add_argument('--workers', type=int, help='data worker processes')
    parser.add_argument('--init', metavar='random|model|PATH',
                        help='initial weights: random, the model spec\'s own weights, or a '
                             'checkpoint (authors\' .pth or a .safetensors)')
    parser.add_argument('--init-encoder', metavar='PATH',
                        help='start the encoder from an ImageNet ViT file (timm .safetensors / '
                             '.pth, Google .npz); the rest random (init: {encoder: PATH})')
    parser.add_argument('--data-root', metavar='DIR', help='dataset folder (data.root)')
    parser.add_argument('--out', metavar='DIR', help='output folder (logs, checkpoints)')
    parser.add_argument('--save', metavar='PATH', help='also save the final weights here')
    parser.add_argument('--resume', metavar='auto|never|PATH',
                        help='resume from the output folder (auto), never, or a checkpoint')
    parser.set_defaults(func=run)


OVERRIDES = {'steps': ('train', 'steps'), 'batch_size': ('train', 'batch_size'),
             'lr': ('train', 'lr'), 'time_budget_min': ('train', 'time_budget_min'),
             'device': ('train', 'device'), 'amp': ('train', 'amp'),
             'workers': ('data', 'workers'), 'data_root': ('data', 'root'),
             'out': ('output', 'dir'),
             'save': ('output', 'save'), 'resume': ('output', 'resume')}


def build_config(args):
    """The merged config: the YAML file, then the command-line overrides."""
    import yaml
    from mtdp_ros.training.config import load_config
    try:
        with open(args.config, 'r', encoding='utf-8') as handle:
            given = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise CommandError(f'training config not found: {args.config}') from None
    except yaml.YAMLError as exc:
        raise CommandError(f'{args.config}: not valid YAML: {exc}') from None
    if not isinstance(given, dict):
        raise CommandError(f'{args.config}: the training config must be a mapping')
    for name, (section, key) in OVERRIDES.items():
        value = getattr(args, name)
        if value is not None:
            given.setdefault(section, {})
            if not isinstance(given[section], dict):
                raise CommandError(f'{args.config}: section {section} must be a mapping')
            given[section][key] = value
    if args.init is not None and args.init_encoder is not None:
        raise CommandError('give --init or --init-encoder, not both')
    if args.init is not None:
        given['init'] = args.init
    if args.init_encoder is not None:
        given['init'] = {'encoder': args.init_encoder}
    return load_config(given)


def run(args):
    """Train; the summary JSON is the last stdout line."""
    import sys

    from mtdp_ros.training.train import train
    config = build_config(args)

    def echo(message):
        print(message, file=sys.stderr, flush=True)

    try:
        summary = train(config, echo=echo)
    except RuntimeError as exc:
        if 'CUDA' in str(exc) and 'available' in str(exc):
            raise CommandError(str(exc)) from None
        raise
    print(json.dumps(summary))
    return 0
