#!/usr/bin/env python3
"""The perception node's own overhead per frame, beside the engine's time.

Builds the real node in-process (real engine, real publishers), subscribes to its outputs
over DDS from another process, and feeds camera frames straight into the node's frame
pipeline (conversion -> engine -> colouring -> messages -> publish), so that timings are
not blurred by transport jitter. Four cases:

- ``raw only (colour off)``: only the raw outputs subscribed (the colour images are then
  not even computed: publish.color stays true);
- ``colour only``: only the colour images subscribed (an RViz user);
- ``raw + colour``: both;
- ``raw + colour + points``: as above, plus the point cloud (camera_info given).

Prints a markdown table of medians (ms): conversion, the engine's network (model) and its
letterbox + resize back (pre/post), building and publishing the raw outputs, the colour
images and the cloud, and the node overhead = everything but the network.

    python scripts/bench_node.py                     # default model, 640 x 480, CPU
    python scripts/bench_node.py --model path/to/config.json --frames 30 --device cuda
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np


def build_parser():
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='default', help="model.preset ('default')")
    parser.add_argument('--device', default='cpu', choices=('auto', 'cuda', 'cpu'))
    parser.add_argument('--backend', default='torch', choices=('torch', 'onnxruntime'))
    parser.add_argument('--precision', default='fp32', choices=('fp32', 'fp16'))
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--encoding', default='bgr8', help='camera encoding (bgr8)')
    parser.add_argument('--frames', type=int, default=15, help='timed frames per case')
    parser.add_argument('--warmup', type=int, default=3, help='untimed frames per case')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS domain (default: derived from the pid)')
    return parser


def camera_frame(width, height, encoding):
    """A structured test image as a camera message."""
    from mtdp_ros.ros.image_output import rgb_to_image_msg
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xs * 255 // max(1, width - 1)), (ys * 255 // max(1, height - 1)),
                    ((xs // 32 + ys // 32) % 2) * 200], axis=-1).astype(np.uint8)
    return rgb_to_image_msg(rgb, encoding)


def camera_info(width, height):
    """A pinhole CameraInfo for the frame."""
    from sensor_msgs.msg import CameraInfo
    info = CameraInfo()
    info.width, info.height = width, height
    fx = float(width)
    info.k = [fx, 0.0, (width - 1) / 2.0, 0.0, fx, (height - 1) / 2.0, 0.0, 0.0, 1.0]
    info.distortion_model = 'plumb_bob'
    info.d = [0.0] * 5
    return info


def reset_statistics(node):
    """Forget the node's timing samples (warm-up frames are not timed)."""
    node.statistics.reset_samples()


def listen(topics):
    """Subscribe to ``topics`` (reliable) and spin until Ctrl-C (the --listen mode)."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, PointCloud2
    rclpy.init()
    node = rclpy.create_node('bench_listener')
    qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
    for topic in topics:
        node.create_subscription(PointCloud2 if topic == 'points' else Image, topic,
                                 lambda msg: None, qos)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    rclpy.try_shutdown()
    return 0


def main(argv=None):
    """Run the three cases and print the table; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == '--listen':
        return listen(argv[1:])
    args = build_parser().parse_args(argv)
    domain = args.domain_id if args.domain_id is not None else 150 + os.getpid() % 50
    os.environ['ROS_DOMAIN_ID'] = str(domain)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    import rclpy
    from rclpy.parameter import Parameter

    from mtdp_ros.perception_node import STAGES, PerceptionNode
    from mtdp_ros.ros.outputs import OUTPUT_TOPICS

    rclpy.init()
    node = PerceptionNode(parameter_overrides=[
        Parameter('model.preset', value=args.model),
        Parameter('engine.device', value=args.device),
        Parameter('engine.backend', value=args.backend),
        Parameter('engine.precision', value=args.precision),
        Parameter('watchdog.timeout', value=3600.0)])
    if not node.run_autostart():        # configure + activate (the reason is logged)
        return 1
    tasks = node.engine.tasks
    raw_topics = [OUTPUT_TOPICS[t][0] for t in tasks]
    color_topics = [OUTPUT_TOPICS[t][1] for t in tasks]
    publishers = node.streams[0].sink.publishers
    listeners = []

    def start_listener(topics):
        """Subscribers in another process, so deserialising never competes for our GIL."""
        listeners.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), '--listen', *topics],
            env=dict(os.environ)))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # Every topic of the case subscribed, none of the others (the previous
            # listener has left).
            if all(bool(publisher.get_subscription_count()) == (topic in topics)
                   for topic, publisher in publishers.items()):
                return
            time.sleep(0.05)
        raise RuntimeError(f'subscriptions to exactly {topics} were not matched')

    frame = camera_frame(args.width, args.height, args.encoding)
    node.streams[0].on_camera_info(camera_info(args.width, args.height))
    results = []
    cases = (('raw only (colour off)', raw_topics), ('colour only', color_topics),
             ('raw + colour', raw_topics + color_topics),
             ('raw + colour + points', raw_topics + color_topics + ['points']))
    for name, topics in cases:
        for listener in listeners:
            listener.send_signal(signal.SIGINT)
            listener.wait(10)
        listeners.clear()
        start_listener(topics)
        for index in range(args.warmup + args.frames):
            if index == args.warmup:
                reset_statistics(node)
            frame.header.stamp = node.get_clock().now().to_msg()
            node._process(node.streams[0], frame, node.get_clock().now().nanoseconds)
        row = {'case': name}
        for stage in STAGES:
            row[stage] = node.statistics.stage_ms[stage].percentile(50)
        row['model'] = node.statistics.model_ms.percentile(50)
        row['total'] = node.statistics.processing_ms.percentile(50)
        row['overhead'] = node.statistics.overhead_ms.percentile(50)
        results.append(row)
    for listener in listeners:
        listener.send_signal(signal.SIGINT)
        listener.wait(10)
    engine = node.engine
    print(f'model {engine.model_name} ({engine.config.family}, input '
          f'{engine.config.image_size[0]}x{engine.config.image_size[1]}, random weights '
          f'{engine.random_weights}), backend {engine.backend}, device {engine.device}; '
          f'camera {args.width}x{args.height} {args.encoding}; {args.frames} frames per case; '
          f'medians in ms; CPU threads {os.cpu_count()}')
    columns = ('convert', 'publish_raw', 'publish_color', 'publish_points', 'node_own',
               'engine_pre_post', 'overhead', 'model', 'total')
    print('| case | ' + ' | '.join(columns) + ' |')
    print('|' + '---|' * (len(columns) + 1))
    for row in results:
        print(f'| {row["case"]} | ' + ' | '.join(f'{row[c]:.1f}' for c in columns) + ' |')
    print('node_own = conversion + building and publishing the raw, colour and cloud '
          'messages (per frame); overhead = everything but the network (node_own, the '
          'engine\'s letterbox and resizing back, and its call overhead).')
    node.destroy_node()
    rclpy.try_shutdown()
    return 0 if statistics.fmean(r['total'] for r in results) > 0 else 1


if __name__ == '__main__':
    sys.exit(main())
