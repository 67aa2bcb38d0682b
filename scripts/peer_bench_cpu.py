#!/usr/bin/env python3
"""CPU latency of TaskDiffusion: the authors' own code against this project's, in one run.

The same random weights in both (ours are drawn, then loaded into the authors' model under
their key names, see ``mtdp_ros.models.convert``), the same image and the same initial
noise: the outputs must agree (max |diff| is printed; ~1e-6 expected). Runs are
interleaved round by round (authors, ours, ours-2, ...; the order rotates each round) so
that a change in the machine's load hits every contender alike; medians of wall time and
of process CPU time (which a loaded machine disturbs far less) and the median of the
per-round wall-time ratios are printed. Several ``--ours`` checkouts may be given (e.g. the
code before and after a change); each is imported on its own.

The authors' ``models/`` folder is read from ``--authors`` and never copied into the
project. It needs ``einops`` (``pip install --target DIR einops``, then
``PYTHONPATH=DIR``); ``timm`` (which needs torchvision) is replaced by a small shim below
with timm's semantics for what their ViT uses (PatchEmbed, Mlp, DropPath in eval, inits).

    git --git-dir=<TaskDiffusion mirror> archive HEAD models | tar -x -C /tmp/authors/td
    OMP_NUM_THREADS=2 PYTHONPATH=/tmp/site python scripts/peer_bench_cpu.py
        --authors /tmp/authors/td --ours . --rounds 5

Prints one JSON line per round and a summary JSON line at the end.
"""

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import types
import warnings

import torch
from torch import nn

PASCAL = {'semseg': 21, 'human_parts': 7, 'sal': 2, 'normals': 3, 'edge': 1}
ORDER = ['semseg', 'depth', 'human_parts', 'sal', 'normals', 'edge']
CLASS_TASKS = {'semseg', 'human_parts', 'sal'}
VIT_B = dict(select_list=range(3, 12, 3), embed_dim=768, depth=12, num_heads=12)


class EasyDict(dict):
    """Attribute-access dict (what the authors' code uses from easydict)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(key) from exc

    def __setattr__(self, key, value):
        self[key] = value


# ----------------------------------------------------------------------------- timm shim
class PatchEmbed(nn.Module):
    """timm's PatchEmbed without a norm: conv with stride = patch, tokens B x N x C."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.grid_size = (size[0] // patch_size, size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class Mlp(nn.Module):
    """timm's Mlp: fc1, activation, dropout, fc2, dropout."""

    def __init__(self, in_features, hidden_features=None, out_features=None,
                 act_layer=nn.GELU, drop=0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Identity):
    """Stochastic depth: the identity in eval mode (all this benchmark runs)."""

    def __init__(self, drop_prob=0.0):
        super().__init__()


def _named_apply(fn, module, name='', depth_first=True, include_root=False):
    for child_name, child in module.named_children():
        _named_apply(fn, child, f'{name}.{child_name}' if name else child_name, depth_first,
                     True)
    if include_root:
        fn(module=module, name=name)
    return module


def _unavailable(*args, **kwargs):
    raise RuntimeError('pretrained-weight loading is not part of the timm shim')


def install_shims():
    """Put ``easydict`` and the ``timm`` names the authors' ViT imports into sys.modules."""
    easydict = types.ModuleType('easydict')
    easydict.EasyDict = EasyDict
    timm = types.ModuleType('timm')
    data = types.ModuleType('timm.data')
    data.IMAGENET_DEFAULT_MEAN, data.IMAGENET_DEFAULT_STD = (0.485, 0.456, 0.406), \
        (0.229, 0.224, 0.225)
    data.IMAGENET_INCEPTION_MEAN = data.IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)
    models = types.ModuleType('timm.models')
    helpers = types.ModuleType('timm.models.helpers')
    helpers.build_model_with_cfg = helpers.adapt_input_conv = _unavailable
    helpers.named_apply = _named_apply
    layers = types.ModuleType('timm.models.layers')
    layers.PatchEmbed, layers.Mlp, layers.DropPath = PatchEmbed, Mlp, DropPath
    layers.trunc_normal_ = nn.init.trunc_normal_
    layers.lecun_normal_ = lambda tensor: nn.init.kaiming_normal_(tensor, mode='fan_in',
                                                                  nonlinearity='linear')
    timm.data, timm.models, models.helpers, models.layers = data, models, helpers, layers
    for module in (easydict, timm, data, models, helpers, layers):
        sys.modules[module.__name__] = module


# ----------------------------------------------------------------------------- models
def fresh_import(root, prefixes, names):
    """Import ``names`` from ``root``, first forgetting every module under ``prefixes``."""
    for key in [k for k in sys.modules if k.split('.')[0] in prefixes]:
        del sys.modules[key]
    sys.path.insert(0, root)
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(root)


def tasks_config():
    tasks = EasyDict()
    tasks.NAMES = [t for t in ORDER if t in PASCAL]
    tasks.NUM_OUTPUT = {t: PASCAL[t] for t in tasks.NAMES}
    tasks.NUM_CLASSES = {t: (PASCAL[t] if t in CLASS_TASKS else -1) for t in tasks.NAMES}
    tasks.NUM_OUTPUTS = {t: (-1 if t in CLASS_TASKS else PASCAL[t]) for t in tasks.NAMES}
    return tasks


