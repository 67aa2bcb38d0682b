"""``mtdp-demo`` (``make demo``): camera -> perception node -> pictures and figures.

Starts the demo camera and the perception node as separate processes (real DDS between
them), watches the node's outputs for a bounded time, then writes one mosaic PNG per
output (input frames beside the output's colour image; the point cloud seen from above)
plus an overview of the last frame into the output folder, and prints the achieved rate
and latency. Exit code 0 when outputs arrived, 1 otherwise (with the node's log tail).
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict, deque

import cv2
import numpy as np

from mtdp_ros.models.tasks import display_order, get_task
from mtdp_ros.runtime.options import BACKENDS, DEVICES, PRECISIONS

NAMESPACE = '/mtdp_demo'
# Colour topics (relative to the namespace, in the task table's display order) and the
# file each mosaic goes to (<topic stem>.png).
COLOR_OUTPUTS = OrderedDict((get_task(name).color_topic, f'{get_task(name).topic_stem}.png')
                            for name in display_order())
MOSAIC_ROWS = 4
TILE_WIDTH = 320
# Frames kept per topic while running (for the mosaics); bounded memory.
KEEP_FRAMES = 40


def build_parser():
    """Command-line options of mtdp-demo."""
    parser = argparse.ArgumentParser(
        prog='mtdp-demo', description='Run the demo camera and the perception node for a '
        'while; write a mosaic per output and print rate and latency.')
    parser.add_argument('--duration', type=float, default=20.0,
                        help='seconds to record once the first output has arrived (20)')
    parser.add_argument('--rate', type=float, default=5.0, help='camera frame rate, Hz (5)')
    parser.add_argument('--source', default='synthetic',
                        help="camera source: synthetic, pattern, a folder or a video file")
    parser.add_argument('--width', type=int, default=640, help='camera width (640)')
    parser.add_argument('--height', type=int, default=480, help='camera height (480)')
    parser.add_argument('--model', default='default',
                        help="model.preset: 'default', a preset, a checkpoint or config file")
    parser.add_argument('--checkpoint', default='', help='model.checkpoint (weights)')
    parser.add_argument('--device', default='auto', choices=DEVICES)
    parser.add_argument('--backend', default='torch', choices=BACKENDS)
    parser.add_argument('--precision', default='fp32', choices=PRECISIONS)
    parser.add_argument('--tasks', default='', help='comma-separated tasks (all)')
    parser.add_argument('--steps', type=int, default=0, help='diffusion steps (0: trained)')
    parser.add_argument('--output', default='demo_output', help='folder for the pictures')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID (default: the environment\'s, else 0)')
    parser.add_argument('--startup-timeout', type=float, default=300.0,
                        help='seconds to wait for the first output (300)')
    return parser


def ros_environment(domain_id):
    """The environment of the demo's processes (and of this one)."""
    env = dict(os.environ)
    if domain_id is not None:
        env['ROS_DOMAIN_ID'] = str(domain_id)
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env['PYTHONUNBUFFERED'] = '1'
    return env


def start_processes(args, env, output):
    """Start the perception node and the demo camera; (node, camera, log paths)."""
    node_params = {
        'model.preset': args.model, 'engine.device': args.device, 'engine.backend': args.backend,
        'engine.precision': args.precision, 'input.qos': 'reliable',
        'diffusion.steps': str(args.steps),
    }
    node_command = [sys.executable, '-m', 'mtdp_ros.perception_node', '--ros-args',
                    '-r', f'__ns:={NAMESPACE}']
    for name, value in node_params.items():
        node_command += ['-p', f'{name}:={value}']
    if args.checkpoint:
        node_command += ['-p', f'model.checkpoint:={args.checkpoint}']
    if args.tasks:
        node_command += ['-p', f'tasks:=[{args.tasks}]']
    camera_command = [sys.executable, '-m', 'mtdp_ros.demo_camera', '--ros-args',
                      '-r', f'__ns:={NAMESPACE}', '-p', f'source:={args.source}',
                      '-p', f'rate:={float(args.rate)}', '-p', f'width:={args.width}',
                      '-p', f'height:={args.height}', '-p', 'qos:=reliable']
    logs = {'node': os.path.join(output, 'node.log'),
            'camera': os.path.join(output, 'camera.log')}
    node = subprocess.Popen(node_command, env=env, stdout=open(logs['node'], 'w'),
                            stderr=subprocess.STDOUT)
    camera = subprocess.Popen(camera_command, env=env, stdout=open(logs['camera'], 'w'),
                              stderr=subprocess.STDOUT)
    return node, camera, logs


