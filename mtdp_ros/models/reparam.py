"""One re-parameterisation API (as timm's ``reparameterize_model``).

``reparameterize(model)`` returns a new model in which every block that has a ``fuse()``
method is replaced by what ``fuse()`` returns (today :class:`MLoREBlock` gives its
:class:`FusedMLoREBlock`: same call, same outputs, one 3x3 convolution per task and
sample). A family makes a block fusable by giving it ``fuse()``; nothing here names it.
The original model is left untouched.

``reparameterize(model, inplace=True)`` replaces the blocks of ``model`` itself, one block
at a time, so each train-form block is freed as soon as its fused form exists: the peak
memory is the larger of the two forms plus one block, not both whole models (what an engine
on an 8 GB device needs). :func:`model_memory` gives both forms' sizes without allocating
any weights (the model is built on PyTorch's ``meta`` device).
"""

import copy

from torch import nn


def fusable_blocks(model: nn.Module):
    """The outermost submodules of ``model`` that have a ``fuse()`` method."""
    blocks, inside = [], set()
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if callable(getattr(module, 'fuse', None)) and module is not model:
            blocks.append(module)
            inside.add(name + '.')
    return blocks


def _fuse_children(module: nn.Module):
    for name, child in module.named_children():
        if callable(getattr(child, 'fuse', None)):
            fused = child.fuse()
            # Replacing the attribute drops the last reference to the train-form block.
            setattr(module, name, fused)
            del child
        else:
            _fuse_children(child)


def _fuse_in_eval_mode(block):
    """Fuse with the block's BatchNorm statistics, leaving its mode as it was."""
    was_training = block.training
    block.eval()
    try:
        return block.fuse()
    finally:
        block.train(was_training)


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fused inference form of an MLoRE-bearing model (eval mode, BatchNorm folded).

    ``inplace=False`` (the default) returns a new model and leaves ``model`` untouched; only
    the non-MLoRE parts are copied (each block is fused straight into the copy), so the
    peak is the original plus the fused copy. ``inplace=True`` fuses ``model`` itself block
    by block and returns it.
    """
    blocks = fusable_blocks(model)
    if not blocks:
        raise ValueError('reparameterize: this model has no block to fuse (no MLoRE blocks: '
                         'TaskDiffusion without MLoRE has nothing to fuse)')
    if inplace:
        # BatchNorm statistics are folded: the fused form exists for eval mode only.
        model.eval()
        _fuse_children(model)
        fused = model
    else:
        # deepcopy takes an entry of ``memo`` as the copy of that object: each MLoRE block
        # is "copied" as its fused form, without a second train-form copy in between.
        memo = {id(block): _fuse_in_eval_mode(block) for block in blocks}
        fused = copy.deepcopy(model, memo)
    fused.eval()
    fused.is_reparameterized = True
    return fused


def _state_bytes(module: nn.Module, bytes_per_element):
    elements = sum(t.numel() for t in module.parameters())
    elements += sum(t.numel() for t in module.buffers())
    return elements, elements * bytes_per_element


def model_memory(config, model=None):
    """Sizes of a configuration's two forms, computed on the ``meta`` device (no weights).

    ``model``: an already built train-form model of ``config`` to count instead (nothing
    is allocated either way; the fused form's size follows from the block shapes).

    Returns ``{'parameters': trainable parameters, 'train_elements': state elements of the
    train form (parameters and buffers), 'fused_elements': state elements of the fused form
    (None without a fusable block), 'train_mb'/'fused_mb': {'fp32': MiB, 'fp16': MiB}}``.
    A fusable block tells how much its fused form adds by ``fused_extra_elements()``
    (without it, the fused form is taken to be the same size).
    """
    if model is None:
        from .factory import build_meta_model
        model = build_meta_model(config)
    parameters = sum(p.numel() for p in model.parameters())
    train_elements, _ = _state_bytes(model, 4)
    info = {'parameters': parameters, 'train_elements': train_elements,
            'train_mb': {'fp32': train_elements * 4 / 2 ** 20,
                         'fp16': train_elements * 2 / 2 ** 20},
            'fused_elements': None, 'fused_mb': None}
    blocks = fusable_blocks(model)
    if blocks:
        fused_elements = train_elements + sum(
            b.fused_extra_elements() if hasattr(b, 'fused_extra_elements') else 0
            for b in blocks)
        info.update(fused_elements=fused_elements,
                    fused_mb={'fp32': fused_elements * 4 / 2 ** 20,
                              'fp16': fused_elements * 2 / 2 ** 20})
    return info
