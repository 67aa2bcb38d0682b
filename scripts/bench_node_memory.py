#!/usr/bin/env python3
"""The perception node's resident memory after a burst of large frames, over real DDS.

Starts ``perception_node`` (the tiny reference MLoRE configuration by default: the model's
own memory is small, what remains is the node's: frame and message buffers, output
building, DDS histories), subscribes reliably to every output, and sends frames one at a
time (each waits for its outputs, so none is dropped): ``--small-count`` small frames,
``--big-count`` large ones, then small ones again. Prints one JSON line: the node's
resident memory (VmRSS) after each phase and its peak (VmHWM), MiB.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_node_memory.py --big-count 25
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / 'test'))

from ros_harness import (TINY_MLORE, camera_info, image_msg,  # noqa: E402
                         make_stamp, node_processes, pattern_image, write_config)


def status_mb(pid, field):
    """A /proc/<pid>/status memory field (VmRSS, VmHWM) in MiB."""
    with open(f'/proc/{pid}/status', encoding='ascii') as handle:
        for line in handle:
            if line.startswith(field + ':'):
                return round(int(line.split()[1]) / 1024.0, 1)
    raise RuntimeError(f'no {field}')


def main():
    """Run the phases; print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--big', default='2160x3840', help='HxW of the large frames')
    parser.add_argument('--small', default='480x640', help='HxW of the small frames')
    parser.add_argument('--big-count', type=int, default=25)
    parser.add_argument('--small-count', type=int, default=15)
    parser.add_argument('--model', default=None, help='model.preset (default: tiny MLoRE)')
    parser.add_argument('--domain', type=int, default=87)
    args = parser.parse_args()
    from sensor_msgs.msg import Image
    from mtdp_ros.ros.outputs import output_topics
    directory = tempfile.mkdtemp(prefix='bench_node_memory_')
    model = args.model or write_config(directory, TINY_MLORE)
    tasks = TINY_MLORE['tasks'] if args.model is None else None
    topics = [(msg_type, topic) for topic, msg_type in output_topics(tasks or ['depth'])]
    params = {'model.preset': model, 'input.max_pixels': 2 ** 31 - 1}
    with node_processes(args.domain, directory, {'node': {'params': params}},
                        [(t, n) for t, n in topics]) as (started, client):
        node = started['node']
        pid = node.process.pid
        publisher = client.publisher(Image, 'image', reliable=True)
        info = client.publisher(type(camera_info(1, 1)), 'camera_info', reliable=True)
        assert node.wait_for_log('ready', 180.0), node.log()
        assert client.wait_for_subscribers('image'), node.log()
        for msg_type, topic in topics:
            assert client.wait_for_publishers(topic, timeout=120.0), node.log()
        figures = {'big': args.big, 'small': args.small, 'big_count': args.big_count,
                   'small_count': args.small_count, 'model': args.model or 'tiny_mlore'}

        def phase(size, count, name):
            height, width = (int(v) for v in size.split('x'))
            rgb = pattern_image(height, width)
            for _ in range(count):
                # Sent again until answered (the first may go before the match is made).
                for _ in range(10):
                    info.publish(camera_info(width, height))
                    stamp = make_stamp()
                    publisher.publish(image_msg(rgb, stamp=stamp))
                    if client.wait_for_stamp([n for _, n in topics], stamp, 60.0):
                        break
                else:
                    raise RuntimeError(f'no outputs for a {size} frame: {node.log()[-2000:]}')
                client.clear()
            figures[name + '_rss_mb'] = status_mb(pid, 'VmRSS')

        phase(args.small, args.small_count, 'small_before')
        phase(args.big, args.big_count, 'after_big')
        phase(args.small, args.small_count, 'small_after')
        figures['peak_mb'] = status_mb(pid, 'VmHWM')
    print(json.dumps(figures))
    return 0


if __name__ == '__main__':
    sys.exit(main())
