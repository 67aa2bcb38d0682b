"""What every multi-task model shares: config, task selection, input checks."""

from torch import nn

from .config import ModelConfig


class MultiTaskModel(nn.Module):
    """Base of the model families: ``model(x) -> {task: B x C x H x W raw outputs}``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    @property
    def tasks(self):
        return self.config.tasks

    def select_tasks(self, tasks):
        """Validated tuple of requested tasks in the model's order (None: all)."""
        return self.config.select_tasks(tasks)

    def check_input(self, x):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'expected a B x 3 x H x W image batch, got {tuple(x.shape)}')
        if tuple(x.shape[-2:]) != tuple(self.config.image_size):
            raise ValueError(f'input size {tuple(x.shape[-2:])} differs from the model\'s '
                             f'image_size {tuple(self.config.image_size)}; letterbox first')
