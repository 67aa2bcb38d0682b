"""``mtdp bag INPUT --out OUTPUT --image-topic T``: the node's outputs for every frame of a bag.

Reads a rosbag2 bag (a folder of sqlite3 or mcap storage, or one ``.db3``/``.mcap`` file),
runs the engine on every message of the image topic (sensor_msgs/Image or
CompressedImage, chosen by the topic's type in the bag) and writes a new bag with the
messages the node would publish, under ``--namespace``: each with the input frame's header
and size, recorded at the input message's bag timestamp. With ``--camera-info-topic`` the
point cloud ``points`` is written too, from the camera_info recorded last at or before the
frame (frames recorded before the first camera_info use the first one).

The output bag appears only when complete: it is written beside ``--out`` and renamed at
the end, and removed on any error.
"""

import bisect
import os
import sys
import time

from mtdp_ros.cli import CommandError
from mtdp_ros.cli.infer import add_engine_arguments, engine_from_args, parse_tasks

DEFAULT_NAMESPACE = '/mtdp_perception'
PROGRESS_WIDTH = 30


def register(subparsers):
    """Add the ``bag`` sub-command."""
    parser = subparsers.add_parser(
        'bag', help="write the node's outputs for every frame of a rosbag2 bag into a new bag",
        description="Run the model on every image of a rosbag2 bag (sqlite3 or mcap) and write "
                    "the node's output topics, with the frames' headers, into a new bag.")
    parser.add_argument('input', metavar='INPUT', help='rosbag2 bag folder, .mcap or .db3')
    parser.add_argument('--out', required=True, metavar='OUTPUT',
                        help='output bag folder (must not exist)')
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
    add_engine_arguments(parser)
    parser.set_defaults(func=run)


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


def run(args):
    """Process the bag; print the output path; the summary goes to stderr."""
    from mtdp_ros.ros import bag_io
    namespace = bag_io.check_namespace(args.namespace)
    if os.path.lexists(args.out):
        raise CommandError(f'output {args.out} exists already; remove it or choose another '
                           f'--out')
    reader = bag_io.open_bag(args.input)
    try:
        summary = _process(reader, args, namespace, bag_io)
    finally:
        reader.close()
    frames, seconds, messages, topics = summary
    fps = frames / seconds if seconds > 0 else float('inf')
    print(f'mtdp bag: {frames} frame(s) of {args.image_topic} -> {args.out} ({args.storage}, '
          f'{messages} messages on {topics} topics) in {seconds:.1f} s: {fps:.2f} fps',
          file=sys.stderr)
    print(args.out)
    return 0


def _process(reader, args, namespace, bag_io):
    """Run the engine on every frame of ``reader``; returns (frames, s, messages, topics)."""
    from mtdp_ros.ros.conversions import ImageRejected, compressed_msg_to_rgb, image_msg_to_rgb
    image_connections, image_type = bag_io.topic_connections(
        reader, args.image_topic, tuple(bag_io.IMAGE_TYPES), 'image topic')
    image_class = bag_io.IMAGE_TYPES[image_type]
    to_rgb = compressed_msg_to_rgb if image_class.__name__ == 'CompressedImage' else \
        image_msg_to_rgb
    info_connections, infos, info_times = [], [], []
    if args.camera_info_topic:
        info_connections, _ = bag_io.topic_connections(
            reader, args.camera_info_topic, (bag_io.CAMERA_INFO_TYPE,), 'camera info topic')
        for _, timestamp, raw in reader.messages(connections=info_connections):
            infos.append(bag_io.deserialize(raw, bag_io.CameraInfo, args.camera_info_topic,
                                            timestamp))
            info_times.append(timestamp)
        if not infos:
            raise CommandError(f'camera info topic {args.camera_info_topic} has no messages')
    total = sum(connection.msgcount for connection in image_connections)
    if total == 0:
        raise CommandError(f'image topic {args.image_topic} has no messages')
    tasks = parse_tasks(args.tasks)
    engine = engine_from_args(args)
    tasks = engine.select_tasks(tasks)
    copied = image_connections + info_connections if args.copy_input else []
    frames = 0
    progress = Progress(total, enabled=not args.no_progress)
    with bag_io.BagWriter(args.out, args.storage) as writer:
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
        for connection, timestamp, raw in reader.messages(connections=reading):
            if args.copy_input:
                writer.write_raw(connection.topic, timestamp, raw)
            if connection.topic != args.image_topic:
                continue
            msg = bag_io.deserialize(raw, image_class, args.image_topic, timestamp)
            try:
                rgb = to_rgb(msg)
                outputs = engine.infer(rgb, tasks=tasks, steps=args.steps, seed=args.seed)
            except (ImageRejected, ValueError) as exc:
                raise CommandError(f'{args.image_topic}: frame {frames} (bag time {timestamp} '
                                   f'ns) cannot be processed: {bag_io.one_line(exc)}'
                                   ) from None
            info = camera_info_at(infos, info_times, timestamp)
            for relative, out_msg in frame_messages(outputs, msg.header, rgb, info).items():
                writer.write(output_topic(namespace, relative), timestamp, out_msg)
            frames += 1
            progress.update(frames)
        seconds = time.perf_counter() - started
        messages = sum(writer.counts.values())
        topics = len(writer.counts)
    return frames, seconds, messages, topics


def frame_messages(outputs, header, rgb, camera_info):
    """The node's messages of one frame: node-relative topic -> message."""
    from mtdp_ros.perception_node import LABEL_TASKS, OUTPUT_TOPICS, PerceptionNode
    from mtdp_ros.ros import colormaps
    from mtdp_ros.ros.conversions import numpy_to_image_msg
    from mtdp_ros.ros.pointcloud import compute_rays, depth_to_points, points_to_msg
    messages = {}
    for task, values in outputs.items():
        raw_topic, color_topic = OUTPUT_TOPICS[task]
        messages[raw_topic] = numpy_to_image_msg(values, PerceptionNode._raw_encoding(values),
                                                 header)
        if task in LABEL_TASKS:
            colored = colormaps.labels_to_color(values)
        elif task == 'depth':
            colored = colormaps.depth_to_color(values)
        elif task == 'normals':
            colored = colormaps.normals_to_color(values)
        else:
            colored = colormaps.probability_to_color(values)
        messages[color_topic] = numpy_to_image_msg(colored, 'rgb8', header)
    if camera_info is not None and 'depth' in outputs:
        depth = outputs['depth']
        rays = compute_rays(camera_info, depth.shape[1], depth.shape[0])
        messages['points'] = points_to_msg(depth_to_points(depth, rays, rgb), header)
    return messages
