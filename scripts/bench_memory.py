#!/usr/bin/env python3
"""Start-up memory of an engine: peak while creating it against what it keeps afterwards.

Not a timed test: a benchmark with a goal (issue 9). Every measurement runs in a fresh
Python subprocess so the peak is that of one engine creation alone:

- CPU: the growth of the process's peak resident set
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) over its resident set after the imports
  (``baseline_mb``: the interpreter and PyTorch), divided by the bytes of the tensors the
  engine keeps (its model's parameters and buffers, ``tensor_mb``): what creating the
  engine costs per byte it keeps, the goal's measure (<= 1.3). ``peak / resident`` (both
  with the interpreter) is printed too; it flatters the ratio.
- CUDA (when available): ``torch.cuda.max_memory_allocated`` during creation against
  ``torch.cuda.memory_allocated`` afterwards (PyTorch's own allocations only).

    python scripts/bench_memory.py --preset mlore_pascal_vitS            # CPU, goal <= 1.3
    python scripts/bench_memory.py --preset mlore_pascal_vitS --device cuda --precision fp16
    python scripts/bench_memory.py --table                               # sizes of all nine

Exit code 1 when a measured ratio (CPU: growth over tensors) exceeds ``--goal``.
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r'''
import json, os, re, resource, sys, time
def rss_mb():
    with open('/proc/self/status') as handle:
        return int(re.search(r'VmRSS:\s+(\d+)', handle.read()).group(1)) / 1024
import torch
from mtdp_ros.runtime import create_engine
args = json.loads(sys.argv[1])
baseline = rss_mb()
cuda = args['device'] == 'cuda'
if cuda:
    torch.cuda.init()
    torch.cuda.reset_peak_memory_stats()
started = time.perf_counter()
engine = create_engine(args['preset'], device=args['device'], precision=args['precision'],
                       reparameterize=args['reparameterize'])
seconds = time.perf_counter() - started
result = {'preset': args['preset'], 'device': args['device'], 'precision': args['precision'],
          'reparameterize': args['reparameterize'], 'reparameterized': engine.reparameterized,
          'creation_s': round(seconds, 2), 'baseline_mb': round(baseline, 1),
          'cpu_resident_mb': round(rss_mb(), 1),
          'cpu_peak_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
model = getattr(engine, 'model', None)
if model is not None:
    kept = {t.data_ptr(): t.numel() * t.element_size()
            for t in [*model.parameters(), *model.buffers()] if t.device.type == 'cpu'}
    result['tensor_mb'] = round(sum(kept.values()) / 2 ** 20, 1)
if cuda:
    torch.cuda.synchronize()
    result['cuda_resident_mb'] = round(torch.cuda.memory_allocated() / 2 ** 20, 1)
    result['cuda_peak_mb'] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
print('RESULT ' + json.dumps(result))
'''


def measure(preset, device, precision, reparameterize):
    """One engine creation in a fresh subprocess; its result dict."""
    spec = json.dumps({'preset': preset, 'device': device, 'precision': precision,
                       'reparameterize': reparameterize})
    done = subprocess.run([sys.executable, '-c', CHILD, spec], capture_output=True, text=True,
                          env={**os.environ, 'OMP_NUM_THREADS': os.environ.get(
                              'OMP_NUM_THREADS', '1')})
    for line in done.stdout.splitlines():
        if line.startswith('RESULT '):
            return json.loads(line[len('RESULT '):])
    raise RuntimeError(f'measurement of {preset} failed:\n{done.stderr[-2000:]}')


JETSONS_GB = (8, 16, 32, 64)
# Measured on the CPU (2-core VM, this script): peak RSS while creating the engine, less
# the interpreter and PyTorch (BASELINE_MB), over the larger fp32 form's weights; the
# largest ratio of the measured presets, used to compute the others.
STARTUP_RATIO = 1.31
BASELINE_MB = 221
# A Jetson's shared memory also holds the OS, the camera driver and the rest of the robot.
JETSON_RESERVED_GB = 2


def _fits(startup_mb, running_mb):
    """Jetson sizes (GB) where the start-up peak and the running weights fit."""
    return [gb for gb in JETSONS_GB
            if startup_mb <= (gb - JETSON_RESERVED_GB) * 1024
            and running_mb <= 0.5 * (gb - JETSON_RESERVED_GB) * 1024]


def table():
    """Markdown rows: sizes of every preset's forms and the Jetson sizes each fits.

    A Jetson builds the model on its CPU in fp32 in the same shared memory the GPU uses, so
    the start-up peak is the fp32 one (``STARTUP_RATIO`` x the larger fp32 form); the
    running fp16 weights must also pass the ``auto`` rule (half of the free memory).
    """
    from mtdp_ros.models import PRESETS
    from mtdp_ros.models.reparam import model_memory
    print('| preset | parameters (M) | train form fp32 / fp16 (MiB) | fused fp32 / fp16 (MiB) |'
          ' start-up peak RSS, computed (MiB) | Jetson GB: fused | Jetson GB: train form |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    mib = 1.0                                  # model_memory gives MiB already
    for name, config in PRESETS.items():
        sizes = model_memory(config)
        train, fused = sizes['train_mb'], sizes['fused_mb']
        startup = BASELINE_MB + STARTUP_RATIO * max(train['fp32'], (fused or train)['fp32'])
        fused_fits = _fits(startup, fused['fp16']) if fused else None
        train_fits = _fits(BASELINE_MB + STARTUP_RATIO * train['fp32'], train['fp16'])
        fused_text = (f"{fused['fp32'] * mib:.0f} / {fused['fp16'] * mib:.0f}"
                      if fused else '-')
        fits_text = ('-' if fused_fits is None else ', '.join(map(str, fused_fits)) or 'none')
        print(f"| {name} | {sizes['parameters'] / 1e6:.1f} | {train['fp32'] * mib:.0f} / "
              f"{train['fp16'] * mib:.0f} | {fused_text} | {startup * mib:.0f} | {fits_text} | "
              f"{', '.join(map(str, train_fits)) or 'none'} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--preset', action='append',
                        help='preset to measure (repeatable; default mlore_pascal_vitS)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--precision', choices=('fp32', 'fp16'), default='fp32')
    parser.add_argument('--reparameterize', choices=('auto', 'true', 'false'), default='true')
    parser.add_argument('--goal', type=float, default=1.3,
                        help='largest CPU peak growth / tensors kept (CUDA: peak / resident)')
    parser.add_argument('--table', action='store_true', help='print the sizes of all presets')
    parser.add_argument('--json', action='store_true', help='one JSON line per measurement')
    args = parser.parse_args()
    if args.table:
        table()
        return 0
    if args.device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            print('bench_memory: --device cuda but CUDA is not available', file=sys.stderr)
            return 2
    worst = 0.0
    for preset in args.preset or ['mlore_pascal_vitS']:
        result = measure(preset, args.device, args.precision, args.reparameterize)
        kind = 'cuda' if args.device == 'cuda' else 'cpu'
        peak, resident = result[f'{kind}_peak_mb'], result[f'{kind}_resident_mb']
        result['peak_over_resident'] = round(peak / resident, 3)
        ratio = result['peak_over_resident']
        if kind == 'cpu':
            base = result['baseline_mb']
            result['growth_over_tensors'] = round((peak - base) / result['tensor_mb'], 3)
            ratio = result['growth_over_tensors']
        worst = max(worst, ratio)
        print(f"{preset} on {args.device} {args.precision} "
              f"({'fused' if result['reparameterized'] else 'train form'}): created in "
              f"{result['creation_s']} s, peak {peak} MiB, resident {resident} MiB, "
              f"peak/resident {result['peak_over_resident']}"
              + (f"; peak growth {peak - base:.1f} MiB over the {base} MiB after the imports, "
                 f"tensors kept {result['tensor_mb']} MiB: growth/tensors "
                 f"{result['growth_over_tensors']}" if kind == 'cpu' else ''))
        if args.json:
            print(json.dumps(result))
    return 1 if worst > args.goal else 0


if __name__ == '__main__':
    sys.exit(main())
