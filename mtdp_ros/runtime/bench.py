"""Latency, frame rate and peak memory of an engine: the network alone and image-to-outputs.

The network alone runs on a model-size input already on the device (for the PyTorch engine
on CUDA: replayed as a CUDA graph when graphs are enabled). The whole path runs
``engine.infer`` on a uint8 camera image: upload, letterbox, network, post-processing and
the copy of the metric outputs back to the host.
"""

import os
import re
import time

import numpy as np
import torch

_HWM = re.compile(r'VmHWM:\s+(\d+)\s+kB')


def percentile(values, q):
    """Return the q-th percentile of a list of numbers (linear interpolation)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize(times_ms):
    """p50/p95/mean latency (ms) and the frame rate the mean latency allows."""
    mean = float(np.mean(times_ms))
    return {'p50_ms': round(percentile(times_ms, 50), 3),
            'p95_ms': round(percentile(times_ms, 95), 3),
            'mean_ms': round(mean, 3), 'fps': round(1000.0 / mean, 2) if mean > 0 else None,
            'iters': len(times_ms)}


class MemoryProbe:
    """Peak memory over a stretch of work, in MiB, measured where the engine's memory lives.

    PyTorch on CUDA: peak bytes allocated by PyTorch on the device (weights included).
    ONNX Runtime on CUDA: device memory in use after the run (ORT's arena does not shrink,
    so this is its peak; device-wide, other processes included). CPU: the process's peak
    resident set (VmHWM, reset through /proc/self/clear_refs where Linux allows it).
    """

    def __init__(self, engine):
        self.engine = engine
        device = getattr(engine, 'torch_device', torch.device('cpu'))
        self.kind = 'cpu_peak_rss'
        if engine.device == 'cuda' and engine.backend == 'torch':
            self.kind = 'cuda_peak_allocated'
            self.cuda_device = device
        elif engine.device == 'cuda' and torch.cuda.is_available():
            self.kind = 'cuda_device_in_use'
            self.cuda_device = torch.device('cuda', 0)

    def reset(self):
        """Start a new measuring stretch."""
        if self.kind == 'cuda_peak_allocated':
            torch.cuda.synchronize(self.cuda_device)
            torch.cuda.reset_peak_memory_stats(self.cuda_device)
        elif self.kind == 'cpu_peak_rss':
            try:
                with open('/proc/self/clear_refs', 'w') as handle:
                    handle.write('5')
            except OSError:
                pass  # not Linux or not permitted: the lifetime peak is reported instead

    def peak_mb(self):
        """Peak (MiB) since the last reset."""
        if self.kind == 'cuda_peak_allocated':
            torch.cuda.synchronize(self.cuda_device)
            return round(torch.cuda.max_memory_allocated(self.cuda_device) / 2 ** 20, 1)
        if self.kind == 'cuda_device_in_use':
            free, total = torch.cuda.mem_get_info(self.cuda_device)
            return round((total - free) / 2 ** 20, 1)
        return _peak_rss_mb()


def _peak_rss_mb():
    try:
        with open('/proc/self/status') as handle:
            match = _HWM.search(handle.read())
        if match:
            return round(int(match.group(1)) / 1024, 1)
    except OSError:
        pass
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def synthetic_image(image_size, seed=0):
    """Make a deterministic uint8 RGB image: smooth gradients plus sensor-like noise."""
    height, width = image_size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xs / max(width - 1, 1), ys / max(height - 1, 1),
                      0.5 + 0.5 * np.sin((xs + ys) / 17.0)], axis=-1) * 200
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def run_benchmark(engine, iters=50, warmup=10, image_size=None, tasks=None, steps=None,
                  creation_s=None):
    """Measure ``engine``; returns a JSON-ready dict (see the module docstring).

    The first call on the engine is one ``infer`` on the camera-size image: with
    ``creation_s`` (seconds ``create_engine`` took) the result's ``startup`` holds the time
    to first output (creation + that first inference, which includes any CUDA-graph capture
    or ONNX Runtime session warm-up).
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f'iters must be >= 1 and warmup >= 0, got {iters} and {warmup}')
    image_size = tuple(image_size or engine.config.image_size)
    tasks = engine.select_tasks(tasks)
    steps = engine.resolve_steps(steps)
    probe = MemoryProbe(engine)
    image = synthetic_image(image_size)
    started = time.perf_counter()
    engine.infer(image, tasks=tasks, steps=steps)
    first_s = time.perf_counter() - started
    startup = {'engine_creation_s': None if creation_s is None else round(creation_s, 3),
               'first_inference_s': round(first_s, 3),
               'time_to_first_output_s': (None if creation_s is None
                                          else round(creation_s + first_s, 3))}

    probe.reset()
    network_times = engine.benchmark_network(iters, warmup, tasks=tasks, steps=steps)
    network = summarize(network_times)
    network['peak_memory_mb'] = probe.peak_mb()

    probe.reset()
    for _ in range(warmup):
        engine.infer(image, tasks=tasks, steps=steps)
    total, stages = [], {'preprocess_ms': [], 'model_ms': [], 'postprocess_ms': []}
    for _ in range(iters):
        start = time.perf_counter()
        engine.infer(image, tasks=tasks, steps=steps)
        total.append((time.perf_counter() - start) * 1000.0)
        for key in stages:
            stages[key].append(engine.last_timing[key])
    end_to_end = summarize(total)
    end_to_end['peak_memory_mb'] = probe.peak_mb()
    end_to_end['stages_p50_ms'] = {k: round(percentile(v, 50), 3) for k, v in stages.items()}

    result = dict(engine.describe())
    result.update({'tasks': list(tasks), 'steps': steps, 'image_input_size': list(image_size),
                   'warmup': warmup, 'memory_measure': probe.kind,
                   'torch': torch.__version__, 'cpu_threads': torch.get_num_threads(),
                   'host_cpus': os.cpu_count(),
                   'gpu': torch.cuda.get_device_name() if engine.device == 'cuda' else None,
                   'startup': startup, 'network': network, 'end_to_end': end_to_end})
    return result


def format_report(result):
    """Human-readable lines for a benchmark result."""
    lines = [f"{result['model']} ({result['family']}) backend {result['backend']} on "
             f"{result['device']}{' (' + result['gpu'] + ')' if result.get('gpu') else ''}, "
             f"{result['precision']}"
             + (f", {result['steps']} steps" if result.get('steps') else '')
             + (', RANDOM WEIGHTS' if result.get('random_weights') else '')]
    for key, label in (('network', 'network alone'), ('end_to_end', 'image to outputs')):
        part = result[key]
        lines.append(f"  {label:17s} p50 {part['p50_ms']:9.3f} ms  p95 {part['p95_ms']:9.3f} ms"
                     f"  {part['fps']:8.2f} fps  peak {part['peak_memory_mb']:9.1f} MiB")
    startup = result.get('startup') or {}
    if startup.get('time_to_first_output_s') is not None:
        lines.append(f"  time to first output {startup['time_to_first_output_s']:.2f} s "
                     f"(engine creation {startup['engine_creation_s']:.2f} s + first "
                     f"inference {startup['first_inference_s']:.2f} s)")
    stages = result['end_to_end']['stages_p50_ms']
    lines.append('  stages p50: ' + ', '.join(f'{k[:-3]} {v:.3f} ms' for k, v in stages.items()))
    return lines
