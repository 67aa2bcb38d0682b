"""Training configuration of ``mtdp train``.

A YAML file with the sections model, init, data, train, loss, finetune (RGB-D sources),
eval and output. Every key
has a default; unknown keys are errors (typos must not pass).

Example (see ``mtdp_ros/training/configs/`` for the default models)::

    model: default_mlore          # preset / default name, config file, or a dict of fields
    init: random                  # model (weights named by ``model``), a checkpoint path
                                  # (the authors' .pth or a project .safetensors), or
                                  # {encoder: PATH}: an ImageNet ViT (timm .safetensors /
                                  # .pth / Google .npz) for the encoder, the rest random
                                  # {backbone: PATH}: MT-CP only, a transformers
                                  # Mask2Former folder (save_pretrained) for the backbone
    data: {source: synthetic, seed_start: 0, seed_stop: 400000, workers: 6}
    train: {steps: 6000, batch_size: 32, lr: 0.001, amp: auto, time_budget_min: 7}
    loss: {weights: {semseg: 1, depth: 1, normals: 10, edge: 50}, edge_w: 0.95}
    output: {dir: runs/default_mlore, save: mtdp_ros/data/default_mlore.safetensors}
"""

import copy
import os

import yaml

from ..runtime.options import DEVICES

# Held-out synthetic scenes start here (``mtdp eval --data synthetic --seed 424242``):
# training seeds must stay below, validation seeds in between.
HELD_OUT_SEED = 424242
VALIDATION_SEED = 410000

DEFAULTS = {
    'model': 'default_mlore',
    'init': 'random',                 # random | model (the weights the model spec names:
                                      # a shipped default or a .safetensors) | a checkpoint
                                      # | {encoder: PATH} (pretrained ViT, see models.pretrained)
    'data': {
        'source': 'synthetic',        # synthetic | nyud | pascal | tum | rosbag
        'root': None,                 # dataset folder for nyud / pascal; TUM folders or
                                      # bags (a path, a glob or a list) for tum / rosbag
        # RGB-D recordings (tum / rosbag; see mtdp_ros/training/rgbd.py):
        'val_root': None,             # held-out folders / bags for validation
        'camera': 'auto',             # auto | fr1 | fr2 | fr3 | ros | camera YAML file
        'depth_factor': 5000.0,       # TUM depth PNG value per metre
        'max_time_difference': 0.02,  # seconds between paired colour and depth frames
        'image_topic': None,          # rosbag: sensor_msgs/Image or CompressedImage
        'depth_topic': None,          # rosbag: 32FC1 metres or 16UC1 millimetres
        'camera_info_topic': None,    # rosbag: intrinsics (else data.camera)
        'seed_start': 0,              # synthetic training seeds [seed_start, seed_stop)
        'seed_stop': 400000,
        'workers': 4,                 # processes drawing scenes / loading images
        'augment': True,              # the papers' augmentations (datasets only)
    },
    'train': {
        'steps': 4000,
        'batch_size': 16,
        'optimizer': 'adamw',         # adam | adamw
        'lr': 1e-3,
        'weight_decay': 1e-4,
        'betas': [0.9, 0.999],
        'schedule': 'poly',           # poly | constant
        'poly_power': 0.9,
        'warmup_steps': 100,
        'grad_clip': 10.0,            # max global L2 norm; 0 disables
        'amp': 'auto',                # auto | off | bf16 | fp16 (auto: bf16 on CUDA)
        'device': 'auto',             # auto | cpu | cuda
        'seed': 0,
        'time_budget_min': None,      # stop (and fit the schedule) within this wall time
        'log_every': 50,
        'checkpoint_every': 1000,
        'compile': False,             # torch.compile the model (slow start, faster steps)
        'find_unused_parameters': False,
        'sync_batchnorm': 'auto',     # auto (several CUDA processes) | true | false: BatchNorm
                                      # -> SyncBatchNorm under DDP, as the authors convert
    },
    'loss': {
        'weights': {},                # task -> weight (defaults: the authors' values)
        'edge_w': 0.95,
        'load_balancing': 0.0005,
        'aux_weight': 0.25,           # TaskDiffusion auxiliary heads
        'deep_supervision': 0.5,      # MT-CP intermediate predictions (the authors: / 2)
        'balancing': 'fixed',         # fixed | lps
        'lps': {'history': 3, 'period': 100, 'alpha': 2.5},
    },
    'finetune': {                     # RGB-D sources: semseg has no labels
        'distill': 0.0,               # weight of KL to the starting model's semseg logits
        'distill_temperature': 1.0,
        'freeze': [],                 # parameter patterns kept fixed (encoder, semseg, ...)
        'batchnorm': 'frozen',        # frozen (running statistics of the start) | train
    },
    'eval': {
        'every': 0,                   # validation every N steps (0: only at the end)
        'num': 50,
        'seed': VALIDATION_SEED,
        'batch_size': 16,
    },
    'output': {
        'dir': 'runs/train',
        'save': None,                 # final weights (.safetensors, config in metadata)
        'half': True,                 # store the final weights as float16
        'resume': 'auto',             # auto (resume from dir when a checkpoint is there),
                                      # never, or a checkpoint path
    },
}

