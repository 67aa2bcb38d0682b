"""One re-parameterisation API (as timm's ``reparameterize_model``).

``reparameterize(model)`` returns a deep copy in which every :class:`MLoREBlock` is replaced
by its :class:`FusedMLoREBlock`: same call, same outputs, one 3x3 convolution per task and
sample. The original model is left untouched.
"""

import copy

from torch import nn

from .mlore_block import FusedMLoREBlock, MLoREBlock


def _replace_blocks(module: nn.Module):
    for name, child in module.named_children():
        if isinstance(child, MLoREBlock):
            setattr(module, name, FusedMLoREBlock(child))
        else:
            _replace_blocks(child)


def reparameterize(model: nn.Module) -> nn.Module:
    """Fused inference copy of an MLoRE-bearing model (eval mode, BatchNorm folded)."""
    if not any(isinstance(m, MLoREBlock) for m in model.modules()):
        raise ValueError('reparameterize: this model has no MLoRE blocks '
                         '(TaskDiffusion without MLoRE has nothing to fuse)')
    fused = copy.deepcopy(model).eval()
    _replace_blocks(fused)
    fused.is_reparameterized = True
    return fused
