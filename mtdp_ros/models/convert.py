"""Weight-format conversion: this project's parameter names <-> the authors' checkpoints.

The authors' state dicts name modules after their code (``lora_list_1``, ``conv2``,
``router_1.<task>.0.convsp``, ...). Our modules say what they are; this module maps each of
our keys to the authors' key with an ordered list of regular-expression rules, and inverts
that map per model, so both directions stay exact and one-to-one.
"""

import re

# (pattern on our key, replacement giving the authors' key); applied in order, all that match.
_RULES = [
    # Shared ViT encoder and level projections live in the authors' ``backbone``.
    (r'^encoder\.', 'backbone.'),
    (r'^(decoder\.)?level_proj\.', 'backbone.fea_fuse.'),
    (r'^decoder\.blocks1\.', 'backbone.MLoRE_1.'),
    (r'^decoder\.blocks2\.', 'backbone.MLoRE_2.'),
    (r'^decoder\.level_fusion\.', 'backbone.task_mask.'),
    (r'^decoder\.unused_query_fuse\.', 'backbone.q_fuse.'),
    (r'^decoder\.unused_route_classifier(\d)\.', r'backbone.classify_route_\1.'),
    # MLoRE block internals (decoder blocks and TaskDiffusion+MLoRE's task feature blocks).
    (r'\.experts\.(\d+)\.down\.', r'.lora_list_1.\1.W.'),
    (r'\.experts\.(\d+)\.up\.', r'.lora_list_1.\1.M.'),
    (r'\.generic\.', '.share_conv.'),
    (r'\.task_in\.', '.conv1.'),
    (r'\.task_expert\.(\w+)\.down\.', r'.conv2.\1.W.'),
    (r'\.task_expert\.(\w+)\.up\.', r'.conv2.\1.M.'),
    (r'\.task_out\.', '.conv3.'),
    (r'\.expert_norm\.', '.bn_all.'),
    (r'\.block_norm\.', '.bn.'),
    (r'\.routers\.(\w+)\.pool_in\.', r'.router_1.\1.0.conv1.'),
    (r'\.routers\.(\w+)\.pool_norm\.', r'.router_1.\1.0.ln.'),
    (r'\.routers\.(\w+)\.pool_out\.', r'.router_1.\1.0.conv3.'),
    (r'\.routers\.(\w+)\.position_weights\.', r'.router_1.\1.0.convsp.'),
    (r'\.routers\.(\w+)\.position_norm\.', r'.router_1.\1.0.ln_sp.'),
    (r'\.routers\.(\w+)\.position_out\.', r'.router_1.\1.0.conv2.'),
    (r'\.routers\.(\w+)\.gate\.', r'.router_1.\1.1.'),
    # MLoRE conv heads.
    (r'^heads\.(\w+)\.proj\.', r'heads.\1.mt_proj.'),
    (r'^heads\.(\w+)\.pred\.', r'heads.\1.linear_pred.'),
    # TaskDiffusion decoder (the authors' ``heads`` module).
    (r'^diffusion\.', 'heads.'),
    (r'^heads\.label_encoder\.label_embed\.', 'heads.embedding_tables.'),
    (r'^heads\.label_encoder\.invalid_embed\.', 'heads.invalid_embedding_tables.'),
    (r'^heads\.label_encoder\.label_fuse\.', 'heads.embed_all.'),
    (r'^heads\.condition\.', 'heads.transforms.conv_transforms.'),
    (r'^heads\.time_embed\.', 'heads.time_mlp.'),
    (r'^heads\.refine\.', 'heads.encoders.'),
    (r'^heads\.task_interaction\.', 'heads.fpn_encoder.'),
    (r'^heads\.fpn_encoder\.shared_convs\.', 'heads.fpn_encoder.share_fpn.fpn_conv.'),
    (r'^heads\.fpn_encoder\.relation_maps\.', 'heads.fpn_encoder.mask_task.'),
    (r'^heads\.fpn_encoder\.task_feats\.', 'heads.fpn_encoder.feat_task.'),
    (r'^heads\.fpn_encoder\.task_heads\.', 'heads.fpn_encoder.specific_head.'),
    (r'^heads\.fpn_encoder\.level_fusion\.', 'heads.fpn_encoder.fpn_mask.'),
    (r'^heads\.aux_heads\.(\w+)\.level_fusion\.', r'heads.aux_heads.\1.0.task_mask.'),
    (r'^heads\.aux_heads\.(\w+)\.(conv_1|conv_2|conv_3|norm)\.', r'heads.aux_heads.\1.0.\2.'),
    (r'^heads\.aux_heads\.(\w+)\.pred\.', r'heads.aux_heads.\1.1.'),
]
_COMPILED = [(re.compile(p), r) for p, r in _RULES]


def to_authors_key(key: str) -> str:
    """The authors' name (without ``module.``) of one of our state-dict keys."""
    for pattern, replacement in _COMPILED:
        key = pattern.sub(replacement, key)
    return key


def authors_key_map(model_keys):
    """Map authors' key -> our key for a model's keys; raises if two keys collide."""
    mapping = {}
    for key in model_keys:
        theirs = to_authors_key(key)
        if theirs in mapping:
            raise RuntimeError(f'key mapping collision: {key} and {mapping[theirs]} -> {theirs}')
        mapping[theirs] = key
    return mapping


def authors_state_dict_shapes(model):
    """{authors' key: shape} of a model, as in ``official_key_shapes.json``."""
    return {to_authors_key(k): list(v.shape) for k, v in model.state_dict().items()}