CHOICES = {
    ('data', 'source'): ('synthetic', 'nyud', 'pascal', 'tum', 'rosbag'),
    ('train', 'optimizer'): ('adam', 'adamw'),
    ('train', 'schedule'): ('poly', 'constant'),
    ('train', 'amp'): ('auto', 'off', 'bf16', 'fp16'),
    ('train', 'device'): DEVICES,
    ('loss', 'balancing'): ('fixed', 'lps'),
    ('finetune', 'batchnorm'): ('frozen', 'train'),
}


def _merge(defaults, given, path=''):
    if not isinstance(given, dict):
        raise ValueError(f'training config{" section " + path if path else ""} must be a '
                         f'mapping, got {type(given).__name__}')
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        where = f' in section {path!r}' if path else ''
        raise ValueError(f'unknown training config keys{where}: {unknown}; '
                         f'known: {sorted(defaults)}')
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        default = defaults[key]
        free_form = key in ('model', 'weights', 'lps') or default is None
        if isinstance(default, dict) and not free_form and value is not None:
            merged[key] = _merge(default, value, f'{path}.{key}' if path else key)
        else:
            merged[key] = value
    return merged


def validate_init(init):
    """Raise ValueError unless ``init`` is random, model, a path or a one-key mapping.

    The mappings: {encoder: PATH} (an ImageNet ViT) or {backbone: PATH} (MT-CP: a
    transformers Mask2Former folder).
    """
    if isinstance(init, dict):
        if len(init) != 1 or not set(init) <= {'encoder', 'backbone'} \
                or not isinstance(next(iter(init.values())), str) \
                or not next(iter(init.values())):
            raise ValueError(f'init as a mapping must be {{encoder: PATH}} (a pretrained ViT '
                             f'file) or {{backbone: PATH}} (MT-CP: a Mask2Former folder), '
                             f'got {init!r}')
    elif init is not None and (not isinstance(init, str) or not init):
        raise ValueError(f'init must be random, model, a checkpoint path or {{encoder: PATH}}, '
                         f'got {init!r}')


def validate(config):
    """Raise ValueError naming the first bad value of a merged config."""
    validate_init(config['init'])
    for (section, key), options in CHOICES.items():
        if config[section][key] not in options:
            raise ValueError(f'{section}.{key} must be one of {options}, '
                             f'got {config[section][key]!r}')
    train, data = config['train'], config['data']
    if train['sync_batchnorm'] not in ('auto', True, False):
        raise ValueError(f"train.sync_batchnorm must be auto, true or false, "
                         f"got {train['sync_batchnorm']!r}")
    for key in ('steps', 'batch_size'):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ValueError(f'train.{key} must be a positive integer, got {train[key]!r}')
    if not float(train['lr']) > 0:
        raise ValueError(f'train.lr must be positive, got {train["lr"]!r}')
    budget = train['time_budget_min']
    if budget is not None and not float(budget) > 0:
        raise ValueError(f'train.time_budget_min must be positive, got {budget!r}')
    if data['source'] == 'synthetic':
        if not 0 <= data['seed_start'] < data['seed_stop'] <= HELD_OUT_SEED:
            raise ValueError(f'synthetic training seeds [{data["seed_start"]}, '
                             f'{data["seed_stop"]}) must lie in [0, {HELD_OUT_SEED}): '
                             f'seeds from {HELD_OUT_SEED} on are the held-out test scenes')
        if config['eval']['seed'] < data['seed_stop'] and \
                config['eval']['seed'] + config['eval']['num'] > data['seed_start']:
            raise ValueError('eval.seed range overlaps the training seeds')
    elif not data['root']:
        raise ValueError(f'data.root (the {data["source"]} folder) is required')
    finetune = config['finetune']
    if not float(finetune['distill']) >= 0:
        raise ValueError(f'finetune.distill must be >= 0, got {finetune["distill"]!r}')
    if not float(finetune['distill_temperature']) > 0:
        raise ValueError('finetune.distill_temperature must be positive')
    freeze = finetune['freeze'] or []
    if not isinstance(freeze, list) or not all(isinstance(p, str) for p in freeze):
        raise ValueError(f'finetune.freeze must be a list of parameter name patterns, '
                         f'got {freeze!r}')
    return config


def load_config(source):
    """A merged, validated training config from a YAML path or a dict."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'training config not found: {path}')
        with open(path, 'r', encoding='utf-8') as handle:
            try:
                given = yaml.safe_load(handle) or {}
            except yaml.YAMLError as exc:
                raise ValueError(f'{path}: not valid YAML: {exc}') from None
    else:
        given = source or {}
    return validate(_merge(DEFAULTS, given))
