"""``mtdp eval``: metrics of a model on held-out synthetic scenes, NYUD-v2 or PASCAL-Context.

``mtdp eval --model default --data synthetic --num 200 --seed 424242 --json`` prints a table
and, with ``--json``, one JSON object as the last stdout line, e.g.
``{"semseg": {"mIoU": 0.71, ...}, "depth": {"rmse": ..., "abs_rel": ...}, "normals":
{"mean_angle": ..., "median_angle": ...}, "edge": {"odsF": ...}}`` (mIoU and F as fractions,
angles in degrees, depth in metres).
"""

import json
import math
import sys

from mtdp_ros.cli import CommandError
from mtdp_ros.cli.options import add_model_argument
from mtdp_ros.runtime.options import DEVICES, is_diffusion


def register(subparsers):
    """Add the ``eval`` sub-command."""
    parser = subparsers.add_parser(
        'eval', help='evaluate a model (mIoU, depth errors, normal angles, edge F)',
        description='Evaluate on synthetic scenes (seeds SEED .. SEED+NUM-1), or on the '
                    'validation split of nyud:DIR / pascal:DIR (multi-task tarball layout).')
    add_model_argument(parser)
    parser.add_argument('--checkpoint', metavar='PATH',
                        help='weights (authors\' .pth or .safetensors) for the model')
    parser.add_argument('--data', default='synthetic', metavar='synthetic|nyud:DIR|pascal:DIR')
    parser.add_argument('--num', type=int, help='number of images (synthetic default 200; '
                                                'datasets: all)')
    parser.add_argument('--seed', type=int, default=424242,
                        help='first synthetic scene (default 424242, the held-out range)')
    parser.add_argument('--steps', type=int, help='TaskDiffusion denoising steps')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--device', choices=DEVICES, default='auto')
    parser.add_argument('--train-form', action='store_true',
                        help='evaluate MLoRE blocks unfused (default: reparameterised)')
    parser.add_argument('--focal-scale', type=float, default=1.0, metavar='F',
                        help='synthetic data: render the scenes with the focal length times F '
                             '(default 1: the training camera)')
    parser.add_argument('--no-focal-correction', action='store_true',
                        help='do not rescale depth from the training focal length to the '
                             'scene camera\'s (default: corrected, as the node does)')
    parser.add_argument('--json', action='store_true',
                        help='print the metrics as one JSON object on the last line')
    parser.set_defaults(func=run)


def load_model(spec, checkpoint, device, fuse=True):
    """(model in eval mode on ``device``, random_weights) for a model spec and checkpoint."""
    from mtdp_ros.models import build_model, load_checkpoint, reparameterize, resolve_model
    from mtdp_ros.models.reparam import fusable_blocks
    config, own_weights = resolve_model(spec)
    weights = checkpoint or own_weights
    model = build_model(config)
    if weights is not None:
        load_checkpoint(model, weights)
    model.eval()
    if fuse and fusable_blocks(model):
        model = reparameterize(model)
    return model.to(device), weights is None


def format_table(summary):
    """Human-readable lines of a metrics summary."""
    lines = []
    for task, values in summary.items():
        parts = ', '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                          for k, v in values.items())
        lines.append(f'  {task:<12} {parts}')
    return '\n'.join(lines)


def run(args):
    """Evaluate and print (table to stderr with --json, JSON last on stdout)."""
    from mtdp_ros.training.evaluate import evaluate_model, parse_data_spec, summarize
    from mtdp_ros.runtime.options import resolve_device
    kind, _ = parse_data_spec(args.data)
    num = args.num if args.num is not None else (200 if kind == 'synthetic' else None)
    if num is not None and num < 1:
        raise CommandError(f'--num must be >= 1, got {num}')
    if args.batch_size < 1:
        raise CommandError('--batch-size must be >= 1')
    if not (math.isfinite(args.focal_scale) and args.focal_scale > 0):
        raise CommandError(f'--focal-scale must be a positive number, got {args.focal_scale}')
    if args.focal_scale != 1.0 and kind != 'synthetic':
        raise CommandError('--focal-scale applies to --data synthetic only')
    try:
        device = resolve_device(args.device, '--device')
    except RuntimeError as exc:
        raise CommandError(str(exc)) from None
    model, random_weights = load_model(args.model, args.checkpoint, device,
                                       fuse=not args.train_form)
    if random_weights:
        print(f'mtdp eval: warning: {args.model} has no trained weights here; evaluating '
              f'random weights', file=sys.stderr)

    def progress(done, total):
        print(f'\r  evaluated {done}/{total}', end='', file=sys.stderr, flush=True)

    results = evaluate_model(model, args.data, num=num, seed=args.seed,
                             batch_size=args.batch_size, device=device, steps=args.steps,
                             progress=progress, focal_scale=args.focal_scale,
                             focal_correction=not args.no_focal_correction)
    print('', file=sys.stderr)
    summary = summarize(results)
    steps = args.steps or model.config.trained_steps
    header = f'{args.model} on {args.data}' + (f' ({num} images' if num else ' (all images') \
        + (f', seed {args.seed}' if kind == 'synthetic' else '') \
        + (f', {steps} steps' if is_diffusion(model.config) else '') \
        + (f', focal x{args.focal_scale:g}' if args.focal_scale != 1.0 else '') \
        + (', no focal correction' if args.no_focal_correction else '') + ')'
    table_stream = sys.stderr if args.json else sys.stdout
    print(header, file=table_stream)
    print(format_table(summary), file=table_stream)
    if args.json:
        print(json.dumps(summary))
    return 0
