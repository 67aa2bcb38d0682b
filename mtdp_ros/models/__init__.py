"""Model core (pure PyTorch, no ROS): MLoRE, TaskDiffusion and TaskDiffusion+MLoRE."""

from .checkpoint import load_checkpoint, read_checkpoint_config, read_state_dict, save_checkpoint
from .config import CLASS_TASKS, ModelConfig, TASK_ORDER
from .factory import (build_model, check_checkpoint_fits, default_checkpoint_path,
                      load_config_file, resolve_model)
from .presets import DEFAULT_MODELS, PRESETS
from .registry import family_names, get_family, ModelFamily, register_family
from .reparam import reparameterize
from .tasks import get_task, register_task, task_names, TaskSpec
from . import families  # noqa: F401  (registers the built-in families)

__all__ = [
    'CLASS_TASKS', 'DEFAULT_MODELS', 'ModelConfig', 'ModelFamily', 'PRESETS', 'TASK_ORDER',
    'TaskSpec', 'build_model', 'check_checkpoint_fits', 'default_checkpoint_path',
    'family_names', 'get_family', 'get_task', 'load_checkpoint', 'load_config_file',
    'read_checkpoint_config', 'read_state_dict', 'register_family', 'register_task',
    'reparameterize', 'resolve_model', 'save_checkpoint', 'task_names',
]
