"""``mtdp bag INPUT --out OUTPUT --image-topic T``: the node's outputs for every frame of a bag.

Reads a rosbag2 bag (a folder of sqlite3 or mcap storage, or one ``.db3``/``.mcap`` file),
runs the engine on every message of the image topic (sensor_msgs/Image or
CompressedImage, chosen by the topic's type in the bag) and writes a new bag with the
messages the node would publish, under ``--namespace``: each with the input frame's header
and size, recorded at the input message's bag timestamp. With ``--camera-info-topic`` the
point cloud ``points`` is written too, from the camera_info recorded last at or before the
frame (frames recorded before the first camera_info use the first one).

Several cameras: ``--image-topic`` (and ``--camera-info-topic``, paired in order) given
several times, or ``--cameras NAME=TOPIC[,INFO_TOPIC] ...``: each camera's outputs go
under ``NS/NAME/``, and the cameras' frames run through the engine in batches as in the
node (one frame per camera, consecutive in bag time, at most ``--max-batch``). With
several ``--image-topic``, a camera's NAME is its topic's namespace (``/cam_front/image_raw``
-> ``cam_front``).

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
from typing import Optional

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
    parser.add_argument('--image-topic', action='append', metavar='TOPIC',
                        help='sensor_msgs/Image or sensor_msgs/CompressedImage topic; give it '
                             'several times for several cameras')
    parser.add_argument('--camera-info-topic', action='append', metavar='TOPIC',
                        help='sensor_msgs/CameraInfo topic: also write the point cloud '
                             '(several cameras: one per --image-topic, in order)')
    parser.add_argument('--cameras', nargs='+', metavar='NAME=TOPIC[,INFO_TOPIC]',
                        help='several cameras by name: outputs under NS/NAME/')
    parser.add_argument('--max-batch', type=int, default=8, metavar='N',
                        help='most frames (one per camera) run as one batch (default 8)')
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
    add_warm_start_arguments(parser)
    from mtdp_ros.cli import bag_fleet
    bag_fleet.add_arguments(parser)
    parser.set_defaults(func=run)


def add_warm_start_arguments(parser):
    """``--warm-start`` and its knobs (the node's diffusion.warm_* parameters)."""
    from mtdp_ros.runtime.warm_runner import WarmStartSettings
    video = parser.add_argument_group('video (TaskDiffusion, torch backend)')
    video.add_argument('--warm-start', action='store_true',
                       help="start each frame's denoising from the previous frame's map "
                            "(the node's diffusion.warm_start); every bag starts cold")
    video.add_argument('--warm-strength', type=float, metavar='S',
                       help=f'warm-start strength, 0 < S <= 1 (default '
                            f'{WarmStartSettings.strength:g})')
    video.add_argument('--warm-max-gap', type=float, metavar='SEC',
                       help=f'start cold after a gap between frames longer than this '
                            f'(header stamps, else bag times; default '
                            f'{WarmStartSettings.max_gap_s:g})')
    video.add_argument('--cut-threshold', type=float, metavar='T',
                       help=f'start cold when the image change exceeds T (a scene cut; '
                            f'default {WarmStartSettings.cut_threshold:g})')


WARM_OPTIONS = (('--warm-strength', 'warm_strength', 'strength'),
                ('--warm-max-gap', 'warm_max_gap', 'max_gap_s'),
                ('--cut-threshold', 'cut_threshold', 'cut_threshold'))


def warm_settings(args):
    """The WarmStartSettings of the options; CommandError naming a bad one.

    With ``--warm-start`` the options left out are set to their defaults in ``args`` (so a
    manifest states the values used); without it they must be left out.
    """
    from mtdp_ros.runtime.warm_runner import WarmStartSettings
    given = {field: getattr(args, name, None) for _, name, field in WARM_OPTIONS}
    if not getattr(args, 'warm_start', False):
        for flag, name, _ in WARM_OPTIONS:
            if getattr(args, name, None) is not None:
                raise CommandError(f'{flag} needs --warm-start')
        return WarmStartSettings()
    if args.backend != 'torch':
        raise CommandError(f'--warm-start needs --backend torch: the {args.backend} engine '
                           f'serves cold starts only')
    values = {}
    for flag, name, field in WARM_OPTIONS:
        value = given[field]
        value = getattr(WarmStartSettings, field) if value is None else value
        try:
            WarmStartSettings.checked(True, **{field: value})
        except ValueError:
            bounds = '0 < S <= 1' if field == 'strength' else 'a positive number'
            raise CommandError(f'{flag} must be {bounds}, got {value}') from None
        values[field] = value
        setattr(args, name, value)
    return WarmStartSettings.checked(True, **values)


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


@dataclasses.dataclass
class BagCamera:
    """One camera of the input bag: its topics, its stream and where its outputs go."""

    name: str                      # '' for the single camera (outputs right under NS)
    image_topic: str
    info_topic: Optional[str] = None
    infos: list = dataclasses.field(default_factory=list)
    info_times: list = dataclasses.field(default_factory=list)
    stream: object = None
    sink: object = None
    frames: int = 0                # frames of this camera queued so far
    timestamp: int = 0             # bag time of its frame in the batch being formed


def camera_specs(args):
    """The BagCameras of the command line; CommandError naming a bad option."""
    from mtdp_ros.ros.parameters import check_cameras
    images = args.image_topic or []
    infos = args.camera_info_topic or []
    if args.cameras:
        if images or infos:
            raise CommandError('give either --cameras or --image-topic/--camera-info-topic, '
                               'not both')
        cameras = []
        for spec in args.cameras:
            name, _, topics = spec.partition('=')
            parts = [part.strip() for part in topics.split(',')]
            if not name or not parts[0] or len(parts) > 2:
                raise CommandError(f'--cameras {spec!r}: expected NAME=TOPIC[,INFO_TOPIC]')
            cameras.append(BagCamera(name.strip(), parts[0],
                                     parts[1] if len(parts) == 2 and parts[1] else None))
    else:
        if not images:
            raise CommandError('give --image-topic (or --cameras NAME=TOPIC[,INFO_TOPIC])')
        if infos and len(infos) != len(images):
            raise CommandError(f'--camera-info-topic: give one per --image-topic '
                               f'({len(images)}), in the same order; got {len(infos)}')
        infos = infos or [None] * len(images)
        if len(images) == 1:
            return [BagCamera('', images[0], infos[0])]
        cameras = [BagCamera(topic_camera_name(topic, index), topic, info)
                   for index, (topic, info) in enumerate(zip(images, infos))]
    topics = [camera.image_topic for camera in cameras]
    if len(set(topics)) != len(topics):
        raise CommandError(f'an image topic is given twice: {topics}')
    reason = check_cameras([camera.name for camera in cameras])
    if reason:
        raise CommandError(reason.replace('cameras', '--cameras', 1) + (
            '' if args.cameras else '; name the cameras with --cameras NAME=TOPIC'))
    if args.max_batch < 1:
        raise CommandError(f'--max-batch must be >= 1, got {args.max_batch}')
    return cameras


def topic_camera_name(topic, index):
    """A camera's name from its image topic: the topic's namespace (else ``camera<i>``)."""
    parent = topic.strip('/').rpartition('/')[0]
    return parent or f'camera{index}'


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
                         publish_points=bool(args.camera_info_topic) or any(
                             ',' in spec for spec in args.cameras or ()),
                         points_stride=args.points_stride, points_color=args.points_color,
                         depth_color_min=args.depth_color_min,
                         depth_color_max=args.depth_color_max,
                         camera_rectified=args.rectified)


