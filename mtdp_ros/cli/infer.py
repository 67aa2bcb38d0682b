"""``mtdp infer IMAGE|DIR|VIDEO --model M --out DIR``: colour pictures of every output.

For each image (each file of a folder, or every ``--every``-th frame of a video) it writes
``<name>_input.png``, one ``<name>_<task>.png`` per output (the node's colour maps: class
palette, turbo depth, ``(n + 1) / 2`` normals, grey edges / saliency) and
``<name>_mosaic.png``: the input beside every output, each tile captioned.
"""

import os
import sys

import cv2
import numpy as np

from mtdp_ros.cli import CommandError
from mtdp_ros.cli.options import add_engine_arguments

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.pgm', '.tif', '.tiff',
                    '.webp')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.mpg', '.mpeg', '.m4v')


def parse_tasks(text):
    """The task list of a ``--tasks`` value (None: all tasks)."""
    return [t.strip() for t in text.split(',') if t.strip()] if text else None


def engine_from_args(args):
    """The engine of :func:`add_engine_arguments`' options; warns about random weights."""
    from mtdp_ros.runtime import create_engine
    options = {}
    cameras = len(getattr(args, 'cameras', None) or getattr(args, 'image_topic', None) or [])
    if args.backend == 'onnxruntime' and cameras > 1 and getattr(args, 'max_batch', 1) > 1:
        # mtdp bag with several cameras: one graph run per batch (see OrtEngine).
        options['dynamic_batch'] = True
    try:
        engine = create_engine(args.model, checkpoint=args.checkpoint, backend=args.backend,
                               device=args.device, precision=args.precision, steps=args.steps,
                               seed=args.seed, **options)
    except RuntimeError as exc:
        raise CommandError(str(exc)) from None
    if engine.random_weights:
        print(f'mtdp {args.command}: warning: {args.model} has no trained weights here; the '
              f'outputs come from random weights', file=sys.stderr)
    return engine


def register(subparsers):
    """Add the ``infer`` sub-command."""
    parser = subparsers.add_parser(
        'infer', help='run a model on images or a video and write colour pictures',
        description='Write a colour picture of every output and a mosaic (input beside each '
                    'task) for an image, every image of a folder, or frames of a video.')
    parser.add_argument('input', metavar='IMAGE|DIR|VIDEO')
    parser.add_argument('--out', required=True, metavar='DIR', help='output folder')
    add_engine_arguments(parser)
    parser.add_argument('--every', type=int, default=10,
                        help='video: use every N-th frame (default 10)')
    parser.add_argument('--max-frames', type=int, default=100,
                        help='video: at most this many frames (default 100)')
    parser.set_defaults(func=run)


def caption(tile, text):
    """The tile with a dark caption band underneath."""
    band = np.zeros((max(18, tile.shape[0] // 14), tile.shape[1], 3), np.uint8)
    scale = band.shape[0] / 30.0
    cv2.putText(band, text, (4, int(band.shape[0] * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([tile, band], axis=0)


def mosaic(image, pictures, columns=3):
    """Grid of the input and the task pictures (all at the input's size), captioned."""
    tiles = [caption(image, 'input')] + [caption(pic, task) for task, pic in pictures.items()]
    blank = np.zeros_like(tiles[0])
    rows = []
    for start in range(0, len(tiles), columns):
        row = tiles[start:start + columns]
        row += [blank] * (columns - len(row))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def _write_rgb(path, rgb):
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise CommandError(f'cannot write {path}')


def process(engine, image, name, out_dir, tasks=None, steps=None):
    """Run ``engine`` on one RGB image; write the pictures; return the mosaic path."""
    outputs = engine.infer(image, tasks=tasks, steps=steps)
    from mtdp_ros.ros.colormaps import colorize
    pictures = {task: colorize(task, value) for task, value in outputs.items()}
    _write_rgb(os.path.join(out_dir, f'{name}_input.png'), image)
    for task, picture in pictures.items():
        _write_rgb(os.path.join(out_dir, f'{name}_{task}.png'), picture)
    path = os.path.join(out_dir, f'{name}_mosaic.png')
    _write_rgb(path, mosaic(image, pictures))
    return path


def _read_image(path):
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise CommandError(f'cannot read image {path}')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def check_input(path):
    """Raise CommandError unless ``path`` is a readable file or folder (before the model)."""
    if not os.path.exists(path):
        raise CommandError(f'input not found: {path}')
    if not os.access(path, os.R_OK):
        raise CommandError(f'input not readable: {path}')
    if os.path.isdir(path) and not any(f.lower().endswith(IMAGE_EXTENSIONS)
                                       for f in os.listdir(path)):
        raise CommandError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {path}')


def iter_inputs(path, every=10, max_frames=100):
    """(name, RGB image) pairs from an image, a folder of images, or a video."""
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise CommandError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {path}')
        for file in files:
            yield os.path.splitext(file)[0], _read_image(os.path.join(path, file))
        return
    if not os.path.isfile(path):
        raise CommandError(f'input not found: {path}')
    stem = os.path.splitext(os.path.basename(path))[0]
    if path.lower().endswith(IMAGE_EXTENSIONS):
        yield stem, _read_image(path)
        return
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise CommandError(f'{path} is neither an image nor a readable video')
    index = written = 0
    try:
        while written < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            if index % every == 0:
                yield f'{stem}_{index:06d}', cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                written += 1
            index += 1
    finally:
        capture.release()
    if written == 0:
        raise CommandError(f'{path}: no frames could be read')


def run(args):
    """Create the engine, process every input, print the mosaic paths."""
    if args.every < 1 or args.max_frames < 1:
        raise CommandError('--every and --max-frames must be >= 1')
    tasks = parse_tasks(args.tasks)
    check_input(args.input)         # a mistyped path must not wait for the model to load
    engine = engine_from_args(args)
    os.makedirs(args.out, exist_ok=True)
    count = 0
    for name, image in iter_inputs(args.input, args.every, args.max_frames):
        print(process(engine, image, name, args.out, tasks=tasks))
        count += 1
    print(f'mtdp infer: wrote pictures of {count} image(s) to {args.out}', file=sys.stderr)
    return 0
