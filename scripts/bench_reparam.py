#!/usr/bin/env python3
"""Train form against re-parameterised MLoRE: latency (median) and FLOPs, batch 1.

Times the whole model and the decoder alone (encoder outputs precomputed) for each preset,
on the CPU or a CUDA device, in fp32 and (CUDA) fp16. Random weights with random BatchNorm
statistics: speed does not depend on the values. Prints a markdown table; --json writes one.

    python scripts/bench_reparam.py --device cpu --iters 3
    python scripts/bench_reparam.py --device cuda --precision fp32 fp16 --iters 50
"""

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mtdp_ros.models import PRESETS, build_model, reparameterize


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def median_ms(fn, device, iters, warmup):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def count_flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def randomize_batchnorm(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


@torch.no_grad()
def bench_preset(name, device, precision, iters, warmup):
    config = PRESETS[name]
    model = build_model(config).eval()
    randomize_batchnorm(model)
    fused = reparameterize(model)
    dtype = torch.float16 if precision == 'fp16' else torch.float32
    model, fused = model.to(device, dtype), fused.to(device, dtype)
    x = torch.randn(1, 3, *config.image_size, device=device, dtype=dtype)
    levels = model.encoder(x)
    rows = []
    for form, net in (('train', model), ('reparam', fused)):
        whole = median_ms(lambda: net(x), device, iters, warmup)
        decoder = median_ms(lambda: net.decoder(levels, config.tasks), device, iters, warmup)
        rows.append({'preset': name, 'device': device.type, 'precision': precision,
                     'form': form, 'model_ms': whole, 'decoder_ms': decoder,
                     'model_gflops': count_flops(lambda: net(x)) / 1e9,
                     'decoder_gflops': count_flops(
                         lambda: net.decoder(levels, config.tasks)) / 1e9})
    del model, fused
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--presets', nargs='+', default=['mlore_pascal_vitS', 'mlore_nyud_vitL'])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--precision', nargs='+', default=['fp32'], choices=['fp32', 'fp16'])
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--json', help='write the rows to this file')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cpu' and 'fp16' in args.precision:
        parser.error('fp16 is benchmarked on CUDA only')
    rows = []
    for name in args.presets:
        for precision in args.precision:
            rows += bench_preset(name, device, precision, args.iters, args.warmup)
    header = ('| preset | device | precision | form | model ms | decoder ms | model GFLOPs '
              '| decoder GFLOPs |')
    print(header)
    print('|' + '---|' * 8)
    for r in rows:
        print(f"| {r['preset']} | {r['device']} | {r['precision']} | {r['form']} | "
              f"{r['model_ms']:.2f} | {r['decoder_ms']:.2f} | {r['model_gflops']:.1f} | "
              f"{r['decoder_gflops']:.1f} |")
    for i in range(0, len(rows), 2):
        train, fused = rows[i], rows[i + 1]
        print(f"{train['preset']} {train['device']} {train['precision']}: reparam/train "
              f"model {fused['model_ms'] / train['model_ms']:.2f}x, decoder "
              f"{fused['decoder_ms'] / train['decoder_ms']:.2f}x")
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
