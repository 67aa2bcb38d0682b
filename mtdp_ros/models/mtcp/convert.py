"""MT-CP state-dict names across transformers versions (the Mask2Former part only).

The authors' checkpoints come from transformers 4.46.3; transformers 5 renamed the Swin
inside Mask2Former and stopped saving its ``relative_position_index`` buffers (now computed,
non-persistent), and added an unused ``swin.layernorm`` (removed from our model). Everything
outside ``backbon.`` keeps the authors' names in every version.
"""

import math
import re

MASK2FORMER_PREFIX = 'backbon.model.'
_ENCODER = r'pixel_level_module\.encoder\.'
# (4.x pattern, 5.x replacement) on keys relative to ``backbon.model.``; applied in order.
_RULES_4_TO_5 = [
    (_ENCODER + r'(embeddings|encoder)\.', r'pixel_level_module.encoder.swin.\1.'),
    (r'\.attention\.self\.query\.', '.attention.q_proj.'),
    (r'\.attention\.self\.key\.', '.attention.k_proj.'),
    (r'\.attention\.self\.value\.', '.attention.v_proj.'),
    (r'\.attention\.output\.dense\.', '.attention.o_proj.'),
    (r'\.intermediate\.dense\.', '.mlp.fc1.'),
    (r'\.output\.dense\.', '.mlp.fc2.'),
    (r'\.attention\.self\.relative_position_bias_table$',
     '.attention.relative_position_bias.relative_position_bias_table'),
    (r'\.attention\.self\.relative_position_index$',
     '.attention.relative_position_bias.relative_position_index'),
]
_RULES_5_TO_4 = [
    (_ENCODER + r'swin\.(embeddings|encoder)\.', r'pixel_level_module.encoder.\1.'),
    (r'\.attention\.q_proj\.', '.attention.self.query.'),
    (r'\.attention\.k_proj\.', '.attention.self.key.'),
    (r'\.attention\.v_proj\.', '.attention.self.value.'),
    (r'\.attention\.o_proj\.', '.attention.output.dense.'),
    (r'\.mlp\.fc1\.', '.intermediate.dense.'),
    (r'\.mlp\.fc2\.', '.output.dense.'),
    (r'\.attention\.relative_position_bias\.relative_position_(bias_table|index)$',
     r'.attention.self.relative_position_\1'),
]
_C4 = [(re.compile(p), r) for p, r in _RULES_4_TO_5]
_C5 = [(re.compile(p), r) for p, r in _RULES_5_TO_4]
# Index buffers: recomputed by every version, so never needed from a file.
_INDEX = re.compile(r'^backbon\.model\..*relative_position_index$')
# transformers 5's SwinModel final norm: Mask2Former reads the stage norms, never this one.
_UNUSED_5X = re.compile(r'^backbon\.model\.pixel_level_module\.encoder\.swin\.layernorm\.')


def _apply(rules, key):
    if not key.startswith(MASK2FORMER_PREFIX):
        return key
    rest = key[len(MASK2FORMER_PREFIX):]
    for pattern, replacement in rules:
        rest = pattern.sub(replacement, rest)
    return MASK2FORMER_PREFIX + rest


def to_v5_key(key):
    """A 4.x (authors') key in transformers 5 naming (unchanged outside Mask2Former's Swin)."""
    return _apply(_C4, key)


def to_v4_key(key):
    """A transformers 5 key in the authors' 4.x naming."""
    return _apply(_C5, key)


def convert_state_dict(state, own):
    """``state`` (authors' 4.x names, or 5.x names) renamed to the keys of ``own``.

    ``own``: the model's state dict. Index buffers the model does not save are dropped, and
    those it saves but ``state`` lacks are taken from the model (they are constants).
    Keys that match nothing are kept as they are, so the strict check names them.
    """
    out = {}
    for key, value in state.items():
        if key not in own:
            for candidate in (to_v5_key(key), to_v4_key(key)):
                if candidate in own:
                    key = candidate
                    break
            else:
                if _INDEX.match(key) or _UNUSED_5X.match(key):
                    continue
        out[key] = value
    for key, value in own.items():
        if key not in out and _INDEX.match(key):
            out[key] = value
    return out


def authors_state_dict_shapes(model):
    """{authors' 4.x key: shape} of an MT-CP model, as in ``mtcp_key_shapes.json``.

    Adds the Swin index buffers transformers 5 no longer saves (4.x saved them, as
    (w*w, w*w); 5.x keeps them flattened).
    """
    shapes = {to_v4_key(k): list(v.shape) for k, v in model.state_dict().items()}
    for key, buffer in model.named_buffers(remove_duplicate=False):
        if _INDEX.match(key) and to_v4_key(key) not in shapes:
            side = math.isqrt(buffer.numel())
            shapes[to_v4_key(key)] = [side, side]
    return shapes