def _points_problem(kind, text):
    raise CommandError(text)


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
    from mtdp_ros.ros.batching import BatchStatistics
    if bag_fleet.is_fleet(args):
        return bag_fleet.run(args)
    # Everything that can be refused without reading the bag, before the model loads.
    bag_io.check_namespace(args.namespace)
    cameras = camera_specs(args)
    output_options(args)
    read_limits(args)
    warm_settings(args)
    bag_io.check_output(args.out)
    try:
        with raised_as_interrupted():
            batches = BatchStatistics()
            summary = process_bag(args.input[0], args.out, args,
                                  lambda: engine_from_args(args), batches=batches)
    except Interrupted as exc:
        print(f'mtdp bag: interrupted by {exc.name}: stopped, no partial output left',
              file=sys.stderr)
        return exc.exit_code
    frames, seconds, engine_seconds, messages, topics = summary
    fps = frames / seconds if seconds > 0 else float('inf')
    share = 100.0 * engine_seconds / seconds if seconds > 0 else 0.0
    inputs = ', '.join(camera.image_topic for camera in cameras)
    batched = f', batch sizes {batches.histogram()}' if len(cameras) > 1 else ''
    print(f'mtdp bag: {frames} frame(s) of {inputs} -> {args.out} ({args.storage}, '
          f'{messages} messages on {topics} topics) in {seconds:.1f} s: {fps:.2f} fps '
          f'(engine {share:.0f} % of the time{batched})', file=sys.stderr)
    print(args.out)
    return 0


