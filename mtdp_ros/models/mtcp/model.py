"""MT-CP (WACV 2025): Mask2Former backbone, per-task Swin decoders, FPN, CFM and trace-back.

Module names are the authors' (``MultiTaskModel_NYUD`` / ``MultiTaskModel_PASCAL``), so their
checkpoints load strictly; see ``shared/reference/README.md`` for every quirk reproduced.
"""

import torch
from torch import nn
import torch.nn.functional as F

from ..base import MultiTaskModel
from .cfm import CoherenceFusion
from .config import INPUT_MULTIPLE, PRED_LAYERS
from .convert import convert_state_dict
from .fpn import DynamicFPN
from .heads import build_head, PredLayer
from .mask2former import Mask2FormerBackbone
from .srm import TraceBack
from .swin import SwinTransformer


def couple(masks, features):
    """Shared representation: einsum('bnhw,bdhw->bdhw') = features * sum_n masks_n.

    Every pixel's mask feature is scaled by the sum of the Q raw mask logits (no sigmoid,
    no class weighting), exactly as the authors' code computes it.
    """
    return features * masks.sum(dim=1, keepdim=True)


class MTCPModel(MultiTaskModel):
    """``model(x)``: the 9 raw outputs under the authors' keys, all at input size.

    ``model(x, tasks=[...])`` returns only those final task outputs (the three tasks are
    coupled by the CFM, so all branches run). ``forward_train`` adds the deep-supervision
    predictions as ``aux``.
    """

    def __init__(self, config):
        super().__init__(config)
        layout = config.layout
        c = config.C
        self.backbone = SwinTransformer(**_unused_backbone_kwargs(config.unused_backbone))
        if layout['unused_scalars']:
            # NYUD's loss-weighting parameters: created, saved, never used by the forward.
            self.log_var_list = nn.Parameter(torch.zeros(len(config.tasks)))
            self.skip_gate = nn.Parameter(torch.ones(1))
            self.lambda_param = nn.Parameter(torch.tensor([0.1]))
            self.alpha_param = nn.Parameter(torch.tensor([0.01]))
        for slot in range(3):
            self.add_module(f'transformer{slot + 1}', SwinTransformer(
                in_chans=config.dec_in_chans, embed_dim=config.dec_embed_dim,
                depths=config.dec_depths, num_heads=config.dec_heads,
                window_size=config.dec_window, mlp_ratio=config.dec_mlp_ratio,
                patch_size=config.dec_patch_size, drop_path_rate=config.dec_drop_path_rate,
                out_indices=config.dec_out_indices,
                pretrain_img_size=config.dec_pretrain_img_size))
        for name in layout['fpn']:
            self.add_module(name, DynamicFPN(config.size_list, c))
        for slot, (name, task) in enumerate(zip(layout['head'], config.tasks)):
            self.add_module(name, build_head(config, slot, task))
        for slot, (name, task) in enumerate(zip(PRED_LAYERS, config.tasks)):
            self.add_module(name, nn.ModuleList([
                PredLayer(c, config.num_outputs[task], layout['double_pred'][slot])
                for _ in range(config.intermediate_predictions)]))
        for name in ('trace_back', 'trace_back2', 'trace_back3'):
            self.add_module(name, TraceBack(config))
        for name in ('gaaf', 'gaaf2', 'gaaf3'):
            self.add_module(name, CoherenceFusion(config))
        self.backbon = Mask2FormerBackbone(config.mask2former)

    # ------------------------------------------------------------------ blocks
    def check_input(self, x):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'expected a B x 3 x H x W image batch, got {tuple(x.shape)}')
        if any(s % INPUT_MULTIPLE for s in x.shape[-2:]):
            raise ValueError(f'input size {tuple(x.shape[-2:])}: MT-CP needs H and W '
                             f'divisible by {INPUT_MULTIPLE}; letterbox first')

    def _branch(self, slot):
        suffix = '' if slot == 0 else str(slot + 1)
        layout = self.config.layout
        return (getattr(self, f'transformer{slot + 1}'), getattr(self, layout['fpn'][slot]),
                getattr(self, f'gaaf{suffix}'), getattr(self, f'trace_back{suffix}'),
                getattr(self, PRED_LAYERS[slot]), getattr(self, layout['head'][slot]))

    def _run(self, x):
        """(final task outputs, deep-supervision outputs), both at input size."""
        self.check_input(x)
        size = x.shape[-2:]
        features, masks = self.backbon(x)
        shared = couple(masks, features)
        branches = [self._branch(slot) for slot in range(3)]
        stages = [decoder.forward_tokens(shared) for decoder, *_ in branches]
        fused = [fpn(levels) for (_, fpn, *_), levels in zip(branches, stages)]
        finals, aux = {}, {}
        aux_keys = self.config.layout['aux_keys']
        for slot, (task, keys) in enumerate(zip(self.config.tasks, aux_keys)):
            _, _, cfm, trace_back, preds, head = branches[slot]
            others = torch.cat([fused[i] for i in range(3) if i != slot], dim=1)
            refined = trace_back(stages[slot][::-1], cfm(fused[slot], others))
            for key, pred, level in zip(keys, preds, refined):
                aux[key] = _resize(pred(level), size)
            finals[task] = _resize(head(refined[-1]), size)
        return finals, aux

    # ------------------------------------------------------------------ public
    def forward(self, x, tasks=None, steps=None, noise=None, generator=None):
        """All 9 outputs (authors' keys) when ``tasks`` is None, else the requested tasks."""
        finals, aux = self._run(x)
        if tasks is None:
            return {**aux, **finals}
        return {t: finals[t] for t in self.select_tasks(tasks)}

    def forward_train(self, x, targets=None):
        """Training outputs: ``pred`` (final) and ``deep`` (one {task: map} per level).

        ``deep`` holds the 1/16 and 1/8 predictions at input size, which the authors
        supervise with each task's loss (``MultiTaskLoss`` ``deep_weight``).
        """
        finals, aux = self._run(x)
        layout = self.config.layout['aux_keys']
        deep = [{t: aux[keys[level]] for t, keys in zip(self.config.tasks, layout)}
                for level in range(self.config.intermediate_predictions)]
        return {'pred': finals, 'aux': {}, 'deep': deep}

    def load_pretrained_backbone(self, path):
        """Mask2Former weights from a transformers folder (``init: {backbone: PATH}``)."""
        from .pretrained import load_backbone_folder
        return load_backbone_folder(self, path)

    def convert_state_dict(self, state):
        """Checkpoint keys (authors' transformers 4.x names or ours) renamed to this model's."""
        return convert_state_dict(state, self.state_dict())


def _resize(x, size):
    # The authors' F.interpolate(out, out_size, mode='bilinear'): align_corners=False.
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


def _unused_backbone_kwargs(spec):
    return {'in_chans': spec.get('in_chans', 3), 'embed_dim': spec.get('embed_dim', 96),
            'depths': tuple(spec.get('depths', (2, 2, 18, 2))),
            'num_heads': tuple(spec.get('num_heads', (3, 6, 12, 24))),
            'window_size': spec.get('window_size', 7), 'patch_size': spec.get('patch_size', 4),
            'drop_path_rate': spec.get('drop_path_rate', 0.3),
            'out_indices': tuple(spec.get('out_indices', (0, 1, 2, 3))),
            'pretrain_img_size': spec.get('pretrain_img_size', 224)}