def stop(process, timeout=10.0):
    """SIGINT, then SIGKILL after ``timeout``; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


class Recorder:
    """Subscribes to the camera and the node's outputs and keeps recent frames and stats."""

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, PointCloud2
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.node = node
        self.inputs = OrderedDict()
        self.outputs = {topic: deque(maxlen=KEEP_FRAMES) for topic in COLOR_OUTPUTS}
        self.points = deque(maxlen=2)
        self.arrivals = []          # (topic, stamp ns, arrival ns)
        self.diagnostics = None
        self.recording = False
        node.create_subscription(Image, f'{NAMESPACE}/image', self._on_input, qos)
        for topic in COLOR_OUTPUTS:
            node.create_subscription(Image, f'{NAMESPACE}/{topic}',
                                     lambda msg, t=topic: self._on_output(t, msg), qos)
        node.create_subscription(PointCloud2, f'{NAMESPACE}/points', self._on_points, qos)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, qos)

    @staticmethod
    def stamp_ns(msg):
        """Header stamp of a message in nanoseconds."""
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def _on_input(self, msg):
        self.inputs[self.stamp_ns(msg)] = msg
        while len(self.inputs) > 3 * KEEP_FRAMES:
            self.inputs.popitem(last=False)

    def _on_output(self, topic, msg):
        now = self.node.get_clock().now().nanoseconds
        if self.recording:
            self.arrivals.append((topic, self.stamp_ns(msg), now))
        self.outputs[topic].append(msg)

    def _on_points(self, msg):
        self.points.append(msg)

    def _on_diagnostics(self, msg):
        for status in msg.status:
            # The node's status is named '<namespace>/<node name>: perception'.
            if status.name == f'{NAMESPACE.lstrip("/")}/mtdp_perception: perception':
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def first_output_arrived(self):
        """True once any colour output has arrived."""
        return any(self.outputs.values())


def to_rgb(msg):
    """An rgb8 Image as an H x W x 3 array."""
    from mtdp_ros.ros.image_input import image_msg_to_rgb
    return image_msg_to_rgb(msg)


def tile(image, width=TILE_WIDTH):
    """The image scaled to ``width`` pixels wide."""
    height = max(1, int(round(image.shape[0] * width / image.shape[1])))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def label(image, text):
    """The image with ``text`` written in its top-left corner."""
    image = image.copy()
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    cv2.rectangle(image, (0, 0), (width + 10, height + baseline + 8), (0, 0, 0), -1)
    cv2.putText(image, text, (5, height + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (255, 255, 255), 1, cv2.LINE_AA)
    return image


def write_png(path, rgb):
    """Write an RGB image as PNG."""
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f'cannot write {path}')


def output_mosaic(recorder, topic):
    """Rows of [input | output] for up to MOSAIC_ROWS frames spread over the recording."""
    frames = [msg for msg in recorder.outputs[topic]
              if Recorder.stamp_ns(msg) in recorder.inputs]
    if not frames:
        frames = list(recorder.outputs[topic])
    if not frames:
        return None
    picks = np.unique(np.linspace(0, len(frames) - 1, min(MOSAIC_ROWS, len(frames)))
                      .round().astype(int))
    rows = []
    for index in picks:
        msg = frames[index]
        output = tile(to_rgb(msg))
        source = recorder.inputs.get(Recorder.stamp_ns(msg))
        image = tile(to_rgb(source)) if source is not None else np.zeros_like(output)
        rows.append(np.hstack([label(image, 'input'), label(output, topic)]))
    return np.vstack(rows)


