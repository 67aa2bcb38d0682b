"""``mtdp bench``: latency, frame rate and peak memory of an inference engine."""

import json
import time

from mtdp_ros.cli import CommandError
from mtdp_ros.cli.options import add_engine_arguments, add_reparameterize_argument, \
    reparameterize_option


def _size(text):
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise CommandError(f'--image-size must look like 480x640, got {text!r}') from None
    if height < 1 or width < 1:
        raise CommandError(f'--image-size must be positive, got {text!r}')
    return height, width


def register(subparsers):
    """Add the ``bench`` sub-command."""
    parser = subparsers.add_parser(
        'bench', help='benchmark an inference engine',
        description='Warm up, then measure p50/p95 latency, frames per second and peak memory '
                    'of the network alone and of the whole image-to-outputs path (batch 1).')
    add_engine_arguments(parser)
    parser.add_argument('--iters', type=int, default=50, help='timed iterations (default 50)')
    parser.add_argument('--warmup', type=int, default=10, help='untimed iterations first')
    parser.add_argument('--image-size', metavar='HxW',
                        help='camera image size for the whole path (default: the model\'s)')
    parser.add_argument('--no-cuda-graphs', action='store_true',
                        help='torch backend: run eagerly on CUDA')
    add_reparameterize_argument(
        parser, help='MLoRE fused into one convolution per task: auto (when it fits in half '
                     'of the free device memory), true or false')
    parser.add_argument('--providers', help='onnxruntime providers in order of preference, '
                                            'e.g. tensorrt,cuda,cpu')
    parser.add_argument('--json', action='store_true',
                        help='print the result as one JSON object on the last line')
    parser.set_defaults(func=run)


def run(args):
    """Build the engine, run the benchmark, print a report (and JSON)."""
    from mtdp_ros.runtime import create_engine
    from mtdp_ros.runtime.bench import format_report, run_benchmark
    if args.iters < 1 or args.warmup < 0:
        raise CommandError('--iters must be >= 1 and --warmup >= 0')
    options = {'reparameterize': reparameterize_option(args)}
    if args.backend == 'torch':
        if args.providers:
            raise CommandError('--providers applies to the onnxruntime backend')
        options['cuda_graphs'] = not args.no_cuda_graphs
    else:
        if args.no_cuda_graphs:
            raise CommandError('--no-cuda-graphs applies to the torch backend')
        if args.providers:
            options['providers'] = args.providers
    image_size = _size(args.image_size) if args.image_size else None
    tasks = [t.strip() for t in args.tasks.split(',') if t.strip()] if args.tasks else None
    started = time.perf_counter()
    engine = create_engine(args.model, checkpoint=args.checkpoint, backend=args.backend,
                           device=args.device, precision=args.precision, steps=args.steps,
                           seed=args.seed, **options)
    creation_s = time.perf_counter() - started
    try:
        result = run_benchmark(engine, iters=args.iters, warmup=args.warmup,
                               image_size=image_size, tasks=tasks, creation_s=creation_s)
    finally:
        engine.close()
    for line in format_report(result):
        print(line)
    if args.json:
        print(json.dumps(result))
    return 0
