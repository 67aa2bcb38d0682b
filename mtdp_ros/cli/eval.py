"""``mtdp eval``: metrics of a model on held-out synthetic scenes, NYUD-v2 or PASCAL-Context.

``mtdp eval --model default --data synthetic --num 200 --seed 424242 --json`` prints a table
and, with ``--json``, one JSON object as the last stdout line, e.g.
``{"semseg": {"mIoU": 0.71, ...}, "depth": {"rmse": ..., "abs_rel": ...}, "normals":
{"mean_angle": ..., "median_angle": ...}, "edge": {"odsF": ...}}`` (mIoU and F as fractions,
angles in degrees, depth in metres).

Video: ``mtdp eval --model default_taskdiffusion --data synthetic --sequence 16 --motion slow
--num 4 --steps 1 --warm-start --warm-strength 0.01 --json`` evaluates NUM sequences of LEN
frames of a moving camera (``mtdp_ros.training.synthetic_video``), frame by frame as the node
runs them; the JSON adds a ``temporal`` object: ``depth_flicker``, ``semseg_flicker``,
``normals_flicker`` (degrees), ``edge_flicker``, ``ms_per_frame`` and the counts of warm and
cold frames (see ``mtdp_ros.training.temporal_metrics``).
"""

import json
import math
import sys

from mtdp_ros.cli import CommandError
from mtdp_ros.cli.options import add_model_argument
from mtdp_ros.runtime.options import DEVICES, is_diffusion

# Video evaluation defaults: sequences (--num) and warm-start strength (README, "TaskDiffusion
# on video", measured the strength).
DEFAULT_SEQUENCES = 4
DEFAULT_WARM_STRENGTH = 0.01
# mtdp_ros.runtime.postprocess's FOCAL_CORRECTIONS and DEFAULT_FOCAL_CORRECTION, written out:
# importing it here would import torch for every `mtdp` command line.
FOCAL_CORRECTIONS = ('hybrid', 'canonical', 'scale', 'off')
DEFAULT_FOCAL_CORRECTION = 'hybrid'


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
    parser.add_argument('--focal-correction', choices=FOCAL_CORRECTIONS,
                        default=DEFAULT_FOCAL_CORRECTION,
                        help='synthetic data: how depth is made metric for the scene camera: '
                             'hybrid (rescaled by the factor for a wider camera, by its square '
                             'root for a zoomed one), canonical (a zoomed image resized to the '
                             'training focal length, the rest rescaled), scale (depth '
                             'rescaled) or off, as the '
                             f'node\'s depth.focal_correction (default '
                             f'{DEFAULT_FOCAL_CORRECTION})')
    parser.add_argument('--no-focal-correction', action='store_true',
                        help='same as --focal-correction off')
    parser.add_argument('--json', action='store_true',
                        help='print the metrics as one JSON object on the last line')
    video = parser.add_argument_group('video (synthetic data only)')
    video.add_argument('--sequence', type=int, metavar='LEN',
                       help='evaluate NUM sequences of LEN frames of a moving camera '
                            '(default --num 4) and report flicker')
    video.add_argument('--motion', choices=('static', 'slow', 'fast'), default='slow',
                       help='camera motion of the sequences (fast: a scene cut midway)')
    video.add_argument('--warm-start', action='store_true',
                       help='TaskDiffusion: start each frame from the previous frame\'s map')
    video.add_argument('--warm-strength', type=float, default=None, metavar='S',
                       help=f'warm-start strength, 0 < S <= 1 (default {DEFAULT_WARM_STRENGTH})')
    video.add_argument('--warm-max-gap', type=float, default=None, metavar='SEC',
                       help='cold start after a gap longer than this (frames are 1/30 s '
                            'apart; default 0.5)')
    video.add_argument('--cut-threshold', type=float, default=None, metavar='T',
                       help='cold start when the image change exceeds T (default 0.5)')
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


