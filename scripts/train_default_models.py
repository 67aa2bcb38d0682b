#!/usr/bin/env python3
"""Train the shipped default models within a time budget, evaluate them, write model cards.

For each model (default_mlore, default_taskdiffusion):

1. ``mtdp train mtdp_ros/training/configs/<name>.yaml --time-budget-min T --save
   <data-dir>/<name>.safetensors --out <runs-dir>/<name>`` (random init, synthetic scenes
   0 .. 399999);
2. ``mtdp eval --model <data-dir>/<name>.safetensors --data synthetic --num 200 --seed
   424242 --json`` (TaskDiffusion at its trained step count, and at 1 and 5 steps);
3. ``<data-dir>/<name>.md``: the model card (config, recipe, exact commands, hardware,
   time, evaluation table, the quality floors) and ``<data-dir>/<name>_eval.json``.

Run from the repository root (``python3 scripts/train_default_models.py``); on the GPU
machine of the device tool, write into ``$OUT`` with ``--data-dir $OUT``.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# The quality floors live in one place, beside the evaluation (the tests check them too).
from mtdp_ros.training.evaluate import check_floors, describe_floors  # noqa: E402

MODELS = ('default_mlore', 'default_taskdiffusion')
MAX_BYTES = 25 * 1024 * 1024
CLI = [sys.executable, '-c', 'import sys; from mtdp_ros.cli import main; sys.exit(main())']


def run_cli(args, log):
    """Run ``mtdp ARGS`` in a child process; returns the JSON of its last stdout line."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    print('$ mtdp ' + ' '.join(args), flush=True)
    with open(log, 'a', encoding='utf-8') as err:
        proc = subprocess.run(CLI + list(args), cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=err, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        with open(log, encoding='utf-8') as err:
            tail = err.read()[-3000:]
        raise SystemExit(f'mtdp {args[0]} failed (exit {proc.returncode}); log {log}:\n{tail}')
    return json.loads(lines[-1])


def floors_met(summary):
    """Failed quality floors of an eval summary (empty when all are met)."""
    return check_floors(summary)


def environment():
    """GPU, PyTorch, CUDA, CPU cores and Python of this machine."""
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'
    return {'gpu': gpu, 'torch': torch.__version__,
            'cuda': torch.version.cuda if torch.cuda.is_available() else None,
            'cpu_cores': os.cpu_count(), 'python': platform.python_version()}


def table(results):
    """Markdown table of eval summaries (label -> summary)."""
    rows = ['| setting | semseg mIoU | depth abs_rel | depth RMSE (m) | normals mean (deg) '
            '| normals median (deg) | edge odsF | floors |',
            '| --- | --- | --- | --- | --- | --- | --- | --- |']
    for label, summary in results.items():
        failed = floors_met(summary)
        rows.append(
            f'| {label} | {summary["semseg"]["mIoU"]:.3f} | {summary["depth"]["abs_rel"]:.3f} '
            f'| {summary["depth"]["rmse"]:.3f} | {summary["normals"]["mean_angle"]:.2f} '
            f'| {summary["normals"]["median_angle"]:.2f} | {summary["edge"]["odsF"]:.3f} '
            f'| {"met" if not failed else "NOT met: " + "; ".join(failed)} |')
    return '\n'.join(rows)


def model_card(name, config_text, model_config, train_cmd, eval_cmds, summary, env, results,
               size_bytes, budget, eval_set):
    """Markdown model card text."""
    from mtdp_ros.training.scene_sampling import SCENE_CLASSES
    classes = ', '.join(f'{k} {v.split(" (")[0]}' for k, v in sorted(SCENE_CLASSES.items()))
    steps, seen = summary['steps'], summary.get('images_seen')
    on_gpu = env['gpu'] != 'none'
    hardware = (f"{env['gpu']}, {env['cpu_cores']} CPU cores; PyTorch {env['torch']}, "
                f"CUDA {env['cuda']}" if on_gpu else
                f"CPU only ({env['cpu_cores']} cores); PyTorch {env['torch']}")
    num, seed = eval_set
    family = model_config['family']
    what = ('MLoRE (mixture of low-rank experts decoder, re-parameterisable)'
            if family == 'mlore' else 'TaskDiffusion (cross-task diffusion decoder, DDIM '
            f'sampler, {model_config.get("trained_steps")} steps by default)')
    params = summary.get('parameters')
    size = model_config['image_size']
    return f"""# {name}

{what}, trained by this project from random weights on its procedural synthetic indoor \
scenes (`mtdp_ros/training/synthetic.py`).

- Input: {size[0]} x {size[1]} RGB (any camera image is letterboxed to it).
- Training camera: pinhole, fx = fy = {model_config.get('train_focal_px') or 0:.5f} px at \
{size[0]} x {size[1]} (the Kinect's field of view, principal point at the centre); depth is \
rescaled to other cameras from their camera_info (README, Camera-aware depth).
- Outputs (NYUD-v2 tasks): semantic segmentation over the 40 NYUD classes, of which the \
scenes use {classes}; metric depth; surface normals in the camera optical frame; edges.
- Weights: `{name}.safetensors`, {size_bytes / 1e6:.1f} MB (float16, the model config in \
the file's metadata){f', {params / 1e6:.2f} M parameters' if params else ''}.

Made for the demo and for tests that judge real predictions: it knows these synthetic rooms,
not real images. Fine-tune it (`mtdp train` with `init: model`) on labelled data of your own
before relying on it.

## Evaluation
{num} held-out scenes (seeds {seed} .. {seed + num - 1}; training used seeds 0 .. 399999):

{table(results)}

Floors the project requires: {describe_floors()} (semseg mIoU over the classes present,
edge tolerance 0.011 x diagonal, see `mtdp_ros/training/metrics.py` for how it
approximates the BSDS benchmark).

Commands:
```
{chr(10).join(eval_cmds)}
```

## Training
- Command: `{train_cmd}`
  (driven by `python3 scripts/train_default_models.py --time-budget-min {budget:g}`)
- Hardware: {hardware}, Python {env['python']}
- Wall time of the training loop: {summary['train_seconds'] / 60:.1f} min (budget \
{budget:g} min, stopped by: {summary['stop_reason']}); {steps} optimiser steps{
f" of batch {summary['batch_size']} ({seen:,} scenes rendered"
f"{' on the GPU' if on_gpu else ''})" if seen else ''}; mixed precision {summary['amp']}
- Final training losses: {json.dumps({k: round(v, 4) for k, v in summary['final_losses'].items()
                                      if isinstance(v, float)})}
- Trained on {datetime.date.today().isoformat()}

Recipe (`mtdp_ros/training/configs/{name}.yaml`):
```yaml
{config_text.strip()}
```

Model config:
```json
{json.dumps(model_config, indent=1)}
```

## Licence
Apache-2.0, as the project: trained from random initialisation on data the project
generates; no third-party weights or data sets are involved.
"""


def main(argv=None):
    """Train, evaluate and document the requested default models."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', choices=MODELS, default=list(MODELS))
    parser.add_argument('--time-budget-min', type=float, default=7.0,
                        help='training wall time per model (default 7)')
    parser.add_argument('--data-dir', default=os.path.join(REPO, 'mtdp_ros', 'data'),
                        help='where the weights, cards and eval JSON go')
    parser.add_argument('--runs-dir', default=os.path.join(REPO, 'runs'))
    parser.add_argument('--eval-num', type=int, default=200)
    parser.add_argument('--eval-seed', type=int, default=424242)
    parser.add_argument('--batch-size', type=int, help='override the recipe\'s batch size')
    parser.add_argument('--workers', type=int, help='override the recipe\'s data workers')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    parser.add_argument('--skip-train', action='store_true',
                        help='evaluate existing weights and rewrite the cards only')
    args = parser.parse_args(argv)
    sys.path.insert(0, REPO)
    os.makedirs(args.data_dir, exist_ok=True)
    env = environment()
    print(f'environment: {env}', flush=True)
    failures = {}
    for name in args.models:
        config_rel = f'mtdp_ros/training/configs/{name}.yaml'
        weights = os.path.join(args.data_dir, f'{name}.safetensors')
        run_dir = os.path.join(args.runs_dir, name)
        os.makedirs(run_dir, exist_ok=True)
        log = os.path.join(run_dir, 'stderr.log')
        recipe = ['train', config_rel, '--time-budget-min', f'{args.time_budget_min:g}']
        if args.batch_size:
            recipe += ['--batch-size', str(args.batch_size)]
        if args.workers is not None:
            recipe += ['--workers', str(args.workers)]
        if args.device != 'auto':
            recipe += ['--device', args.device]
        # The recipe's own output places, redirected to this run's folders.
        train_args = recipe + ['--out', run_dir, '--save', weights, '--resume', 'never']
        summary_path = os.path.join(run_dir, 'summary.json')
        command_path = os.path.join(run_dir, 'command.json')
        if args.skip_train:
            with open(summary_path, encoding='utf-8') as handle:
                summary = json.load(handle)
            with open(command_path, encoding='utf-8') as handle:
                recipe, budget = json.load(handle)
        else:
            budget = args.time_budget_min
            with open(command_path, 'w', encoding='utf-8') as handle:
                json.dump([recipe, budget], handle)
            start = time.time()
            summary = run_cli(train_args, log)
            print(f'{name}: trained {summary["steps"]} steps in '
                  f'{(time.time() - start) / 60:.1f} min', flush=True)
        os.chmod(weights, 0o644)                 # package data: readable by everyone
        size = os.path.getsize(weights)
        if size > MAX_BYTES:
            raise SystemExit(f'{weights} is {size / 1e6:.1f} MB, over the 25 MB limit')
        from mtdp_ros.models import build_model, read_checkpoint_config
        model_config = read_checkpoint_config(weights)
        summary['parameters'] = sum(p.numel() for p in build_model(model_config).parameters())
        base = ['eval', '--model', weights, '--data', 'synthetic', '--num', str(args.eval_num),
                '--seed', str(args.eval_seed), '--device', args.device, '--json']
        settings = [('trained', [])]
        if model_config.is_diffusion:
            trained = model_config.trained_steps
            settings = [(f'{trained} steps (trained)', []), ('1 step', ['--steps', '1']),
                        ('5 steps', ['--steps', '5'])]
        results, eval_cmds = {}, []
        for label, extra in settings:
            results[label] = run_cli(base + extra, log)
            eval_cmds.append(f'mtdp eval --model {name} --data synthetic --num {args.eval_num} '
                             f'--seed {args.eval_seed} --json' + ''.join(' ' + e for e in extra))
            print(f'{name} [{label}]: {json.dumps(results[label])}', flush=True)
        failed = floors_met(next(iter(results.values())))
        if failed:
            failures[name] = failed
        train_cmd = ' '.join(['mtdp'] + recipe)
        with open(os.path.join(REPO, config_rel), encoding='utf-8') as handle:
            config_text = handle.read()
        card = model_card(name, config_text, model_config.to_dict(), train_cmd, eval_cmds,
                          summary, env, results, size, budget,
                          (args.eval_num, args.eval_seed))
        with open(os.path.join(args.data_dir, f'{name}.md'), 'w', encoding='utf-8') as handle:
            handle.write(card)
        with open(os.path.join(args.data_dir, f'{name}_eval.json'), 'w',
                  encoding='utf-8') as handle:
            json.dump({'environment': env, 'training': summary, 'evaluation': results,
                       'floors_failed': failed}, handle, indent=1)
        print(f'{name}: card {os.path.join(args.data_dir, name + ".md")}; floors '
              + ('met' if not failed else 'NOT met: ' + '; '.join(failed)), flush=True)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