def points_view(msg, size=480, extent=8.0):
    """The cloud seen from above (x right, z forward up the picture), points in colour."""
    from mtdp_ros.ros.pointcloud import cloud_msg_to_numpy, unpack_rgb
    cloud = cloud_msg_to_numpy(msg).reshape(-1, 4)
    # Points with a non-finite x or z are not drawn (their pixel would be the integer value
    # of a NaN or an infinity, which is undefined).
    cloud = cloud[np.isfinite(cloud[:, 0]) & np.isfinite(cloud[:, 2])]
    canvas = np.full((size, size, 3), 24, np.uint8)
    if cloud.size == 0:
        return label(canvas, 'points: no valid depth')
    far = float(min(extent, np.percentile(cloud[:, 2], 99) * 1.1 + 1e-3))
    scale = (size - 1) / (2.0 * far)
    columns = np.clip((cloud[:, 0] * scale + size / 2).astype(int), 0, size - 1)
    rows = np.clip((size - 1 - cloud[:, 2] * scale * 2).astype(int), 0, size - 1)
    canvas[rows, columns] = unpack_rgb(cloud[:, 3])
    return label(canvas, f'points from above (0..{far:.1f} m forward)')


def overview(recorder):
    """The last input and the matching colour outputs in one picture."""
    tiles = []
    # The newest frame that every colour topic answered (topics arrive one after another).
    stamps = [{Recorder.stamp_ns(m) for m in frames}
              for frames in recorder.outputs.values() if frames]
    if not stamps:
        return None
    common = set.intersection(*stamps)
    latest = max(common) if common else max(stamps[0])
    if latest in recorder.inputs:
        tiles.append(label(tile(to_rgb(recorder.inputs[latest])), 'input'))
    for topic in COLOR_OUTPUTS:
        match = [m for m in recorder.outputs[topic] if Recorder.stamp_ns(m) == latest]
        if match:
            tiles.append(label(tile(to_rgb(match[-1])), topic))
    height = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
    while len(tiles) % 3:
        tiles.append(np.zeros_like(tiles[0]))
    return np.vstack([np.hstack(tiles[i:i + 3]) for i in range(0, len(tiles), 3)])


def summarise(recorder, duration):
    """Rate and latency figures measured at the demo's subscriber."""
    topic = next((t for t in COLOR_OUTPUTS if any(a[0] == t for a in recorder.arrivals)),
                 None)
    if topic is None:
        return {}
    arrivals = [a for a in recorder.arrivals if a[0] == topic]
    latencies = np.array([(now - stamp) / 1e6 for _, stamp, now in arrivals])
    return {'frames': len(arrivals), 'rate_hz': len(arrivals) / duration,
            'latency_p50_ms': float(np.percentile(latencies, 50)),
            'latency_p95_ms': float(np.percentile(latencies, 95)), 'topic': topic}


def tail(path, lines=30):
    """The last ``lines`` lines of a text file."""
    try:
        with open(path, 'r', encoding='utf-8', errors='replace') as handle:
            return ''.join(handle.readlines()[-lines:])
    except OSError:
        return ''


