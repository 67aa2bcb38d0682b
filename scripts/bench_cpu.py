#!/usr/bin/env python3
"""The engine's own work around the network on the CPU: pre/post ms against the network's.

For each backend (torch, onnxruntime), model and camera size, ``engine.infer`` runs on a
random camera image; the medians of ``engine.last_timing`` (preprocess_ms, model_ms,
postprocess_ms) and the ratio (preprocess + postprocess) / model are printed, one JSON line
per configuration. Each backend runs in a process of its own; within it, configurations
are interleaved round by round so that a change in the machine's load hits all alike.
Threads: ``--threads`` sets ``torch.set_num_threads`` and ``cv2.setNumThreads``; ONNX
Runtime's session keeps its default intra-op pool (one thread per physical core), which
the ONNX Runtime engine does not expose (see the README).

Besides the wall-clock medians, the script reports process CPU time
(``time.process_time``, all threads) of the stages: the engine modules' ``letterbox`` and
``postprocess`` + ``host_to_numpy`` are wrapped with CPU-time accumulators (a measurement
wrapper, the functions themselves run unchanged), and the network alone runs through
``benchmark_network``. On a shared, loaded machine the wall-clock medians move with the
neighbours' load; CPU time much less (ONNX Runtime's spinning pool threads count in it).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_cpu.py --iters 10
"""

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time


def parse_size(text):
    """'480x640' -> (480, 640)."""
    height, width = (int(v) for v in text.lower().split('x'))
    return height, width


def wrap_stages():
    """Wrap the engines' pre/post functions with process-CPU-time accumulators (ms)."""
    from mtdp_ros.runtime import ort_engine, torch_engine
    totals = collections.Counter()

    def timed(stage, function):
        def wrapper(*args, **kwargs):
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                totals[stage] += (time.process_time() - started) * 1000.0
        return wrapper

    for module in (torch_engine, ort_engine):
        module.letterbox = timed('preprocess', module.letterbox)
        module.postprocess = timed('postprocess', module.postprocess)
        module.host_to_numpy = timed('postprocess', module.host_to_numpy)
    return totals


def compare_post(sizes, model_size, iters):
    """CPU time (one thread) of each task's post-processing: CPU path against reference."""
    import torch
    from mtdp_ros.runtime import letterbox, normalisation, plan_letterbox
    from mtdp_ros.runtime.postprocess import postprocess_task, postprocess_task_reference
    generator = torch.Generator().manual_seed(0)
    raw = {'semseg': torch.randn(1, 40, *model_size, generator=generator),
           'depth': torch.rand(1, 1, *model_size, generator=generator) + 0.5,
           'normals': torch.randn(1, 3, *model_size, generator=generator),
           'edge': torch.randn(1, 1, *model_size, generator=generator)}

    def median_ms(function):
        times = []
        for _ in range(iters):
            started = time.thread_time()
            function()
            times.append((time.thread_time() - started) * 1000.0)
        return round(statistics.median(times), 2)

    gain, offset = normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 'cpu')
    for size in sizes:
        plan = plan_letterbox(size, model_size)
        image = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=generator)
        row = {'size': 'x'.join(map(str, size)), 'model_size': 'x'.join(map(str, model_size)),
               'letterbox_ms': median_ms(lambda: letterbox(image, plan, gain, offset))}
        for task, values in raw.items():
            row[f'{task}_cpu_ms'] = median_ms(lambda: postprocess_task(task, values, plan))
            row[f'{task}_reference_ms'] = median_ms(
                lambda: postprocess_task_reference(task, values, plan))
        print(json.dumps(row), flush=True)


def main():
    """Run the interleaved benchmark and print one JSON line per configuration."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backend', action='append', choices=('torch', 'onnxruntime'),
                        help='repeatable; default both')
    parser.add_argument('--model', action='append', help="repeatable; default 'default'")
    parser.add_argument('--size', action='append', type=parse_size,
                        help='camera HxW, repeatable; default 480x640 and 720x1280')
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads (default: OMP_NUM_THREADS or all cores)')
    parser.add_argument('--compare-post', action='store_true',
                        help='only time post-processing per task, CPU path vs reference, one '
                             'thread (40 classes, model input 240x320)')
    args = parser.parse_args()
    if args.compare_post:
        import cv2
        import torch
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        compare_post(args.size or [(480, 640), (720, 1280)], (240, 320), max(args.iters, 5))
        return 0
    import numpy as np
    import torch
    from mtdp_ros.runtime import create_engine
    if args.threads:
        torch.set_num_threads(args.threads)
        import cv2
        cv2.setNumThreads(args.threads)
    stage_cpu = wrap_stages()
    backends = args.backend or ['torch', 'onnxruntime']
    if len(backends) > 1:
        # One process per backend: ONNX Runtime's pool threads spin after each run and
        # slowed PyTorch's network 5x when both lived in one process (measured).
        for backend in backends:
            command = [sys.executable, __file__, '--backend', backend] + [
                a for a in sys.argv[1:] if a not in backends and a != '--backend']
            done = subprocess.run(command)
            if done.returncode:
                return done.returncode
        return 0
    models = args.model or ['default']
    sizes = args.size or [(480, 640), (720, 1280)]
    rng = np.random.default_rng(0)
    engines, runs = {}, []
    for backend in backends:
        for model in models:
            started = time.perf_counter()
            engines[backend, model] = create_engine(model, backend=backend, device='cpu')
            print(f'# {backend} {model}: engine ready in {time.perf_counter() - started:.1f} s',
                  file=sys.stderr)
            for size in sizes:
                runs.append({'backend': backend, 'model': model, 'size': size,
                             'image': rng.integers(0, 256, (*size, 3), dtype=np.uint8),
                             'timings': [], 'cpu': []})
    for round_index in range(args.warmup + args.iters):
        for run in runs:
            engine = engines[run['backend'], run['model']]
            stage_cpu.clear()
            engine.infer(run['image'])
            if round_index >= args.warmup:
                run['timings'].append(dict(engine.last_timing))
                started = time.process_time()
                engine.benchmark_network(1)
                run['cpu'].append({'preprocess': stage_cpu['preprocess'],
                                   'postprocess': stage_cpu['postprocess'],
                                   'network': (time.process_time() - started) * 1000.0})
    for run in runs:
        medians = {key: statistics.median(t[key] for t in run['timings'])
                   for key in ('preprocess_ms', 'model_ms', 'postprocess_ms')}
        ratio = (medians['preprocess_ms'] + medians['postprocess_ms']) / medians['model_ms']
        cpu = {f'cpu_{key}_ms': round(statistics.median(c[key] for c in run['cpu']), 2)
               for key in ('preprocess', 'postprocess', 'network')}
        cpu['cpu_pre_post_over_network'] = round(
            (cpu['cpu_preprocess_ms'] + cpu['cpu_postprocess_ms']) / cpu['cpu_network_ms'], 4)
        print(json.dumps({
            'backend': run['backend'], 'model': run['model'],
            'size': 'x'.join(map(str, run['size'])), 'iters': len(run['timings']),
            'threads': torch.get_num_threads(), 'omp_num_threads': os.environ.get(
                'OMP_NUM_THREADS'),
            **{k: round(v, 2) for k, v in medians.items()},
            'pre_post_over_model': round(ratio, 4), **cpu, 'load_average': os.getloadavg()[0]}),
              flush=True)
    for engine in engines.values():
        engine.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
