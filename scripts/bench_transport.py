#!/usr/bin/env python3
"""Frame loss and latency of camera-sized images between two processes over Fast DDS.

A publisher process sends rgb8 images (the header stamp is the wall-clock time of the
publish, the frame_id the frame's index) at ``--rate`` Hz on ``--topics`` topics per frame
(1: a camera; several: the node's outputs of one frame) to a subscriber process on the same
host. Each case runs in its own ROS domain with discovery on this host only. Before the
measured frames the publisher waits for the subscriber to be matched and sends one second
of warm-up frames, so discovery costs nothing. A frame counts as received when it arrived
on every topic ("complete"); latency is the time from publish to the subscriber's callback.

Cases (``--cases``, comma-separated; the default runs all):

- ``best_effort``: best-effort publisher and subscription (a sensor_data camera, today's
  ``input.qos: sensor_data``), default Fast DDS transports (UDP + shared memory);
- ``best_effort+large_data``: the same with FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA;
- ``reliable``: reliable publisher and subscription, default transports;
- ``reliable+large_data``: reliable, LARGE_DATA;
- ``reliable_pub/best_effort_sub`` (+large_data): a reliable camera driver read by a
  best-effort subscription (what ``sensor_data`` gets from most drivers);
- ``outputs_depth2`` / ``outputs_depth10`` (+large_data): ``--output-topics`` reliable
  topics per frame with writer history 2 / 10 and a reliable subscriber (a recorder).

    python scripts/bench_transport.py --frames 300
    python scripts/bench_transport.py --cases reliable,reliable+large_data --sizes 640x480
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import zlib

CASES = {
    # name: (publisher reliable, subscriber reliable, writer depth, LARGE_DATA, outputs)
    'best_effort': (False, False, 5, False, False),
    'best_effort+large_data': (False, False, 5, True, False),
    'reliable': (True, True, 5, False, False),
    'reliable+large_data': (True, True, 5, True, False),
    'reliable_pub/best_effort_sub': (True, False, 5, False, False),
    'reliable_pub/best_effort_sub+large_data': (True, False, 5, True, False),
    'outputs_depth2': (True, True, 2, False, True),
    'outputs_depth2+large_data': (True, True, 2, True, True),
    'outputs_depth10': (True, True, 10, False, True),
    'outputs_depth10+large_data': (True, True, 10, True, True),
}
WARMUP_SECONDS = 1.0


def build_parser():
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=300, help='measured frames per case')
    parser.add_argument('--rate', type=float, default=30.0, help='frames per second')
    parser.add_argument('--sizes', default='640x480,1280x720', help='WIDTHxHEIGHT,...')
    parser.add_argument('--cases', default=','.join(CASES), help='cases to run (see above)')
    parser.add_argument('--output-topics', type=int, default=4,
                        help='topics per frame of the outputs_* cases')
    parser.add_argument('--discovery-range', default='LOCALHOST',
                        choices=('LOCALHOST', 'SUBNET', 'SYSTEM_DEFAULT'),
                        help='ROS_AUTOMATIC_DISCOVERY_RANGE of both processes')
    parser.add_argument('--json', help='also write the results to this JSON file')
    # Internal: the two roles of one case.
    parser.add_argument('--role', choices=('publisher', 'subscriber'), help=argparse.SUPPRESS)
    parser.add_argument('--size', help=argparse.SUPPRESS)
    parser.add_argument('--topics', type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument('--reliable', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--depth', type=int, default=5, help=argparse.SUPPRESS)
    return parser


def qos(reliable, depth):
    """Keep-last ``depth``, volatile; reliable or best effort."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliable
                      else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def topic_names(count):
    """The topics of one case."""
    return [f'bench/image_{k}' for k in range(count)]


def run_publisher(args):
    """Publisher role: warm-up, then ``--frames`` measured frames; prints nothing."""
    import rclpy
    from rclpy.duration import Duration
    from sensor_msgs.msg import Image
    width, height = (int(v) for v in args.size.split('x'))
    rclpy.init()
    node = rclpy.create_node('bench_transport_publisher')
    publishers = [node.create_publisher(Image, name, qos(args.reliable, args.depth))
                  for name in topic_names(args.topics)]
    msg = Image()
    msg.width, msg.height, msg.encoding, msg.step = width, height, 'rgb8', width * 3
    msg.data = bytes(width * height * 3)
    # Discovery: wait until every topic has matched the subscriber.
    while not all(p.get_subscription_count() >= 1 for p in publishers):
        rclpy.spin_once(node, timeout_sec=0.05)
    period = 1.0 / args.rate
    warmup = int(round(WARMUP_SECONDS * args.rate))
    start = time.monotonic()
    for index in range(-warmup, args.frames):
        target = start + (index + warmup) * period
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)   # the camera's frame clock, not a wait for an event
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
        msg.header.frame_id = str(index)
        for publisher in publishers:
            publisher.publish(msg)
    if args.reliable:
        for publisher in publishers:
            publisher.wait_for_all_acked(Duration(seconds=10))
    node.destroy_node()
    rclpy.shutdown()
    return 0


