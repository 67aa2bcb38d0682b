#!/usr/bin/env python3
"""GPU table of issue 5: latency of the published presets against their compute limit.

For each preset (random weights: speed does not depend on the values) and step count:
fp32 eager, fp16 eager and fp16 with CUDA graphs through the PyTorch engine's network path
(``engine.benchmark_network``: batch 1, synchronised per iteration), re-parameterised
against train-form MLoRE, the backbone alone, and the whole image-to-outputs path for a
480x640 camera image. Each latency is compared with its limit: the model's FLOPs
(``torch.utils.flop_counter.FlopCounterMode``) divided by the dense fp16 matmul rate this
GPU reaches in the same run. Rows that miss a goal get a kernel profile (fp16 eager) split
into matmul / attention / convolution / memory-bound kernels, with the launch count and the
host overhead (wall time minus GPU busy time).

    python scripts/benchmark_gpu.py                      # the full table (H100: ~5 min)
    python scripts/benchmark_gpu.py --presets mlore_pascal_vitS --iters 20
    python scripts/benchmark_gpu.py --device cpu --presets default_mlore --iters 2   # smoke

Prints a markdown table and writes JSON (``--output``).
"""

import argparse
import gc
import json
import re
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mtdp_ros.models import DEFAULT_MODELS, PRESETS
from mtdp_ros.runtime import create_engine
from mtdp_ros.runtime.bench import percentile, synthetic_image

DEFAULT_PRESETS = ('mlore_pascal_vitS', 'mlore_nyud_vitL', 'taskdiffusion_nyud_vitL',
                   'taskdiffusion_mlore_nyud_vitL')
DEFAULT_STEPS = (1, 3, 5)
# Goals of issue 5 on an H100 (fp16 with CUDA graphs, batch 1).
GOALS_MS = {('mlore_pascal_vitS', None): 2.0, ('mlore_nyud_vitL', None): 10.0,
            ('taskdiffusion_nyud_vitL', 3): 15.0}
SPEEDUP_GOAL = 2.0
CAMERA = (480, 640)


def log(message):
    print(message, file=sys.stderr, flush=True)


def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def matmul_rate(device, size=8192, iters=20):
    """Dense fp16 (CPU: fp32) matmul rate in TFLOP/s reached on this device, median."""
    dtype = torch.float16 if device == 'cuda' else torch.float32
    if device != 'cuda':
        size = 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e12


def count_flops(engine, steps):
    """Count the FLOPs of one network forward (matmuls, convolutions, attention)."""
    x = torch.randn((1, 3, *engine.config.image_size), device=engine.torch_device,
                    dtype=engine.dtype)
    with FlopCounterMode(display=False) as counter:
        engine.run_network(x, engine.tasks, steps, engine.device_noise(0))
    return counter.get_total_flops()


