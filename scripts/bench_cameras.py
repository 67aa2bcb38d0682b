#!/usr/bin/env python3
"""Several cameras: one node with N cameras against N single-camera nodes, and an Orin estimate.

For each N (default 1, 2, 3, 4, 6): starts either one perception node with
``cameras:=[c0..cN-1]`` or N perception nodes with one camera each (every node its own
namespace), all on the same model (default: the shipped default model) over real DDS in
their own ROS domain, and feeds every camera 640 x 480 bgr8 frames at ``--rate`` Hz
(reliable QoS; a camera's frames are stamped when sent, the cameras' phases spread
over one period, as free-running cameras are). A node takes the newest frame of each
camera when it is ready and drops older ones, as in service. ``--rate 0``: a closed
loop instead (a camera sends its next frame when its previous depth came back). Measures,
after the warm-up frames, for ``--seconds``:

- aggregate frames/s (depth outputs of all cameras per second);
- per-camera latency (header stamp = send time -> depth received), p50 and p95 over
  all frames of all cameras;
- peak RSS (VmHWM) and steady RSS (VmRSS at the end) of the node process(es), summed;
- the CPU time of the node process(es) per second of the timed run (cores used);
- for one node with several cameras, from its /diagnostics engine status: the batch-size
  histogram and the engine's milliseconds per batch (p50);
- with ``--thread-cpu``, in the ``# done:`` lines: the cores each thread of each node
  process used (``main``: the executor's thread; the others by name and thread id).

``--engine``: instead, the engine alone (no ROS): ``infer_batch`` of N frames against N
``infer`` calls, medians of ``--repeats`` rounds (``--warm-start S``: every frame warm at
strength S, TaskDiffusion; ``--steps``).

``--orin``: instead, a FLOP and memory-traffic estimate per preset and batch size for an
NVIDIA Jetson AGX Orin (see ``orin_estimate``); no node runs.

    python scripts/bench_cameras.py                        # the table of the README
    python scripts/bench_cameras.py --cameras 1 4 --seconds 20
    python scripts/bench_cameras.py --orin
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

# Jetson AGX Orin 64GB, NVIDIA's published module figures: Ampere GPU with 2048 CUDA
# cores and 64 Tensor Cores at up to 1.3 GHz, 170 sparse INT8 TOPS from the GPU (275
# with the DLAs), 64 GB LPDDR5 at 204.8 GB/s. Derived: dense INT8 85 TOPS -> dense FP16
# Tensor Core 42.5 TFLOPS; FP32 on CUDA cores 2048 x 2 x 1.3 GHz = 5.3 TFLOPS.
ORIN_FP16_FLOPS = 42.5e12
ORIN_FP32_FLOPS = 5.3e12
ORIN_BYTES_PER_S = 204.8e9
# Fractions of those peaks a real network reaches (assumed, not measured: dense ViT
# GEMMs on Ampere reach 40-60 % of the Tensor Core peak, convolutions and elementwise
# work less; streaming kernels 60-80 % of DRAM bandwidth).
COMPUTE_EFFICIENCY = 0.4
MEMORY_EFFICIENCY = 0.7


def build_parser():
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='default', help="model.preset ('default')")
    parser.add_argument('--backend', default='torch', choices=('torch', 'onnxruntime'),
                        help='engine.backend (onnxruntime: graphs exported once, before the '
                             'timed runs, into --cache-dir)')
    parser.add_argument('--cache-dir', default=None,
                        help='MTDP_CACHE_DIR of the onnxruntime runs (default: a new one)')
    parser.add_argument('--cameras', type=int, nargs='+', default=[1, 2, 3, 4, 6])
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--seconds', type=float, default=30.0, help='timed seconds per run')
    parser.add_argument('--rate', type=float, default=10.0,
                        help='frames/s of every camera (0: closed loop)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed frames per camera')
    parser.add_argument('--threads', type=int, default=2,
                        help='OMP_NUM_THREADS of every node process (default 2)')
    parser.add_argument('--thread-cpu', action='store_true',
                        help="also the cores each thread of the node process(es) used, in "
                             "the '# done:' lines ('main' is the executor's thread)")
    parser.add_argument('--modes', nargs='+', default=['one', 'separate'],
                        choices=('one', 'separate'))
    parser.add_argument('--orin', action='store_true', help='the Orin estimate instead')
    parser.add_argument('--engine', action='store_true',
                        help='the engine alone: one batch of N against N single calls')
    parser.add_argument('--repeats', type=int, default=7, help='rounds of --engine')
    parser.add_argument('--steps', type=int, default=None,
                        help="--engine: TaskDiffusion's step count (default: the model's)")
    parser.add_argument('--warm-start', type=float, default=None, metavar='S',
                        help='--engine: every frame starts warm at strength S (TaskDiffusion)')
    parser.add_argument('--presets', nargs='+', default=None,
                        help='presets of the Orin estimate (default: all and the defaults)')
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 2, 4, 6])
    parser.add_argument('--domain', type=int, default=None,
                        help='ROS_DOMAIN_ID of the runs (default: from the process id)')
    return parser


# ---------------------------------------------------------------------------- node runs
def node_command(model, namespace, cameras, backend='torch'):
    """The perception node's command line for one node."""
    command = [sys.executable, '-m', 'mtdp_ros.perception_node', '--ros-args',
               '-r', f'__ns:={namespace}', '-p', f'model.preset:={model}',
               '-p', 'engine.device:=cpu', '-p', 'input.qos:=reliable',
               '-p', f'engine.backend:={backend}',
               '-p', 'output.qos_depth:=2', '-p', 'watchdog.timeout:=3600.0']
    if cameras:
        command += ['-p', 'cameras:=[' + ','.join(cameras) + ']']
    return command


