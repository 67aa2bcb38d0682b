"""The shared backbone: transformers' Mask2Former (Swin encoder, pixel decoder, masked decoder).

Built from its configuration only (never downloaded). The wrapper has the state-dict layout
of ``Mask2FormerForUniversalSegmentation`` (``model.*``, ``class_predictor.*``,
``criterion.empty_weight``) so the authors' checkpoints load, but holds a plain
``Mask2FormerModel``: the segmentation loss (which needs scipy) is never used by MT-CP.
"""

import torch
from torch import nn

EXTRA_HINT = 'pip install mtdp_ros[mtcp]'


def import_transformers():
    """(Mask2FormerConfig, Mask2FormerModel); ImportError naming the extra when missing."""
    try:
        from transformers import Mask2FormerConfig, Mask2FormerModel
    except ImportError as exc:
        raise ImportError(
            f'the MT-CP family needs the optional dependency transformers ({EXTRA_HINT}): '
            f'{exc}') from None
    return Mask2FormerConfig, Mask2FormerModel


def mask2former_config(data):
    """``Mask2FormerConfig`` rebuilt from its ``to_dict()`` form."""
    config_class, _ = import_transformers()
    return config_class.from_dict(dict(data))


class ClassWeights(nn.Module):
    """Holds the ``empty_weight`` buffer of transformers' Mask2Former loss (1, ..., 1, eos)."""

    def __init__(self, num_labels, no_object_weight):
        super().__init__()
        weight = torch.ones(num_labels + 1)
        weight[-1] = no_object_weight
        self.register_buffer('empty_weight', weight)


class Mask2FormerBackbone(nn.Module):
    """Mask2Former returning (mask features B x C x H/4 x W/4, last-layer mask logits)."""

    def __init__(self, config_dict):
        super().__init__()
        _, model_class = import_transformers()
        config = mask2former_config(config_dict)
        self.hf_config = config
        self.model = model_class(config)
        swin = getattr(self.model.pixel_level_module.encoder, 'swin', None)
        if swin is not None and hasattr(swin, 'layernorm'):
            # transformers 5 keeps SwinModel's final norm, which the backbone never reads
            # (it normalises each stage with hidden_states_norms); 4.x had no such weights.
            swin.layernorm = nn.Identity()
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)
        self.criterion = ClassWeights(config.num_labels, config.no_object_weight)

    def forward(self, x, with_classes=False):
        """Mask features and masks (and class logits of the last layer if asked)."""
        out = self.model(pixel_values=x, output_hidden_states=with_classes, return_dict=True)
        masks = out.masks_queries_logits[-1]
        if not with_classes:
            return out.pixel_decoder_last_hidden_state, masks
        queries = out.transformer_decoder_intermediate_states[-1].transpose(0, 1)
        return out.pixel_decoder_last_hidden_state, masks, self.class_predictor(queries)