def run_subscriber(args):
    """Subscriber role: records arrivals until stdin closes; prints one JSON line."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node('bench_transport_subscriber')
    arrivals = {}   # index -> {topic: latency ms}
    last = args.frames - 1

    def callback_for(topic):
        def callback(msg):
            received = time.time_ns()
            sent = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            index = int(msg.header.frame_id)
            if index >= 0:
                arrivals.setdefault(index, {})[topic] = (received - sent) / 1e6
        return callback

    topics = topic_names(args.topics)
    subscriptions = [node.create_subscription(Image, name, callback_for(name),
                                              qos(args.reliable, args.depth))
                     for name in topics]
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    while not closed.is_set() and len(arrivals.get(last, {})) < len(topics):
        executor.spin_once(timeout_sec=0.05)
    complete = [topics_seen for topics_seen in arrivals.values()
                if len(topics_seen) == len(topics)]
    latencies = sorted(max(seen.values()) for seen in complete)
    del subscriptions
    node.destroy_node()
    rclpy.shutdown()
    print(json.dumps({'complete': len(complete), 'latencies_ms': latencies}), flush=True)
    return 0


def percentile(values, fraction):
    """The ``fraction`` quantile of sorted ``values`` (nearest rank), or nan."""
    if not values:
        return float('nan')
    return values[min(len(values) - 1, int(round(fraction * (len(values) - 1))))]


def run_case(name, size, args):
    """Run one case in its own domain; a result row."""
    pub_reliable, sub_reliable, depth, large_data, outputs = CASES[name]
    topics = args.output_topics if outputs else 1
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(1 + zlib.crc32(f'{os.getpid()} {name} {size}'.encode()) % 100)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = args.discovery_range
    env.pop('FASTDDS_BUILTIN_TRANSPORTS', None)
    if large_data:
        env['FASTDDS_BUILTIN_TRANSPORTS'] = 'LARGE_DATA'
    common = [sys.executable, os.path.abspath(__file__), '--size', size, '--frames',
              str(args.frames), '--rate', str(args.rate), '--topics', str(topics),
              '--depth', str(depth)]
    subscriber = subprocess.Popen(
        common + ['--role', 'subscriber'] + (['--reliable'] if sub_reliable else []),
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    publisher = subprocess.Popen(
        common + ['--role', 'publisher'] + (['--reliable'] if pub_reliable else []), env=env)
    publisher_code = publisher.wait()
    try:
        # The subscriber ends by itself on the last frame; a lost last frame ends it here.
        output, _ = subscriber.communicate('', timeout=3.0)
    except subprocess.TimeoutExpired:
        subscriber.stdin.close()
        output, _ = subscriber.communicate(timeout=30.0)
    result = json.loads(output.strip().splitlines()[-1])
    latencies = result['latencies_ms']
    return {'case': name, 'size': size, 'topics': topics, 'writer_depth': depth,
            'sent': args.frames, 'complete': result['complete'],
            'lost_percent': 100.0 * (args.frames - result['complete']) / args.frames,
            'p50_ms': percentile(latencies, 0.5), 'p95_ms': percentile(latencies, 0.95),
            'publisher_exit': publisher_code}


def main(argv=None):
    """Run the chosen cases and sizes; print a markdown table."""
    args = build_parser().parse_args(argv)
    if args.role == 'publisher':
        return run_publisher(args)
    if args.role == 'subscriber':
        return run_subscriber(args)
    cases = [c.strip() for c in args.cases.split(',') if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        print(f'unknown case(s) {unknown}; choose from {list(CASES)}', file=sys.stderr)
        return 2
    rows = []
    print(f'{args.frames} frames at {args.rate:g} Hz per case (after 1 s of warm-up), '
          f'discovery range {args.discovery_range}; '
          f'latency = publish -> subscriber callback of the last topic of a frame')
    print('| case | size | topics | writer depth | complete / sent | lost | p50 ms | p95 ms |')
    print('|---|---|---|---|---|---|---|---|')
    for size in [s.strip() for s in args.sizes.split(',') if s.strip()]:
        for case in cases:
            row = run_case(case, size, args)
            rows.append(row)
            print(f"| {row['case']} | {row['size']} | {row['topics']} | "
                  f"{row['writer_depth']} | {row['complete']} / {row['sent']} | "
                  f"{row['lost_percent']:.1f} % | {row['p50_ms']:.1f} | "
                  f"{row['p95_ms']:.1f} |", flush=True)
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as handle:
            json.dump(rows, handle, indent=1)
    medians = statistics.median(r['p50_ms'] for r in rows) if rows else float('nan')
    print(f'median of the p50 latencies: {medians:.1f} ms')
    return 0


if __name__ == '__main__':
    sys.exit(main())