def memory_kib(pid):
    """(VmHWM, VmRSS) of a process in KiB."""
    values = {}
    with open(f'/proc/{pid}/status', encoding='ascii') as handle:
        for line in handle:
            key, _, rest = line.partition(':')
            if key in ('VmHWM', 'VmRSS'):
                values[key] = int(rest.split()[0])
    return values['VmHWM'], values['VmRSS']


def stat_cpu_seconds(path):
    """User + system CPU seconds from a /proc ``stat`` file (a process's or a thread's)."""
    with open(path, encoding='utf-8') as handle:
        fields = handle.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def cpu_seconds(pid):
    """CPU time (user + system, all threads) of a process so far, in seconds."""
    return stat_cpu_seconds(f'/proc/{pid}/stat')


def thread_cpu(pid):
    """CPU seconds so far of each thread of a process: {'main' or 'name:tid': seconds}."""
    seconds = {}
    for tid in os.listdir(f'/proc/{pid}/task'):
        try:
            with open(f'/proc/{pid}/task/{tid}/comm', encoding='utf-8') as handle:
                name = handle.read().strip()
            used = stat_cpu_seconds(f'/proc/{pid}/task/{tid}/stat')
        except OSError:          # the thread ended meanwhile
            continue
        seconds['main' if int(tid) == pid else f'{name}:{tid}'] = used
    return seconds


def thread_cores(before, after, elapsed):
    """{thread: cores used} between two ``thread_cpu`` readings, busiest first, idle left out."""
    cores = {label: (value - before.get(label, 0.0)) / elapsed for label, value in after.items()}
    return dict(sorted(((label, round(used, 3)) for label, used in cores.items() if used > 0),
                       key=lambda item: -item[1]))


def camera_topics(mode, count):
    """[(node namespace, camera name or '', absolute topic prefix)] of a run."""
    if mode == 'one':
        return [('/bench', f'c{i}', f'/bench/c{i}') for i in range(count)]
    return [(f'/bench{i}', '', f'/bench{i}') for i in range(count)]