def backbone_ms(engine, iters, warmup):
    """Latency of the ViT encoder (with the level projections of TaskDiffusion) alone."""
    model = engine.model
    x = torch.randn((1, 3, *engine.config.image_size), device=engine.torch_device,
                    dtype=engine.dtype)

    def run():
        with torch.no_grad():
            levels = model.encoder(x)
            if hasattr(model, 'level_proj'):
                levels = [proj(level) for proj, level in zip(model.level_proj, levels)]
            return levels

    replay = run
    if engine.cuda_graphs:
        try:
            replay = engine._capture_network(run)
        except Exception as exc:  # noqa: B902 - time eagerly when capture fails
            log(f'backbone capture failed: {exc}')
            torch.cuda.synchronize()
    for _ in range(warmup):
        replay()
    sync(engine.device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        replay()
        sync(engine.device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


KERNEL_CLASSES = (
    ('attention', re.compile(r'flash|fmha|attention|sdpa|efficient_attention', re.I)),
    ('convolution', re.compile(r'conv|fprop|dgrad|wgrad|implicit|winograd|cudnn', re.I)),
    ('matmul', re.compile(r'gemm|matmul|cutlass|xmma|cublas|sm\d+_', re.I)),
)


def profile_network(engine, steps, iters=3):
    """Kernel time by class, launches and host overhead per iteration (eager)."""
    from torch.profiler import profile, ProfilerActivity
    x = torch.randn((1, 3, *engine.config.image_size), device=engine.torch_device,
                    dtype=engine.dtype)
    noise = engine.device_noise(0)
    for _ in range(3):
        engine.run_network(x, engine.tasks, steps, noise)
    sync(engine.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(iters):
            engine.run_network(x, engine.tasks, steps, noise)
        sync(engine.device)
        wall_ms = (time.perf_counter() - start) * 1000 / iters
    classes = {'attention': 0.0, 'convolution': 0.0, 'matmul': 0.0, 'memory-bound/other': 0.0}
    launches = 0
    top = []
    for event in prof.key_averages():
        device_us = getattr(event, 'self_device_time_total', None)
        if device_us is None:
            device_us = getattr(event, 'self_cuda_time_total', 0)
        if not device_us or getattr(event, 'device_type', None) != torch.autograd.DeviceType.CUDA:
            continue
        launches += event.count
        name = event.key
        kind = next((k for k, pattern in KERNEL_CLASSES if pattern.search(name)),
                    'memory-bound/other')
        classes[kind] += device_us / 1000 / iters
        top.append((device_us / 1000 / iters, event.count // iters, name[:90]))
    busy = sum(classes.values())
    top.sort(reverse=True)
    return {'wall_ms': round(wall_ms, 3), 'gpu_busy_ms': round(busy, 3),
            'host_overhead_ms': round(max(wall_ms - busy, 0.0), 3),
            'kernel_launches': launches // iters,
            'by_class_ms': {k: round(v, 3) for k, v in classes.items()},
            'top_kernels': [{'ms': round(ms, 3), 'calls': calls, 'name': name}
                            for ms, calls, name in top[:10]]}


def measure(preset, precision, graphs, reparam, steps_list, args, extra=False):
    """Rows for one engine configuration (one row per step count)."""
    label = f'{preset} {precision} {"graphs" if graphs else "eager"} ' \
            f'{"fused" if reparam else "train-form"}'
    log(f'== {label}')
    engine = create_engine(preset, device=args.device, precision=precision,
                           cuda_graphs=graphs, reparameterize=reparam)
    rows = []
    try:
        for steps in steps_list:
            times = engine.benchmark_network(args.iters, args.warmup, steps=steps)
            row = {'preset': preset, 'steps': steps, 'precision': precision,
                   'cuda_graphs': graphs, 'graph_used': engine.network_graph_used,
                   'mlore_form': (('fused' if reparam else 'train-form')
                                  if engine.config.has_mlore else None),
                   'deployed_mode': bool(extra),
                   'p50_ms': round(statistics.median(times), 3),
                   'p95_ms': round(percentile(times, 95), 3),
                   'gflops': round(count_flops(engine, steps) / 1e9, 1)}
            if extra:
                # The whole path for a camera image, and the backbone alone (once per engine).
                image = synthetic_image(CAMERA)
                for _ in range(args.warmup):
                    engine.infer(image, steps=steps)
                totals = []
                for _ in range(args.iters):
                    start = time.perf_counter()
                    engine.infer(image, steps=steps)
                    totals.append((time.perf_counter() - start) * 1000)
                row['end_to_end_480x640_p50_ms'] = round(statistics.median(totals), 3)
                row['end_to_end_stages_ms'] = {k: round(v, 3)
                                               for k, v in engine.last_timing.items()}
                if steps == steps_list[0]:
                    row['backbone_ms'] = round(backbone_ms(engine, args.iters, args.warmup), 3)
            log(f'   steps {steps}: p50 {row["p50_ms"]} ms, {row["gflops"]} GFLOP, '
                f'graph {row["graph_used"]}')
            rows.append(row)
        if args.profile_all and extra and engine.device == 'cuda':
            for row in rows:
                row['profile'] = profile_network(engine, row['steps'])
    finally:
        engine.close()
        del engine
        gc.collect()
        if args.device == 'cuda':
            torch.cuda.empty_cache()
    return rows


def run(args):
    device = args.device
    if device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('CUDA is not available; use --device cpu for a smoke run')
    rate = matmul_rate(device)
    log(f'dense {"fp16" if device == "cuda" else "fp32"} matmul: {rate:.4g} TFLOP/s')
    info = {'device': torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
            'torch': torch.__version__, 'matmul_tflops': float(f'{rate:.4g}'),
            'matmul_dtype': 'fp16' if device == 'cuda' else 'fp32',
            'iters': args.iters, 'warmup': args.warmup,
            'tf32': {'cudnn': torch.backends.cudnn.allow_tf32,
                     'matmul': torch.backends.cuda.matmul.allow_tf32}}
    rows = []
    for preset in args.presets:
        config = PRESETS.get(preset) or DEFAULT_MODELS.get(preset)
        if config is None:
            raise SystemExit(f'unknown preset {preset}')
        steps_list = tuple(args.steps) if config.is_diffusion else (None,)
        gpu = device == 'cuda'
        modes = [('fp32', False, True)]
        if gpu:
            modes += [('fp16', False, True), ('fp16', True, True)]
        if config.has_mlore:
            modes += [('fp16', False, False), ('fp16', True, False)] if gpu else \
                [('fp32', False, False)]
        # The deployed mode also gets the camera path and the backbone timing.
        deployed = ('fp16', True, True) if gpu else ('fp32', False, True)
        for mode in modes:
            rows += measure(preset, *mode, steps_list, args, extra=mode == deployed)
    for row in rows:
        # GFLOP / (TFLOP/s) = ms.
        row['limit_ms'] = round(row['gflops'] / rate, 4)
        row['ratio_to_limit'] = round(row['p50_ms'] / row['limit_ms'], 1) \
            if row['limit_ms'] else None
    summary = summarize(rows, device)
    if device == 'cuda' and not args.no_profile:
        for item in summary['goals']:
            if not item['met']:
                log(f'profiling {item["preset"]} steps {item["steps"]} (goal missed)')
                engine = create_engine(item['preset'], device=device, precision='fp16',
                                       cuda_graphs=False)
                item['profile_fp16_eager'] = profile_network(engine, item['steps'])
                engine.close()
                torch.cuda.empty_cache()
    return {'info': info, 'rows': rows, 'summary': summary}


def _find(rows, preset, steps, precision, graphs, form):
    for row in rows:
        if (row['preset'], row['steps'], row['precision'], row['cuda_graphs']) == \
                (preset, steps, precision, graphs) and row['mlore_form'] in (form, None):
            return row
    return None


def summarize(rows, device):
    goals, speedups, reparam, diffusion = [], [], [], []
    presets = list(dict.fromkeys(r['preset'] for r in rows))
    for preset in presets:
        for steps in dict.fromkeys(r['steps'] for r in rows if r['preset'] == preset):
            best = _find(rows, preset, steps, 'fp16', True, 'fused')
            base = _find(rows, preset, steps, 'fp32', False, 'fused')
            if best and base:
                speedups.append({'preset': preset, 'steps': steps,
                                 'fp32_eager_ms': base['p50_ms'],
                                 'fp16_graphs_ms': best['p50_ms'],
                                 'speedup': round(base['p50_ms'] / best['p50_ms'], 2),
                                 'met': base['p50_ms'] / best['p50_ms'] >= SPEEDUP_GOAL})
            goal = GOALS_MS.get((preset, steps))
            if goal and best:
                goals.append({'preset': preset, 'steps': steps, 'goal_ms': goal,
                              'fp16_graphs_ms': best['p50_ms'],
                              'met': best['p50_ms'] < goal})
            for graphs in (False, True):
                fused = _find(rows, preset, steps, 'fp16', graphs, 'fused')
                train = _find(rows, preset, steps, 'fp16', graphs, 'train-form')
                if fused and train and fused['mlore_form']:
                    reparam.append({'preset': preset, 'steps': steps, 'cuda_graphs': graphs,
                                    'train_form_ms': train['p50_ms'],
                                    'fused_ms': fused['p50_ms'],
                                    'train_form_gflops': train['gflops'],
                                    'fused_gflops': fused['gflops']})
        by_steps = {r['steps']: r for r in rows
                    if r['preset'] == preset and 'end_to_end_480x640_p50_ms' in r}
        if len(by_steps) >= 2 and None not in by_steps:
            low, high = min(by_steps), max(by_steps)
            per_step = (by_steps[high]['p50_ms'] - by_steps[low]['p50_ms']) / (high - low)
            backbone = next((r['backbone_ms'] for r in by_steps.values() if 'backbone_ms' in r),
                            None)
            diffusion.append({'preset': preset, 'per_step_ms': round(per_step, 3),
                              'backbone_ms': backbone,
                              'step_over_backbone': round(per_step / backbone, 2)
                              if backbone else None})
    return {'goals': goals, 'fp16_graphs_speedup': speedups, 'reparameterization': reparam,
            'diffusion_step_vs_backbone': diffusion, 'device': device}


def markdown(result):
    info, rows, summary = result['info'], result['rows'], result['summary']
    lines = [f"**{info['device']}**, torch {info['torch']}, dense {info['matmul_dtype']} matmul "
             f"{info['matmul_tflops']} TFLOP/s (same run), batch 1, p50 of "
             f"{info['iters']} iterations; limit = FLOPs / that rate.", '',
             '| preset | steps | precision | CUDA graphs | MLoRE | p50 ms | p95 ms | GFLOP | '
             'limit ms | x limit | camera 480x640 ms |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        graphs = ('yes' if r['graph_used'] else 'FAILED') if r['cuda_graphs'] else 'no'
        lines.append(f"| {r['preset']} | {r['steps'] or '-'} | {r['precision']} | {graphs} | "
                     f"{r['mlore_form'] or '-'} | {r['p50_ms']} | {r['p95_ms']} | "
                     f"{r['gflops']} | {r['limit_ms']} | {r['ratio_to_limit']} | "
                     f"{r.get('end_to_end_480x640_p50_ms', '')} |")
    lines += ['', '| goal | steps | target ms | fp16+graphs ms | met |', '|---|---|---|---|---|']
    for g in summary['goals']:
        lines.append(f"| {g['preset']} | {g['steps'] or '-'} | < {g['goal_ms']} | "
                     f"{g['fp16_graphs_ms']} | {'yes' if g['met'] else 'NO'} |")
    lines += ['', '| speed-up fp16+graphs vs fp32 eager | steps | fp32 ms | fp16+graphs ms | '
              'x | >= 2x |', '|---|---|---|---|---|---|']
    for s in summary['fp16_graphs_speedup']:
        lines.append(f"| {s['preset']} | {s['steps'] or '-'} | {s['fp32_eager_ms']} | "
                     f"{s['fp16_graphs_ms']} | {s['speedup']} | {'yes' if s['met'] else 'NO'} |")
    if summary['reparameterization']:
        lines += ['', '| train-form vs fused MLoRE (fp16) | steps | graphs | train ms | '
                  'fused ms | train GFLOP | fused GFLOP |', '|---|---|---|---|---|---|---|']
        for r in summary['reparameterization']:
            lines.append(f"| {r['preset']} | {r['steps'] or '-'} | "
                         f"{'yes' if r['cuda_graphs'] else 'no'} | {r['train_form_ms']} | "
                         f"{r['fused_ms']} | {r['train_form_gflops']} | {r['fused_gflops']} |")
    if summary['diffusion_step_vs_backbone']:
        lines += ['', '| one diffusion step vs backbone (fp16+graphs) | step ms | backbone ms |'
                  ' ratio |', '|---|---|---|---|']
        for d in summary['diffusion_step_vs_backbone']:
            lines.append(f"| {d['preset']} | {d['per_step_ms']} | {d['backbone_ms']} | "
                         f"{d['step_over_backbone']} |")
    for g in summary['goals']:
        profile = g.get('profile_fp16_eager')
        if profile:
            lines += ['', f"Profile of {g['preset']} (steps {g['steps'] or '-'}, fp16 eager): "
                      f"wall {profile['wall_ms']} ms, GPU busy {profile['gpu_busy_ms']} ms, "
                      f"host/launch overhead {profile['host_overhead_ms']} ms, "
                      f"{profile['kernel_launches']} kernel launches; by class "
                      + ', '.join(f'{k} {v} ms' for k, v in profile['by_class_ms'].items())]
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--presets', nargs='+', default=list(DEFAULT_PRESETS))
    parser.add_argument('--steps', nargs='+', type=int, default=list(DEFAULT_STEPS))
    parser.add_argument('--iters', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument('--device', choices=('cuda', 'cpu'), default='cuda')
    parser.add_argument('--output', default='benchmark_gpu.json')
    parser.add_argument('--no-profile', action='store_true',
                        help='skip the kernel profile of presets that miss their goal')
    parser.add_argument('--profile-all', action='store_true',
                        help='profile every fp16+graphs configuration (slower)')
    args = parser.parse_args(argv)
    result = run(args)
    with open(args.output, 'w') as handle:
        json.dump(result, handle, indent=1)
    print(markdown(result))
    log(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