def build_authors(root, config, steps):
    """The authors' TaskDiffusion (ViT-B, PASCAL) with ``steps`` sampling steps."""
    backbone_mod, head_mod, wrapper_mod = fresh_import(
        root, ('models', 'utils'),
        ['models.transformers.TaskDiffusion_baseline', 'models.transformers.TaskDiffusion_head',
         'models.TaskDiffusion_wrapper'])
    grid = config.grid_size
    p = EasyDict(TASKS=tasks_config(), final_embed_dim=config.decoder_dim, rank_list=None,
                 topk=None, spatial_size=grid[0] * grid[1])
    backbone = backbone_mod.MLoRE(p, img_size=tuple(config.image_size), patch_size=16, **VIT_B)
    head = head_mod.Crosstask_diffusion_decoder(
        p=p, bit_scale={'all': config.scale}, timesteps=steps, randsteps=1,
        embed_dim=config.decoder_dim, module_layer=config.module_layers,
        with_auxiliary_head=True, num_layer=4)
    return wrapper_mod.TaskDiffusionWrapper(p, backbone, head).eval()


def build_ours(root, preset, image_size=None):
    """(model, its to_authors_key) from the mtdp_ros package under ``root``."""
    models, convert = fresh_import(os.path.abspath(root), ('mtdp_ros',),
                                   ['mtdp_ros.models', 'mtdp_ros.models.convert'])
    config = models.PRESETS[preset]
    if image_size:
        config = config.replace(image_size=list(image_size))
    torch.manual_seed(0)
    model = models.build_model(config).eval()
    return model, convert.to_authors_key


def share_weights(ours, to_authors_key, authors):
    """Load our weights into the authors' model; the keys it has that we lack are listed."""
    state = {to_authors_key(k): v for k, v in ours.state_dict().items()}
    result = authors.load_state_dict(state, strict=False)
    return sorted(result.missing_keys), sorted(result.unexpected_keys)


# ----------------------------------------------------------------------------- timing
def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--authors', required=True, metavar='DIR',
                        help='folder holding the authors\' TaskDiffusion models/ package')
    parser.add_argument('--ours', action='append', metavar='DIR',
                        help='project checkout(s) to time (default: this one)')
    parser.add_argument('--preset', default='taskdiffusion_pascal_vitB')
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--image-size', metavar='HxW',
                        help='another input size (default: the preset\'s)')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--threads', type=int, help='torch.set_num_threads')
    args = parser.parse_args()
    warnings.filterwarnings('ignore')
    if args.threads:
        torch.set_num_threads(args.threads)
    install_shims()
    size = tuple(int(v) for v in args.image_size.split('x')) if args.image_size else None
    ours_roots = args.ours or [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    contenders = {}
    reference_model, to_authors_key = build_ours(ours_roots[0], args.preset, size)
    config = reference_model.config
    authors = build_authors(os.path.abspath(args.authors), config, args.steps)
    missing, unexpected = share_weights(reference_model, to_authors_key, authors)
    print(json.dumps({'authors_keys_not_loaded': missing, 'ours_keys_unused': unexpected}),
          flush=True)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn((1, 3, *config.image_size), generator=generator)
    noise_seed = 7

    def run_authors():
        torch.manual_seed(noise_seed)          # their sampler draws its noise from here
        return authors(x, None)

    torch.manual_seed(noise_seed)
    noise = torch.randn((1, config.noise_channels, *config.grid_size))
    contenders['authors'] = run_authors
    for index, root in enumerate(ours_roots):
        model = reference_model if index == 0 else build_ours(root, args.preset, size)[0]
        if index:
            model.load_state_dict(reference_model.state_dict())
        contenders[f'ours:{root}'] = (lambda m=model: m(x, steps=args.steps, noise=noise))

    with torch.no_grad():
        expected = run_authors()
        diffs = {}
        for name, run in contenders.items():
            got = run()
            diffs[name] = max(float((got[t] - expected[t]).abs().max()) for t in expected)
        print(json.dumps({'max_abs_diff_vs_authors': diffs}), flush=True)
        times = {name: [] for name in contenders}
        cpu = {name: [] for name in contenders}
        names = list(contenders)
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                started, started_cpu = time.perf_counter(), time.process_time()
                contenders[name]()
                times[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - started_cpu)
            print(json.dumps({'round': round_index,
                              **{n: round(t[-1], 3) for n, t in times.items()},
                              'cpu_s': {n: round(t[-1], 3) for n, t in cpu.items()}}),
                  flush=True)
    summary = {'preset': args.preset, 'image_size': list(config.image_size),
               'steps': args.steps, 'rounds': args.rounds,
               'threads': torch.get_num_threads(),
               'median_s': {n: round(statistics.median(t), 3) for n, t in times.items()},
               # Process CPU time (all threads): moves far less with the neighbours' load.
               'median_cpu_s': {n: round(statistics.median(t), 3) for n, t in cpu.items()},
               'authors_over_ours_cpu': {
                   n: round(statistics.median(cpu['authors']) / statistics.median(t), 3)
                   for n, t in cpu.items() if n != 'authors'},
               'authors_over_ours_median_of_rounds': {
                   n: round(statistics.median(a / b for a, b in zip(times['authors'], t)), 3)
                   for n, t in times.items() if n != 'authors'},
               'max_abs_diff_vs_authors': diffs}
    print(json.dumps(summary), flush=True)


if __name__ == '__main__':
    main()