def run_case(args, mode, count, domain):
    """One run: ``count`` cameras on one node ('one') or on ``count`` nodes ('separate')."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from mtdp_ros.ros.outputs import output_topics
    from scripts.bench_node import camera_frame
    # The raw depth topic, from the task table (the topic a closed loop waits for).
    depth_topic = output_topics(['depth'])[0][0]
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED='1')
    if args.cache_dir:
        env['MTDP_CACHE_DIR'] = args.cache_dir
    cameras = camera_topics(mode, count)
    logs = tempfile.mkdtemp(prefix='bench_cameras_')
    processes = []
    if mode == 'one':
        specs = [('/bench', [name for _, name, _ in cameras])]
    else:
        specs = [(namespace, []) for namespace, _, _ in cameras]
    for index, (namespace, names) in enumerate(specs):
        log = open(os.path.join(logs, f'node{index}.log'), 'w', encoding='utf-8')
        processes.append((subprocess.Popen(node_command(args.model, namespace, names,
                                                        args.backend),
                                           cwd=REPO, env=env, stdout=log,
                                           stderr=subprocess.STDOUT), log))
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node('bench_cameras_feeder', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
    frame = camera_frame(args.width, args.height, 'bgr8')
    state = {}
    try:
        for _, _, prefix in cameras:
            state[prefix] = {'publisher': node.create_publisher(Image, f'{prefix}/image', qos),
                             'sent': None, 'done': 0, 'latency': [], 'timed': 0}

        def received(prefix, msg):
            entry = state[prefix]
            stamp = msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec
            if args.rate == 0 and entry['sent'] != stamp:
                return
            now = time.time_ns()
            entry['done'] += 1
            if timing['on']:
                entry['latency'].append((now - stamp) / 1e6)
                entry['timed'] += 1
            if not args.rate:
                send(prefix)

        def send(prefix):
            now = time.time_ns()
            frame.header.stamp.sec, frame.header.stamp.nanosec = divmod(now, 10 ** 9)
            state[prefix]['sent'] = now
            state[prefix]['publisher'].publish(frame)

        timing = {'on': False}
        engine_values = {}

        def diagnostics(msg):
            # The engine's status of a node with several cameras: batch sizes, times.
            for status in msg.status:
                if status.name.endswith(': engine'):
                    engine_values.update((kv.key, kv.value) for kv in status.values)

        node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics, 10)
        for _, _, prefix in cameras:
            node.create_subscription(Image, f'{prefix}/{depth_topic}',
                                     lambda msg, p=prefix: received(p, msg), qos)
        # Discovery: every node subscribes to its camera(s) and publishes depth.
        deadline = time.monotonic() + 300
        while not all(node.count_subscribers(f'{p}/image') and
                      node.count_publishers(f'{p}/{depth_topic}') for _, _, p in cameras):
            if time.monotonic() > deadline:
                raise RuntimeError(f'the node(s) did not subscribe to the images and publish '
                                   f'{depth_topic} within 300 s (logs: {logs})')
            executor.spin_once(timeout_sec=0.1)
        period = 1.0 / args.rate if args.rate else None
        due = {prefix: time.monotonic() + (period or 0) * i / len(cameras)
               for i, (_, _, prefix) in enumerate(cameras)}

        def spin(until):
            while time.monotonic() < until():
                if period is not None:
                    now = time.monotonic()
                    for prefix, at in due.items():
                        if now >= at:
                            send(prefix)
                            # On schedule; a feeder that fell behind skips, not bursts.
                            due[prefix] = max(at + period, now)
                    wait = max(0.0, min(min(due.values()) - time.monotonic(), 0.05))
                else:
                    wait = 0.05
                executor.spin_once(timeout_sec=wait)

        if period is None:
            for _, _, prefix in cameras:
                send(prefix)
        # Warm-up (the first frame of a size, allocations).
        deadline = time.monotonic() + 300
        spin(lambda: time.monotonic() + 1 if min(e['done'] for e in state.values())
             < args.warmup and time.monotonic() < deadline else 0)
        if min(e['done'] for e in state.values()) < args.warmup:
            raise RuntimeError(f'no {args.warmup} warm-up outputs on every camera within 300 s '
                               f'(logs: {logs})')
        peak_before = [memory_kib(p.pid)[0] for p, _ in processes]
        cpu_before = [cpu_seconds(p.pid) for p, _ in processes]
        threads_before = [thread_cpu(p.pid) if args.thread_cpu else {} for p, _ in processes]
        feeder_before = sum(os.times()[:2])
        timing['on'] = True
        started = time.monotonic()
        spin(lambda: started + args.seconds)
        elapsed = time.monotonic() - started
        timing['on'] = False
        memory = [memory_kib(p.pid) for p, _ in processes]
        node_cpu = sum(cpu_seconds(p.pid) - before
                       for (p, _), before in zip(processes, cpu_before)) / elapsed
        feeder_cpu = (sum(os.times()[:2]) - feeder_before) / elapsed
        threads = [thread_cores(before, thread_cpu(p.pid), elapsed) if args.thread_cpu else {}
                   for (p, _), before in zip(processes, threads_before)]
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        for process, log in processes:
            process.terminate()
        for process, log in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
    latencies = np.concatenate([np.asarray(e['latency']) for e in state.values()])
    per_camera = [e['timed'] / elapsed for e in state.values()]
    return {
        'mode': mode, 'cameras': count, 'fps': sum(e['timed'] for e in state.values()) / elapsed,
        'min_camera_fps': min(per_camera), 'max_camera_fps': max(per_camera),
        'p50_ms': float(np.percentile(latencies, 50)) if len(latencies) else float('nan'),
        'p95_ms': float(np.percentile(latencies, 95)) if len(latencies) else float('nan'),
        'peak_mib': sum(m[0] for m in memory) / 1024.0,
        'peak_warm_mib': sum(peak_before) / 1024.0,
        'steady_mib': sum(m[1] for m in memory) / 1024.0,
        'node_cpu': node_cpu, 'feeder_cpu': feeder_cpu,
        'batch_histogram': engine_values.get('batch_size_histogram', ''),
        'engine_per_batch_p50_ms': engine_values.get('engine_per_batch_p50_ms', ''),
        'model_per_batch_p50_ms': engine_values.get('model_per_batch_p50_ms', ''),
        # --thread-cpu: per node process, the cores each of its threads used.
        'threads': threads,
    }


def node_table(args):
    """Run every case; print a markdown table."""
    domain = args.domain if args.domain is not None else 1 + os.getpid() % 100
    if args.backend == 'onnxruntime':
        prepare_graphs(args)
    rows = []
    for count in args.cameras:
        for mode in args.modes:
            row = run_case(args, mode, count, domain)
            rows.append(row)
            print(f'# done: {row}', file=sys.stderr, flush=True)
    single = next((r for r in rows if r['cameras'] == 1 and r['mode'] == 'one'), None)
    feed = f'{args.rate:g} Hz per camera' if args.rate else 'closed loop'
    print(f'\nmodel {args.model} ({args.backend}), {args.width}x{args.height} bgr8 at {feed}, '
          f'{args.seconds:.0f} s '
          f'per run, OMP_NUM_THREADS={args.threads} per node, {os.cpu_count()} CPUs\n')
    print('| cameras | nodes | frames/s (all) | per camera min-max | latency p50 / p95 ms '
          '| peak RSS MiB | steady RSS MiB | steady vs 1 node, 1 camera | node CPU (cores) '
          '| engine ms per batch p50 |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for row in rows:
        nodes = 1 if row['mode'] == 'one' else row['cameras']
        ratio = row['steady_mib'] / single['steady_mib'] if single else float('nan')
        print(f"| {row['cameras']} | {nodes} | {row['fps']:.2f} | "
              f"{row['min_camera_fps']:.2f}-{row['max_camera_fps']:.2f} | "
              f"{row['p50_ms']:.0f} / {row['p95_ms']:.0f} | {row['peak_mib']:.0f} | "
              f"{row['steady_mib']:.0f} | {ratio:.2f}x | {row['node_cpu']:.2f} | "
              f"{row['engine_per_batch_p50_ms'] or '-'} |")


def prepare_graphs(args):
    """Export the onnxruntime graphs once (batch 1 and any batch) into the cache directory.

    The nodes then load them: no node exports during a timed run, and several nodes do not
    export the same graph at once.
    """
    from mtdp_ros.runtime import create_engine
    if not args.cache_dir:
        args.cache_dir = tempfile.mkdtemp(prefix='bench_cameras_cache_')
    for dynamic_batch in (False, True):
        create_engine(args.model, backend='onnxruntime', device='cpu',
                      cache_dir=args.cache_dir, dynamic_batch=dynamic_batch).close()


# ---------------------------------------------------------------------------- engine
def engine_table(args):
    """Print ms per round: one infer_batch of N frames against N infer calls (medians).

    onnxruntime: the N calls run the batch-1 graph (a single-camera node's) and the batch
    runs the dynamic-batch graph (a node with several cameras), as in service.
    ``--warm-start S``: every frame starts warm at strength S from its own previous map
    (its cold state, computed once), in the batch as alone (TaskDiffusion, torch).
    """
    import torch

    from mtdp_ros.runtime import create_engine
    torch.set_num_threads(args.threads)
    single_engine = engine = create_engine(args.model, device='cpu', backend=args.backend,
                                           steps=args.steps,
                                           **({'cache_dir': args.cache_dir}
                                              if args.cache_dir else {}))
    if args.backend == 'onnxruntime':
        engine = create_engine(args.model, device='cpu', backend=args.backend,
                               steps=args.steps, dynamic_batch=True,
                               cache_dir=single_engine.cache_dir)
    rng = np.random.default_rng(0)
    warm = '' if args.warm_start is None else f', warm start at strength {args.warm_start}'
    print(f'\nengine alone: model {args.model} ({args.backend}), {args.width}x{args.height}, '
          f'{args.threads} threads, steps {engine.default_steps}{warm}, median of '
          f'{args.repeats} rounds\n')
    print('| frames | N x infer ms | infer_batch ms | of which model ms | batch / N x infer |')
    print('|---|---|---|---|---|')
    for count in args.cameras:
        images = [rng.integers(0, 255, (args.height, args.width, 3), np.uint8)
                  for _ in range(count)]
        if args.warm_start is None:
            states, strengths = [None] * count, None
        else:
            states = [engine.infer(image, return_state=True)[1] for image in images]
            strengths = [args.warm_start] * count

        def single_call(image, index):
            if strengths is None:
                return single_engine.infer(image)
            return engine.infer(image, init=states[index], strength=strengths[index],
                                return_state=True)

        def batch_call(images):
            if strengths is None:
                return engine.infer_batch(images)
            return engine.infer_batch(images, inits=states, strengths=strengths,
                                      return_state=True)

        batch_call(images)
        for index, image in enumerate(images):
            single_call(image, index)
        single, batched, model = [], [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            for index, image in enumerate(images):
                single_call(image, index)
            single.append((time.perf_counter() - started) * 1000.0)
            started = time.perf_counter()
            batch_call(images)
            batched.append((time.perf_counter() - started) * 1000.0)
            model.append(engine.last_timing['model_ms'])
        one, many = float(np.median(single)), float(np.median(batched))
        print(f'| {count} | {one:.0f} | {many:.0f} | {float(np.median(model)):.0f} | '
              f'{many / one:.2f} |', flush=True)


# ---------------------------------------------------------------------------- Orin
def count_flops_and_bytes(config, batch):
    """(FLOPs, activation bytes) of one forward of ``config`` at ``batch`` (meta tensors).

    FLOPs from ``torch.utils.flop_counter`` (matmuls and convolutions, 2 per
    multiply-add); activation bytes: every ATen op's output written once and read once,
    in fp16 (2 bytes per element), views not counted. Weights are counted separately.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from mtdp_ros.models import build_model, reparameterize

    class ActivationBytes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.elements = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func.is_view:
                for tensor in (out if isinstance(out, (tuple, list)) else [out]):
                    if isinstance(tensor, torch.Tensor):
                        self.elements += tensor.numel()
            return out

    with torch.device('meta'):
        model = build_model(config).eval()
        if config.has_mlore:        # as deployed: the fused MLoRE blocks
            model = reparameterize(model, inplace=True)
        x = torch.empty((batch, 3, *config.image_size))
        kwargs = {}
        if config.is_diffusion:
            grid = config.grid_size
            kwargs['noise'] = torch.empty((batch, config.noise_channels, *grid))
        counter = FlopCounterMode(display=False)
        activations = ActivationBytes()
        with torch.no_grad(), counter, activations:
            model(x, **kwargs)
    weights = sum(p.numel() for p in model.parameters()) * 2
    return counter.get_total_flops(), activations.elements * 2 * 2, weights


def orin_estimate(args):
    """Print the Orin table: per preset and batch, ms per frame and cameras at 10 / 30 Hz."""
    from mtdp_ros.models.presets import PRESETS, DEFAULT_MODELS
    configs = dict(DEFAULT_MODELS)
    configs.update(PRESETS)
    names = args.presets or list(configs)
    print(f'Jetson AGX Orin 64GB: fp16 Tensor Core {ORIN_FP16_FLOPS / 1e12:.1f} TFLOPS x '
          f'{COMPUTE_EFFICIENCY:.0%}, memory {ORIN_BYTES_PER_S / 1e9:.1f} GB/s x '
          f'{MEMORY_EFFICIENCY:.0%}; fp16 weights and activations\n')
    print('| preset | input | GFLOPs / frame | weights MB | activations MB / frame | '
          + ' | '.join(f'ms / frame, batch {b}' for b in args.batches)
          + ' | cameras at 10 Hz | cameras at 30 Hz |')
    print('|---' * (7 + len(args.batches)) + '|')
    for name in names:
        config = configs[name]
        flops, activation_bytes, weight_bytes = count_flops_and_bytes(config, 1)

        def batch_seconds(batch):
            # FLOPs and activations scale with the batch; the weights are read once.
            return max(flops * batch / (ORIN_FP16_FLOPS * COMPUTE_EFFICIENCY),
                       (activation_bytes * batch + weight_bytes)
                       / (ORIN_BYTES_PER_S * MEMORY_EFFICIENCY))

        per_frame = [f'{batch_seconds(b) / b * 1000.0:.1f}' for b in args.batches]
        # Cameras served at a rate: the largest batch (<= 64) that runs within one period.
        served = []
        for rate in (10, 30):
            fits = [n for n in range(1, 65) if batch_seconds(n) <= 1.0 / rate]
            served.append('0' if not fits else ('64+' if max(fits) == 64 else str(max(fits))))
        print(f'| {name} | {config.image_size[0]}x{config.image_size[1]} | '
              f'{flops / 1e9:.0f} | {weight_bytes / 1e6:.0f} | {activation_bytes / 1e6:.0f} | '
              + ' | '.join(per_frame) + f' | {served[0]} | {served[1]} |')
        sys.stdout.flush()


def main(argv=None):
    """Run the benchmark (see the module docstring)."""
    args = build_parser().parse_args(argv)
    if args.orin:
        orin_estimate(args)
    elif args.engine:
        engine_table(args)
    else:
        node_table(args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