def check_video_args(args, kind):
    """Raise CommandError for video options that do not fit; fill in the defaults."""
    from mtdp_ros.runtime.warm_start import DEFAULT_CUT_THRESHOLD, DEFAULT_MAX_GAP_S
    video_only = [flag for flag, given in (
        ('--warm-start', args.warm_start), ('--warm-strength', args.warm_strength is not None),
        ('--warm-max-gap', args.warm_max_gap is not None),
        ('--cut-threshold', args.cut_threshold is not None)) if given]
    if args.sequence is None:
        if video_only:
            raise CommandError(f'{video_only[0]} applies to video: give --sequence LEN')
        return
    if kind != 'synthetic':
        raise CommandError('--sequence applies to --data synthetic only')
    if args.sequence < 2:
        raise CommandError(f'--sequence must be >= 2 frames, got {args.sequence}')
    if args.warm_strength is not None and not args.warm_start:
        raise CommandError('--warm-strength needs --warm-start')
    strength = DEFAULT_WARM_STRENGTH if args.warm_strength is None else args.warm_strength
    if not (math.isfinite(strength) and 0 < strength <= 1):
        raise CommandError(f'--warm-strength must lie in (0, 1], got {strength}')
    args.warm_strength = strength
    for flag, name, default in (('--warm-max-gap', 'warm_max_gap', DEFAULT_MAX_GAP_S),
                                ('--cut-threshold', 'cut_threshold', DEFAULT_CUT_THRESHOLD)):
        value = getattr(args, name)
        value = default if value is None else value
        if not value > 0:
            raise CommandError(f'{flag} must be a positive number, got {value}')
        setattr(args, name, value)


def run_video(args, model, device, num):
    """Evaluate on synthetic video and print (with --json, the JSON object last)."""
    from mtdp_ros.training.evaluate import summarize
    from mtdp_ros.training.evaluate_video import evaluate_video
    if args.warm_start and not is_diffusion(model.config):
        raise CommandError('--warm-start applies to TaskDiffusion models only')

    def progress(done, total):
        print(f'\r  evaluated {done}/{total} sequences', end='', file=sys.stderr, flush=True)

    try:
        results, temporal = evaluate_video(
            model, num=num, seed=args.seed, length=args.sequence, motion=args.motion,
            steps=args.steps, warm_start=args.warm_start, strength=args.warm_strength,
            device=device, progress=progress,
            focal_correction=not args.no_focal_correction, max_gap_s=args.warm_max_gap,
            cut_threshold=args.cut_threshold)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    print('', file=sys.stderr)
    summary = summarize(results)
    summary['temporal'] = {k: (round(v, 6) if isinstance(v, float) else v)
                           for k, v in temporal.items()}
    steps = args.steps or model.config.trained_steps
    header = (f'{args.model} on {num} synthetic sequences of {args.sequence} frames '
              f'({args.motion} motion, seed {args.seed}'
              + (f', {steps} steps' if is_diffusion(model.config) else '')
              + (f', warm start {args.warm_strength:g}' if args.warm_start else '') + ')')
    table_stream = sys.stderr if args.json else sys.stdout
    print(header, file=table_stream)
    print(format_table(summary), file=table_stream)
    if args.json:
        print(json.dumps(summary))
    return 0


def run(args):
    """Evaluate and print (table to stderr with --json, JSON last on stdout)."""
    from mtdp_ros.training.evaluate import evaluate_model, parse_data_spec, summarize
    from mtdp_ros.runtime.options import resolve_device
    kind, _ = parse_data_spec(args.data)
    check_video_args(args, kind)
    if args.sequence is not None and args.num is None:
        args.num = DEFAULT_SEQUENCES
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
    if args.sequence is not None:
        return run_video(args, model, device, num)

    correction = 'off' if args.no_focal_correction else args.focal_correction

    def progress(done, total):
        print(f'\r  evaluated {done}/{total}', end='', file=sys.stderr, flush=True)

    results = evaluate_model(model, args.data, num=num, seed=args.seed,
                             batch_size=args.batch_size, device=device, steps=args.steps,
                             progress=progress, focal_scale=args.focal_scale,
                             focal_correction=correction)
    print('', file=sys.stderr)
    summary = summarize(results)
    steps = args.steps or model.config.trained_steps
    header = f'{args.model} on {args.data}' + (f' ({num} images' if num else ' (all images') \
        + (f', seed {args.seed}' if kind == 'synthetic' else '') \
        + (f', {steps} steps' if is_diffusion(model.config) else '') \
        + (f', focal x{args.focal_scale:g}' if args.focal_scale != 1.0 else '') \
        + (', no focal correction' if correction == 'off' else '') \
        + (f', focal correction {correction}'
           if correction not in ('off', DEFAULT_FOCAL_CORRECTION) else '') + ')'
    table_stream = sys.stderr if args.json else sys.stdout
    print(header, file=table_stream)
    print(format_table(summary), file=table_stream)
    if args.json:
        print(json.dumps(summary))
    return 0
