"""``mtdp bag INPUT --out OUTPUT --image-topic T``: the node's outputs for every frame of a bag.

Reads a rosbag2 bag (a folder of sqlite3 or mcap storage, or one ``.db3``/``.mcap`` file),
runs the engine on every message of the image topic (sensor_msgs/Image or
CompressedImage, chosen by the topic's type in the bag) and writes a new bag with the
messages the node would publish, under ``--namespace``: each with the input frame's header
and size, recorded at the input message's bag timestamp. With ``--camera-info-topic`` the
point cloud ``points`` is written too, from the camera_info recorded last at or before the
frame (frames recorded before the first camera_info use the first one).

The output bag appears only when complete: it is written beside ``--out`` and renamed at
the end, and removed on any error, SIGINT or SIGTERM. Reading is bounded (decompressed chunk
and message sizes) and the message definitions of the topics read are checked
(:mod:`mtdp_ros.ros.bag_guard`).

:func:`process_bag` is one bag in, one bag out, with an engine it is given: several bags
(``mtdp bag IN1 IN2 ... --out DIR``, on Ray or one after another) are
:mod:`mtdp_ros.cli.bag_fleet`'s.
"""

import bisect
import dataclasses
import sys
import time

from mtdp_ros.cli import CommandError
from mtdp_ros.cli.infer import engine_from_args, parse_tasks
from mtdp_ros.cli.options import add_engine_arguments

DEFAULT_NAMESPACE = '/mtdp_perception'
# The file in an output bag folder that says what it was made from (bag_fleet.py).
MANIFEST = 'mtdp_manifest.json'
PROGRESS_WIDTH = 30


def register(subparsers):
    """Add the ``bag`` sub-command."""
    parser = subparsers.add_parser(
        'bag', help="write the node's outputs for every frame of a rosbag2 bag into a new bag",
        description="Run the model on every image of a rosbag2 bag (sqlite3 or mcap) and write "
                    "the node's output topics, with the frames' headers, into a new bag.")
    parser.add_argument('input', nargs='+', metavar='INPUT',
                        help='rosbag2 bag folder, .mcap or .db3; several, or a folder holding '
                             'bags: one output bag each under --out')
    parser.add_argument('--out', required=True, metavar='OUTPUT',
                        help='output bag folder (must not exist); with several bags the '
                             'folder that receives OUTPUT/<input name>/ for each')
    parser.add_argument('--image-topic', required=True, metavar='TOPIC',
                        help='sensor_msgs/Image or sensor_msgs/CompressedImage topic')
    parser.add_argument('--camera-info-topic', metavar='TOPIC',
                        help='sensor_msgs/CameraInfo topic: also write the point cloud')
    parser.add_argument('--namespace', default=DEFAULT_NAMESPACE, metavar='NS',
                        help=f'namespace of the output topics (default {DEFAULT_NAMESPACE})')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap',
                        help='storage of the output bag (default mcap)')
    parser.add_argument('--copy-input', action='store_true',
                        help='also write the input image (and camera_info) messages')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--no-color', action='store_true',
                        help='write the raw outputs only (no */color topics)')
    parser.add_argument('--depth-color-min', type=float, default=0.0, metavar='M',
                        help='near end of depth/color in metres (0: frame minimum)')
    parser.add_argument('--depth-color-max', type=float, default=0.0, metavar='M',
                        help='far end of depth/color in metres (0: frame maximum)')
    parser.add_argument('--points-stride', type=int, default=1, metavar='N',
                        help='keep every N-th pixel along each axis in points')
    parser.add_argument('--points-color', choices=('image', 'semantic'), default='image',
                        help='point colours: camera image or semantic classes')
    parser.add_argument('--rectified', action='store_true',
                        help='the images are rectified: use P and ignore D (the node\'s '
                             'camera.rectified)')
    parser.add_argument('--no-focal-correction', action='store_true',
                        help="keep the network's depth for its training camera (the node's "
                             'depth.focal_correction false); by default depth is rescaled to '
                             'the camera of --camera-info-topic')
    # Defaults: mtdp_ros.ros.bag_guard.ReadLimits (not imported here: it loads rosbags).
    parser.add_argument('--max-message-mb', type=float, metavar='MB',
                        help='refuse a bag holding a message larger than this (MiB, default '
                             '256)')
    parser.add_argument('--max-chunk-mb', type=float, metavar='MB',
                        help='refuse a bag with an mcap chunk decompressing to more than this '
                             '(MiB, default 1024)')
    add_engine_arguments(parser)
    from mtdp_ros.cli import bag_fleet
    bag_fleet.add_arguments(parser)
    parser.set_defaults(func=run)


