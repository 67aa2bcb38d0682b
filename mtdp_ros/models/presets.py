"""Published configurations (the authors' YAML files) and the project's default models.

``PRESETS`` holds the nine published MLoRE/TaskDiffusion models, named as in
``shared/reference/official_key_shapes.json``, and MT-CP's (``mtcp_*``, see
``mtdp_ros/models/mtcp/presets.py``). ``DEFAULT_MODELS`` holds the small models
this project trains on synthetic scenes and ships in ``mtdp_ros/data``.
"""

from .config import ModelConfig
from .mtcp.presets import MTCP_PRESETS

# NYUD-v2's Kinect colour camera: fx = 518.8579 px (fy = 519.4696 px) at 640 x 480. The
# authors' NYUD pipeline (ATRC / MTI-Net data, as MLoRE and TaskDiffusion use it) takes the
# 425 x 560 images cut out of the 480 x 640 frames (a crop: the focal length is unchanged)
# and zero-pads them to 448 x 576 for testing, without resizing. So the network sees the
# Kinect's focal length, 518.8579 px, in its own input pixels.
NYUD_FOCAL_PX = 518.8579
NYUD_TASKS = {'tasks': ['semseg', 'depth', 'normals', 'edge'],
              'num_outputs': {'semseg': 40, 'depth': 1, 'normals': 3, 'edge': 1},
              'dataset': 'NYUD', 'image_size': [448, 576], 'train_focal_px': NYUD_FOCAL_PX}
PASCAL_TASKS = {'tasks': ['semseg', 'human_parts', 'sal', 'normals', 'edge'],
                'num_outputs': {'semseg': 21, 'human_parts': 7, 'sal': 2, 'normals': 3,
                                'edge': 1},
                'dataset': 'PASCALContext', 'image_size': [512, 512]}
VIT_L = {'embed_dim': 1024, 'depth': 24, 'num_heads': 16, 'select_layers': [6, 12, 18]}
VIT_B = {'embed_dim': 768, 'depth': 12, 'num_heads': 12, 'select_layers': [3, 6, 9]}
VIT_S = {'embed_dim': 384, 'depth': 12, 'num_heads': 6, 'select_layers': [3, 6, 9]}
DIFFUSION = {'trained_steps': 3, 'time_difference': 1, 'scale': 0.01, 'module_layers': 3}


def _ranks(first, step, count=15):
    return [first + step * i for i in range(count)]


def _make(name, family, *parts, **fields):
    data = {'family': family}
    for part in parts:
        data.update(part)
    data.update(fields)
    return ModelConfig.from_dict({**data, 'name': name})


PRESETS = {
    'mlore_nyud_vitL': _make(
        'mlore_nyud_vitL', 'mlore', NYUD_TASKS, VIT_L, decoder_dim=768,
        expert_ranks=_ranks(16, 16), task_expert_rank=16, top_k=9, pre_softmax=True),
    'mlore_pascal_vitL': _make(
        'mlore_pascal_vitL', 'mlore', PASCAL_TASKS, VIT_L, decoder_dim=452,
        expert_ranks=_ranks(16, 8), task_expert_rank=72, top_k=9, pre_softmax=False),
    'mlore_pascal_vitB': _make(
        'mlore_pascal_vitB', 'mlore', PASCAL_TASKS, VIT_B, decoder_dim=640,
        expert_ranks=_ranks(16, 8), task_expert_rank=64, top_k=9, pre_softmax=False,
        vitb_unused_modules=True),
    # The authors' ViT-S YAML leaves pre_softmax unset; their other PASCAL models use False.
    'mlore_pascal_vitS': _make(
        'mlore_pascal_vitS', 'mlore', PASCAL_TASKS, VIT_S, decoder_dim=192,
        expert_ranks=_ranks(8, 4), task_expert_rank=32, top_k=9, pre_softmax=False),
    'taskdiffusion_nyud_vitL': _make(
        'taskdiffusion_nyud_vitL', 'taskdiffusion', NYUD_TASKS, VIT_L, DIFFUSION,
        decoder_dim=768),
    # TaskDiffusion+MLoRE: the task-expert rank (72) and post-softmax top-k are fixed in code.
    'taskdiffusion_mlore_nyud_vitL': _make(
        'taskdiffusion_mlore_nyud_vitL', 'taskdiffusion_mlore', NYUD_TASKS, VIT_L, DIFFUSION,
        decoder_dim=768, expert_ranks=_ranks(32, 16), task_expert_rank=72, top_k=4,
        pre_softmax=False),
    'taskdiffusion_pascal_vitL': _make(
        'taskdiffusion_pascal_vitL', 'taskdiffusion', PASCAL_TASKS, VIT_L, DIFFUSION,
        decoder_dim=376),
    'taskdiffusion_pascal_vitB': _make(
        'taskdiffusion_pascal_vitB', 'taskdiffusion', PASCAL_TASKS, VIT_B, DIFFUSION,
        decoder_dim=576),
    'taskdiffusion_mlore_pascal_vitL': _make(
        'taskdiffusion_mlore_pascal_vitL', 'taskdiffusion_mlore', PASCAL_TASKS, VIT_L,
        DIFFUSION, decoder_dim=452, expert_ranks=_ranks(16, 8), task_expert_rank=72, top_k=3,
        pre_softmax=False),
    **MTCP_PRESETS,
}

# Small models for a robot camera: 240 x 320 is 640 x 480 at exactly half scale. They were
# trained on synthetic scenes rendered directly at 240 x 320 by a pinhole camera with the
# Kinect's field of view (mtdp_ros/training/raycast.py: fx = fy = 518.8579 / 640 * width,
# principal point at the centre; no resize or crop in training), i.e. fx = 259.42895 px.
DEFAULT_FOCAL_PX = NYUD_FOCAL_PX / 640.0 * 320
_DEFAULT_BASE = {**NYUD_TASKS, 'image_size': [240, 320], 'embed_dim': 192, 'depth': 6,
                 'num_heads': 3, 'select_layers': [2, 4, 5], 'decoder_dim': 64,
                 'train_focal_px': DEFAULT_FOCAL_PX}
DEFAULT_MODELS = {
    'default_mlore': _make(
        'default_mlore', 'mlore', _DEFAULT_BASE, expert_ranks=[8, 12, 16, 20, 24, 28],
        task_expert_rank=16, top_k=4, pre_softmax=False),
    'default_taskdiffusion': _make(
        'default_taskdiffusion', 'taskdiffusion', _DEFAULT_BASE, DIFFUSION, module_layers=2),
}
DEFAULT_ALIASES = {'default': 'default_mlore'}