def process_bag(input_path, output_path, args, engine_source, progress=None, manifest=None,
                replace=False, batches=None):
    """Write the outputs of the bag at ``input_path`` into a new bag at ``output_path``.

    ``args``: the command's options (an argparse Namespace); ``engine_source()`` returns
    the engine (called once the bag's topics were found usable, so that a bad bag costs no
    model load; a caller running many bags returns the same engine each time).
    ``progress(total)``: an object whose ``update(frames done)`` is called per frame (default
    :class:`Progress` unless ``--no-progress``). ``manifest(frames)``: text written into the
    bag folder as :data:`MANIFEST` before it is moved into place. ``replace``: an existing
    bag at ``output_path`` is replaced once the new one is complete. ``batches``: a
    :class:`~mtdp_ros.ros.batching.BatchStatistics` the batches are counted in.
    Returns (frames, seconds, engine seconds, messages, topics); errors are CommandError or
    BagError (a ValueError) naming the problem.
    """
    from mtdp_ros.ros import bag_io
    namespace = bag_io.check_namespace(args.namespace)
    cameras = camera_specs(args)
    options = output_options(args)
    warm = warm_settings(args)
    reader = bag_io.open_bag(input_path, read_limits(args))
    try:
        return _process(reader, args, output_path, cameras, namespace, options, warm, bag_io,
                        engine_source, progress, manifest, replace, batches)
    finally:
        reader.close()


def _read_camera_infos(reader, camera, rectified, bag_io):
    """Fill ``camera.infos``/``info_times``; (connections); CommandError if unusable."""
    from mtdp_ros.ros.camera import camera_info_problem
    if not camera.info_topic:
        return []
    connections, _ = bag_io.topic_connections(
        reader, camera.info_topic, (bag_io.CAMERA_INFO_TYPE,), 'camera info topic')
    for _, timestamp, raw in bag_io.read_messages(reader, connections):
        info = bag_io.deserialize(raw, bag_io.CameraInfo, camera.info_topic, timestamp)
        problem = camera_info_problem(info, rectified)
        if problem:     # the node ignores such a message; offline, say so and stop
            raise CommandError(f'{camera.info_topic} (bag time {timestamp} ns): {problem}')
        camera.infos.append(info)
        camera.info_times.append(timestamp)
    if not camera.infos:
        raise CommandError(f'camera info topic {camera.info_topic} has no messages')
    return connections


def _frame_problem(camera):
    """The on_reject of ``camera``'s stream: the frame in the batch stops the command."""
    def reject(kind, exc):
        raise CommandError(f'{camera.image_topic}: frame {camera.frames - 1} (bag time '
                           f'{camera.timestamp} ns) cannot be processed: '
                           f'{one_line(exc)}') from None
    return reject


def one_line(exc):
    """``exc`` as one line (bag_io's wording)."""
    from mtdp_ros.ros import bag_io
    return bag_io.one_line(exc)