def read_limits(args):
    """The ReadLimits of ``--max-message-mb`` and ``--max-chunk-mb`` (unset: defaults)."""
    from mtdp_ros.ros.bag_guard import MIB, ReadLimits
    given = {}
    for option, field in (('max_message_mb', 'max_message_bytes'),
                          ('max_chunk_mb', 'max_chunk_bytes')):
        value = getattr(args, option, None)
        if value is None:
            continue
        if not value > 0:
            raise CommandError(f'--{option.replace("_", "-")} must be > 0, got {value}')
        given[field] = int(value * MIB)
    return ReadLimits(**given)


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line per tenth otherwise."""

    def __init__(self, total, enabled=True, stream=None):
        self.total = max(int(total), 1)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()
        self._tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self._next_line = 0

    def update(self, done):
        """Show ``done`` of ``total`` frames and the rate so far."""
        if not self.enabled:
            return
        if not self._tty:
            if done < self._next_line and done != self.total:
                return
            self._next_line = done + max(self.total // 10, 1)
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        filled = PROGRESS_WIDTH * done // self.total
        bar = '#' * filled + '.' * (PROGRESS_WIDTH - filled)
        text = f'[{bar}] {done}/{self.total} frames, {rate:.2f} fps'
        if self._tty:
            self.stream.write('\r' + text + ('\n' if done >= self.total else ''))
        else:
            self.stream.write(text + '\n')
        self.stream.flush()


def camera_info_at(infos, times, timestamp):
    """The camera_info recorded last at or before ``timestamp``, else the first (or None)."""
    if not infos:
        return None
    index = bisect.bisect_right(times, timestamp) - 1
    return infos[max(index, 0)]


def output_topic(namespace, relative):
    """The absolute output topic of a node-relative topic name."""
    return f'{namespace}/{relative}'


def output_options(args):
    """The OutputOptions of the command line (as the node's publish/points/depth params)."""
    from mtdp_ros.ros.outputs import OutputOptions
    from mtdp_ros.ros.parameters import check_depth_range
    problem = check_depth_range(args.depth_color_min, args.depth_color_max)
    if problem:
        raise CommandError(problem.replace('depth.color_', '--depth-color-'))
    if args.points_stride < 1:
        raise CommandError(f'--points-stride must be >= 1, got {args.points_stride}')
    return OutputOptions(publish_color=not args.no_color,
                         publish_points=bool(args.camera_info_topic),
                         points_stride=args.points_stride, points_color=args.points_color,
                         depth_color_min=args.depth_color_min,
                         depth_color_max=args.depth_color_max,
                         camera_rectified=args.rectified)


def _points_problem(kind, text):
    raise CommandError(text)


def _reject(kind, exc):
    raise exc


class BagSink:
    """A camera stream's sink writing into the output bag at the input frame's bag time."""

    def __init__(self, writer, namespace):
        self.writer = writer
        self.namespace = namespace
        self.timestamp = 0          # the bag time of the frame being processed

    def wanted(self, topic):
        """Every output is written."""
        return True

    def publish(self, topic, msg):
        """Write ``msg`` on the absolute topic of ``topic``."""
        self.writer.write(output_topic(self.namespace, topic), self.timestamp, msg)


def run(args):
    """Process the bag; print the output path; the summary goes to stderr.

    Several bags (or a folder of bags, or ``--ray``): :func:`mtdp_ros.cli.bag_fleet.run`.
    """
    from mtdp_ros.cli import bag_fleet
    from mtdp_ros.cli.interrupts import Interrupted, raised_as_interrupted
    from mtdp_ros.ros import bag_io
    if bag_fleet.is_fleet(args):
        return bag_fleet.run(args)
    # Everything that can be refused without reading the bag, before the model loads.
    bag_io.check_namespace(args.namespace)
    output_options(args)
    read_limits(args)
    bag_io.check_output(args.out)
    try:
        with raised_as_interrupted():
            summary = process_bag(args.input[0], args.out, args,
                                  lambda: engine_from_args(args))
    except Interrupted as exc:
        print(f'mtdp bag: interrupted by {exc.name}: stopped, no partial output left',
              file=sys.stderr)
        return exc.exit_code
    frames, seconds, engine_seconds, messages, topics = summary
    fps = frames / seconds if seconds > 0 else float('inf')
    share = 100.0 * engine_seconds / seconds if seconds > 0 else 0.0
    print(f'mtdp bag: {frames} frame(s) of {args.image_topic} -> {args.out} ({args.storage}, '
          f'{messages} messages on {topics} topics) in {seconds:.1f} s: {fps:.2f} fps '
          f'(engine {share:.0f} % of the time)', file=sys.stderr)
    print(args.out)
    return 0


def process_bag(input_path, output_path, args, engine_source, progress=None, manifest=None,
                replace=False):
    """Write the outputs of the bag at ``input_path`` into a new bag at ``output_path``.

    ``args``: the command's options (an argparse Namespace); ``engine_source()`` returns
    the engine (called once the bag's topics were found usable, so that a bad bag costs no
    model load; a caller running many bags returns the same engine each time).
    ``progress(total)``: an object whose ``update(frames done)`` is called per frame (default
    :class:`Progress` unless ``--no-progress``). ``manifest(frames)``: text written into the
    bag folder as :data:`MANIFEST` before it is moved into place. ``replace``: an existing
    bag at ``output_path`` is replaced once the new one is complete.
    Returns (frames, seconds, engine seconds, messages, topics); errors are CommandError or
    BagError (a ValueError) naming the problem.
    """
    from mtdp_ros.ros import bag_io
    namespace = bag_io.check_namespace(args.namespace)
    options = output_options(args)
    reader = bag_io.open_bag(input_path, read_limits(args))
    try:
        return _process(reader, args, output_path, namespace, options, bag_io, engine_source,
                        progress, manifest, replace)
    finally:
        reader.close()


def _process(reader, args, output_path, namespace, options, bag_io, engine_source, progress,
             manifest, replace):
    """Run the engine on every frame; returns (frames, s, engine s, messages, topics)."""
    from mtdp_ros.ros.camera import FocalCorrection, camera_info_problem
    from mtdp_ros.ros.image_input import ImageRejected
    from mtdp_ros.ros.outputs import output_topics
    from mtdp_ros.ros.stream import CameraStream, FrameSettings
    image_connections, image_type = bag_io.topic_connections(
        reader, args.image_topic, tuple(bag_io.IMAGE_TYPES), 'image topic')
    image_class = bag_io.IMAGE_TYPES[image_type]
    info_connections, infos, info_times = [], [], []
    if args.camera_info_topic:
        info_connections, _ = bag_io.topic_connections(
            reader, args.camera_info_topic, (bag_io.CAMERA_INFO_TYPE,), 'camera info topic')
        for _, timestamp, raw in bag_io.read_messages(reader, info_connections):
            info = bag_io.deserialize(raw, bag_io.CameraInfo, args.camera_info_topic,
                                      timestamp)
            problem = camera_info_problem(info, args.rectified)
            if problem:     # the node ignores such a message; offline, say so and stop
                raise CommandError(f'{args.camera_info_topic} (bag time {timestamp} ns): '
                                   f'{problem}')
            infos.append(info)
            info_times.append(timestamp)
        if not infos:
            raise CommandError(f'camera info topic {args.camera_info_topic} has no messages')
    total = sum(connection.msgcount for connection in image_connections)
    if total == 0:
        raise CommandError(f'image topic {args.image_topic} has no messages')
    tasks = parse_tasks(args.tasks)
    engine = engine_source()
    tasks = engine.select_tasks(tasks)
    if options.publish_points and 'depth' not in tasks:
        print(f'mtdp bag: warning: no points: the depth task is not among {list(tasks)}',
              file=sys.stderr)
        options = dataclasses.replace(options, publish_points=False)
    settings = FrameSettings(tasks=tasks, steps=args.steps, seed=args.seed, options=options)
    # The node's per-frame pipeline: decode, depth rescaled to this camera's focal length
    # (camera.py), infer, build the output messages; a problem stops the command.
    stream = CameraStream(
        focal=FocalCorrection(not args.no_focal_correction, args.rectified,
                              args.camera_info_topic, lambda text: None),
        compressed=image_class.__name__ == 'CompressedImage', input_topic=args.image_topic,
        info_topic=args.camera_info_topic or '', on_problem=_points_problem,
        on_reject=_reject)
    copied = image_connections + info_connections if args.copy_input else []
    written = {output_topic(namespace, topic) for topic, _ in output_topics(tasks)}
    clashes = sorted(written & {connection.topic for connection in copied})
    if clashes:
        raise CommandError(f'--copy-input would write {", ".join(clashes)} twice (an input '
                           f'topic among the outputs): choose another --namespace')
    frames = 0
    engine_seconds = 0.0
    progress = progress(total) if progress else Progress(total, enabled=not args.no_progress)
    with bag_io.BagWriter(output_path, args.storage, replace=replace) as writer:
        stream.sink = sink = BagSink(writer, namespace)
        for connection in copied:
            if connection.topic not in writer.counts:
                definition = connection.msgdef.data if connection.msgdef else ''
                if definition and connection.digest:
                    writer.add_topic(connection.topic, connection.msgtype, definition,
                                     connection.digest)
                else:
                    writer.add_topic(connection.topic, connection.msgtype)
        started = time.perf_counter()
        reading = image_connections + (info_connections if args.copy_input else [])
        for connection, timestamp, raw in bag_io.read_messages(reader, reading):
            if args.copy_input:
                writer.write_raw(connection.topic, timestamp, raw)
            if connection.topic != args.image_topic:
                continue
            msg = bag_io.deserialize(raw, image_class, args.image_topic, timestamp)
            stream.camera_info = camera_info_at(infos, info_times, timestamp)
            sink.timestamp = timestamp
            try:
                result = stream.process(engine, msg, settings)
            except (ImageRejected, ValueError) as exc:
                raise CommandError(f'{args.image_topic}: frame {frames} (bag time {timestamp} '
                                   f'ns) cannot be processed: {bag_io.one_line(exc)}'
                                   ) from None
            engine_seconds += result.engine_s
            frames += 1
            progress.update(frames)
        messages = sum(writer.counts.values())
        topics = len(writer.counts)
        if manifest is not None:
            writer.extra_files[MANIFEST] = manifest(frames)
    # Leaving the block closed the bag (index, metadata) and moved it into place.
    seconds = time.perf_counter() - started
    return frames, seconds, engine_seconds, messages, topics
