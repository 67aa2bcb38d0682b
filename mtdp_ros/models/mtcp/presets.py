"""MT-CP's published configurations (the authors' literals) and a tiny one for tests/demos.

Plain dictionaries in the reference schema; no transformers import.
"""

from .config import MTCPConfig

SWIN_STAGES = ['stage1', 'stage2', 'stage3', 'stage4']
# facebook/mask2former-swin-small-ade-semantic: Mask2FormerConfig defaults (feature, mask and
# hidden width 256, 6 encoder layers, 10 decoder layers, 100 queries) on a Swin-S, 150 labels.
ADE_SWIN_S = {
    'model_type': 'mask2former', 'num_labels': 150,
    'feature_size': 256, 'mask_feature_size': 256, 'hidden_dim': 256,
    'encoder_feedforward_dim': 1024, 'encoder_layers': 6, 'decoder_layers': 10,
    'num_attention_heads': 8, 'dim_feedforward': 2048, 'num_queries': 100,
    'backbone_config': {'model_type': 'swin', 'image_size': 224, 'patch_size': 4,
                        'embed_dim': 96, 'depths': [2, 2, 18, 2],
                        'num_heads': [3, 6, 12, 24], 'window_size': 7,
                        'drop_path_rate': 0.3, 'out_features': SWIN_STAGES},
}
# The ImageNet Swin-S the authors build as ``self.backbone`` and never call.
UNUSED_SWIN_S = {'pretrain_img_size': 224, 'patch_size': 4, 'in_chans': 3, 'embed_dim': 96,
                 'depths': [2, 2, 18, 2], 'num_heads': [3, 6, 12, 24], 'window_size': 7,
                 'drop_path_rate': 0.3, 'out_indices': [0, 1, 2, 3]}
# The authors' NYUD data are full 480 x 640 Kinect frames (FixedResize to 480 x 640 keeps
# them): the network sees the Kinect's focal length in its own pixels.
NYUD_FOCAL_PX = 518.8579
NYUD = {'dataset': 'NYUD', 'model_class': 'MultiTaskModel_NYUD',
        'tasks': ['semseg', 'depth', 'normals'],
        'num_outputs': {'semseg': 40, 'depth': 1, 'normals': 3},
        # The authors' NYUD input (FixedResize to 480 x 640) and head factors.
        'image_size': [480, 640], 'depth_hidden': 32, 'train_focal_px': NYUD_FOCAL_PX,
        'head_upsample': {'semseg': 2, 'depth': 2, 'normals': 1}}
PASCAL = {'dataset': 'PASCALContext', 'model_class': 'MultiTaskModel_PASCAL',
          'tasks': ['semseg', 'human_parts', 'sal'],
          'num_outputs': {'semseg': 21, 'human_parts': 7, 'sal': 1},
          'image_size': [512, 512], 'depth_hidden': None,
          'head_upsample': {'semseg': 4, 'human_parts': 4, 'sal': 1}}


def constants(c):
    """The authors' hard-coded constants for a shared width ``c`` (published: 256)."""
    return {
        'C': c, 'size_list': [c, 2 * c, 4 * c], 'dec_window': 7, 'dec_depths': [1, 2, 1],
        'dec_heads': [2, 2, 2], 'dec_embed_dim': c, 'dec_in_chans': c, 'dec_mlp_ratio': 4.0,
        'dec_patch_size': 4, 'dec_pretrain_img_size': 224, 'dec_out_indices': [0, 1, 2],
        'dec_drop_path_rate': 0.0, 'dec_ape': False,
        'trace_back_spf': [[c, 4 * c], [4 * c, 2 * c], [2 * c, c], [2 * c, c]],
        'spf_out': c, 'gaaf_gate': c, 'gaaf_conv': 2 * c, 'cbam_reduction': 16,
        'cbam_spatial_kernel': 7, 'cbam_bn_momentum': 0.01, 'intermediate_predictions': 2,
    }


def _make(name, dataset, c, mask2former, unused_backbone, **fields):
    data = {'family': 'mtcp', **dataset, **constants(c), 'unused_backbone': unused_backbone,
            # Stored by the authors, unused: the channel sum of their old backbone's levels.
            'input_backbone_channels': 1344,
            'mask2former_class': 'transformers.Mask2FormerForUniversalSegmentation',
            'mask2former': mask2former, 'name': name, **fields}
    return MTCPConfig.from_dict(data)


# The reference files' tiny Mask2Former (shared/reference/README.md, "Tiny configurations").
TINY_MASK2FORMER = {
    'model_type': 'mask2former', 'num_labels': 10,
    'feature_size': 32, 'mask_feature_size': 16, 'hidden_dim': 32,
    'encoder_feedforward_dim': 64, 'encoder_layers': 2, 'decoder_layers': 4,
    'num_attention_heads': 4, 'dim_feedforward': 64, 'num_queries': 8,
    'backbone_config': {'model_type': 'swin', 'image_size': 224, 'patch_size': 4,
                        'embed_dim': 8, 'depths': [2, 2, 2, 2], 'num_heads': [1, 1, 2, 2],
                        'window_size': 7, 'drop_path_rate': 0.3,
                        'out_features': SWIN_STAGES},
}
TINY_UNUSED = {**UNUSED_SWIN_S, 'embed_dim': 4, 'depths': [1, 1, 1, 1],
               'num_heads': [1, 1, 1, 1]}

MTCP_PRESETS = {
    'mtcp_nyud': _make('mtcp_nyud', NYUD, 256, ADE_SWIN_S, UNUSED_SWIN_S),
    'mtcp_pascal': _make('mtcp_pascal', PASCAL, 256, ADE_SWIN_S, UNUSED_SWIN_S),
    # NYUD tasks at 96 x 128 (a 3:4 camera frame), C = 16: for tests and the node demo.
    # Its focal length is the Kinect's at 128 / 640 scale.
    'mtcp_nyud_tiny': _make('mtcp_nyud_tiny', {**NYUD, 'image_size': [96, 128],
                                               'train_focal_px': NYUD_FOCAL_PX / 5},
                            16, TINY_MASK2FORMER, TINY_UNUSED),
}