def run(args):
    """Run the demo; returns the exit code."""
    output = os.path.abspath(args.output)
    os.makedirs(output, exist_ok=True)
    domain = args.domain_id
    if domain is None:
        domain = int(os.environ.get('ROS_DOMAIN_ID', '0') or 0)
    env = ros_environment(domain)
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')})
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    print(f'mtdp-demo: model {args.model}, device {args.device}, camera {args.source} '
          f'{args.width}x{args.height} at {args.rate:g} Hz, ROS domain {domain}, '
          f'namespace {NAMESPACE}', flush=True)
    node_process, camera_process, logs = start_processes(args, env, output)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    ros_node = rclpy.create_node('mtdp_demo_recorder', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(ros_node)
    recorder = Recorder(ros_node)
    code = 1
    summary = {}
    try:
        started = time.monotonic()
        print('mtdp-demo: waiting for the first output (loading the model, rendering scenes)'
              '...', flush=True)
        while not recorder.first_output_arrived():
            executor.spin_once(timeout_sec=0.1)
            if node_process.poll() is not None or camera_process.poll() is not None:
                break
            if time.monotonic() - started > args.startup_timeout:
                break
        if recorder.first_output_arrived():
            print(f'mtdp-demo: first output after {time.monotonic() - started:.1f} s; '
                  f'recording for {args.duration:g} s', flush=True)
            recorder.recording = True
            record_start = time.monotonic()
            while time.monotonic() - record_start < args.duration:
                executor.spin_once(timeout_sec=0.1)
                if node_process.poll() is not None:
                    break
            summary = summarise(recorder, time.monotonic() - record_start)
            code = 0 if summary else 1
    except KeyboardInterrupt:
        print('mtdp-demo: interrupted', flush=True)
    finally:
        camera_code = stop(camera_process)
        node_code = stop(node_process)
        executor.shutdown(timeout_sec=1.0)
        ros_node.destroy_node()
        rclpy.try_shutdown(context=context)
    written = write_pictures(recorder, output)
    report(summary, recorder.diagnostics, written, node_code, camera_code)
    if code != 0:
        print('mtdp-demo: no output arrived. Last lines of the node log '
              f'({logs["node"]}):\n{tail(logs["node"])}', file=sys.stderr)
        print(f'camera log ({logs["camera"]}):\n{tail(logs["camera"], 10)}', file=sys.stderr)
    return code


def write_pictures(recorder, output):
    """Write the mosaics and the overview; the list of written paths."""
    written = []
    for topic, filename in COLOR_OUTPUTS.items():
        mosaic = output_mosaic(recorder, topic)
        if mosaic is not None:
            path = os.path.join(output, filename)
            write_png(path, mosaic)
            written.append(path)
    if recorder.points:
        path = os.path.join(output, 'points.png')
        write_png(path, points_view(recorder.points[-1]))
        written.append(path)
    picture = overview(recorder)
    if picture is not None:
        path = os.path.join(output, 'overview.png')
        write_png(path, picture)
        written.append(path)
    return written


def report(summary, diagnostics, written, node_code, camera_code):
    """Print the figures of the run."""
    if summary:
        print(f'mtdp-demo: {summary["frames"]} frames on {summary["topic"]} in the recording: '
              f'{summary["rate_hz"]:.2f} Hz; latency camera stamp -> demo subscriber '
              f'p50 {summary["latency_p50_ms"]:.0f} ms, p95 {summary["latency_p95_ms"]:.0f} ms')
    if diagnostics:
        keys = ('input_rate_hz', 'output_rate_hz', 'latency_p50_ms', 'latency_p95_ms',
                'model_p50_ms', 'node_overhead_p50_ms', 'dropped', 'rejected', 'device',
                'backend', 'model', 'random_weights')
        print('mtdp-demo: node diagnostics: ' +
              ', '.join(f'{k}={diagnostics[k]}' for k in keys if k in diagnostics))
        if diagnostics.get('random_weights') == 'true':
            print('mtdp-demo: NOTE the model ran with random weights (no trained checkpoint '
                  'found): the pictures show the pipeline, not predictions.')
    for path in written:
        print(f'mtdp-demo: wrote {path}')
    print(f'mtdp-demo: node exit code {node_code}, camera exit code {camera_code}', flush=True)


def main(argv=None):
    """Console entry point (``mtdp-demo``)."""
    args = build_parser().parse_args(argv)
    if args.duration <= 0 or args.rate <= 0:
        print('mtdp-demo: --duration and --rate must be positive', file=sys.stderr)
        return 2
    return run(args)


if __name__ == '__main__':
    sys.exit(main())
