#!/usr/bin/env python3
"""The engine's own work around the network on the CPU: pre/post ms against the network's.

For each backend (torch, onnxruntime), model and camera size, ``engine.infer`` runs on a
random camera image; the medians of ``engine.last_timing`` (preprocess_ms, model_ms,
postprocess_ms) and the ratio (preprocess + postprocess) / model are printed, one JSON line
per configuration. Configurations are interleaved round by round so that a change in the
machine's load hits all of them alike. Thread counts: ``--threads`` sets
``torch.set_num_threads`` and ONNX Runtime's intra-op threads (through OMP_NUM_THREADS,
which the session reads when it is created; see the README).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_cpu.py --iters 10
"""

import argparse
import json
import os
import statistics
import sys
import time


def parse_size(text):
    """'480x640' -> (480, 640)."""
    height, width = (int(v) for v in text.lower().split('x'))
    return height, width


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
    args = parser.parse_args()
    import numpy as np
    import torch
    from mtdp_ros.runtime import create_engine
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = args.backend or ['torch', 'onnxruntime']
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
                             'timings': []})
    for round_index in range(args.warmup + args.iters):
        for run in runs:
            engine = engines[run['backend'], run['model']]
            engine.infer(run['image'])
            if round_index >= args.warmup:
                run['timings'].append(dict(engine.last_timing))
    for run in runs:
        medians = {key: statistics.median(t[key] for t in run['timings'])
                   for key in ('preprocess_ms', 'model_ms', 'postprocess_ms')}
        ratio = (medians['preprocess_ms'] + medians['postprocess_ms']) / medians['model_ms']
        print(json.dumps({
            'backend': run['backend'], 'model': run['model'],
            'size': 'x'.join(map(str, run['size'])), 'iters': len(run['timings']),
            'threads': torch.get_num_threads(), 'omp_num_threads': os.environ.get(
                'OMP_NUM_THREADS'),
            **{k: round(v, 2) for k, v in medians.items()},
            'pre_post_over_model': round(ratio, 4)}))
    for engine in engines.values():
        engine.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