def _process(reader, args, output_path, cameras, namespace, options, warm, bag_io,
             engine_source, progress, manifest, replace, batches):
    """Run the engine on every frame; returns (frames, s, engine s, messages, topics).

    The camera streams are this bag's: a warm start begins cold with every bag, even when
    the engine served another bag before.
    """
    from mtdp_ros.ros.batching import BatchStatistics, run_batch
    from mtdp_ros.ros.camera import FocalCorrection
    from mtdp_ros.ros.outputs import output_topics
    from mtdp_ros.ros.stream import CameraStream, FrameSettings
    from mtdp_ros.runtime.warm_runner import warm_start_problem
    image_connections, info_connections, image_classes = [], [], {}
    total = 0
    for camera in cameras:
        connections, image_type = bag_io.topic_connections(
            reader, camera.image_topic, tuple(bag_io.IMAGE_TYPES), 'image topic')
        image_connections += connections
        image_classes[camera.image_topic] = bag_io.IMAGE_TYPES[image_type]
        info_connections += _read_camera_infos(reader, camera, args.rectified, bag_io)
        count = sum(connection.msgcount for connection in connections)
        if count == 0:
            raise CommandError(f'image topic {camera.image_topic} has no messages')
        total += count
    tasks = parse_tasks(args.tasks)
    engine = engine_source()
    tasks = engine.select_tasks(tasks)
    problem = warm_start_problem(engine) if warm.enabled else None
    if problem:
        raise CommandError(f'--warm-start: {problem}')
    if options.publish_points and 'depth' not in tasks:
        print(f'mtdp bag: warning: no points: the depth task is not among {list(tasks)}',
              file=sys.stderr)
        options = dataclasses.replace(options, publish_points=False)
    # The node's per-frame pipeline per camera: decode, depth rescaled to this camera's
    # focal length (camera.py), infer (batched), build the output messages; a problem
    # stops the command. Camera i draws its noise from seed + i, as in the node.
    settings = {}
    for index, camera in enumerate(cameras):
        settings[camera.name] = FrameSettings(
            tasks=tasks, steps=args.steps,
            seed=None if args.seed is None else args.seed + index,
            options=dataclasses.replace(options, publish_points=options.publish_points
                                        and bool(camera.info_topic)), warm=warm)
        camera.stream = CameraStream(
            camera.name,
            focal=FocalCorrection(not args.no_focal_correction, args.rectified,
                                  camera.info_topic, lambda text: None),
            compressed=image_classes[camera.image_topic].__name__ == 'CompressedImage',
            input_topic=camera.image_topic, info_topic=camera.info_topic or '',
            on_problem=_points_problem, on_reject=_frame_problem(camera))
    copied = image_connections + info_connections if args.copy_input else []
    written = {output_topic(namespace, camera.stream.topic(topic))
               for camera in cameras for topic, _ in output_topics(tasks)}
    clashes = sorted(written & {connection.topic for connection in copied})
    if clashes:
        raise CommandError(f'--copy-input would write {", ".join(clashes)} twice (an input '
                           f'topic among the outputs): choose another --namespace')
    by_topic = {camera.image_topic: camera for camera in cameras}
    statistics = batches if batches is not None else BatchStatistics()
    done = [0, 0.0]                # frames, engine seconds
    # A caller's own progress (several bags) also keeps this bag's summary lines quiet.
    quiet = progress is not None
    progress = progress(total) if progress else Progress(total, enabled=not args.no_progress)
    pending = {}                   # camera name -> (camera, msg, bag time), in bag-time order

    def flush():
        entries = list(pending.values())
        pending.clear()
        if not entries:
            return
        # Frames without a header stamp are timed by their bag time (warm start's gap).
        # One engine call for the whole batch (under warm start too: each camera's frame
        # starts warm or cold by its own map); frame by frame only if the engine refused it.
        engine_before = statistics.engine_seconds
        results = run_batch(engine, [(camera.stream, settings[camera.name], msg, timestamp)
                                     for camera, msg, timestamp in entries],
                            statistics=statistics)
        done[1] += statistics.engine_seconds - engine_before
        done[0] += len(results)
        progress.update(done[0])

    with bag_io.BagWriter(output_path, args.storage, replace=replace) as writer:
        for camera in cameras:
            camera.stream.sink = camera.sink = BagSink(
                writer, output_topic(namespace, camera.name) if camera.name else namespace)
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
            camera = by_topic.get(connection.topic)
            if camera is None:
                continue
            # A batch holds one frame per camera: this camera's next frame starts a new one.
            if camera.name in pending or len(pending) >= args.max_batch:
                flush()
            msg = bag_io.deserialize(raw, image_classes[camera.image_topic],
                                     camera.image_topic, timestamp)
            camera.stream.camera_info = camera_info_at(camera.infos, camera.info_times,
                                                       timestamp)
            camera.sink.timestamp = camera.timestamp = timestamp
            camera.frames += 1
            pending[camera.name] = (camera, msg, timestamp)
        flush()
        messages = sum(writer.counts.values())
        topics = len(writer.counts)
        if manifest is not None:
            writer.extra_files[MANIFEST] = manifest(done[0])
    # Leaving the block closed the bag (index, metadata) and moved it into place.
    seconds = time.perf_counter() - started
    for camera in cameras:
        if warm.enabled and camera.stream.engine_state is not None and not quiet:
            report = camera.stream.engine_state.report()
            name = f' of camera {camera.name}' if camera.name else ''
            print(f'mtdp bag: warm start{name}: {report["warm_start_warm_frames"]} warm, '
                  f'{report["warm_start_cold_frames"]} cold frame(s) (last cold: '
                  f'{report["warm_start_last_cold_reason"]})', file=sys.stderr)
    return done[0], seconds, done[1], messages, topics
