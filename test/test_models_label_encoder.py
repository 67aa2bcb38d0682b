"""TaskDiffusion's label encoder marks invalid pixels as the authors' code: 255 only.

The authors' ``forward_train`` (TaskDiffusion_head.py) embeds a regression target with a
1x1 convolution and blends in the learned invalid embedding where the target equals 255
(averaged over channels); depth 0 (no measurement) is embedded as a value. Their data
pipeline's ``AddIgnoreRegions`` writes 255 over zero normals first.
"""

import torch

from mtdp_ros.models import build_model
from mtdp_ros.training.train import model_config_from

TINY = {'image_size': [32, 48], 'embed_dim': 32, 'depth': 3, 'num_heads': 2,
        'select_layers': [1, 2, 3], 'decoder_dim': 16}
SIZE = (2, 3)


def label_encoder():
    config, _ = model_config_from({'base': 'default_taskdiffusion', **TINY})
    torch.manual_seed(0)
    return build_model(config).diffusion.label_encoder.eval(), config


def targets(config):
    gen = torch.Generator().manual_seed(1)
    normals = torch.nn.functional.normalize(torch.randn(1, 3, *SIZE, generator=gen), dim=1)
    return {'semseg': torch.randint(0, config.num_outputs['semseg'], (1, 1, *SIZE),
                                    generator=gen),
            'depth': torch.rand(1, 1, *SIZE, generator=gen) * 5 + 0.5,
            'normals': normals,
            'edge': (torch.rand(1, 1, *SIZE, generator=gen) > 0.5).float()}


def authors_formula(encoder, config, target):
    """x_0 as the authors' forward_train computes it (labels already at the map size)."""
    parts = []
    for task in config.tasks:
        value = target[task]
        if task == 'semseg':
            labels = value.long()[:, 0].clone()
            labels[labels == 255] = config.num_outputs[task]
            parts.append(encoder.label_embed[task](labels).permute(0, 3, 1, 2))
            continue
        value = value.float()
        if task == 'normals':
            value = torch.where((value == 0).all(dim=1, keepdim=True),
                                torch.full_like(value, 255.0), value)
        mask = (value == 255).float().mean(dim=1, keepdim=True)
        invalid = encoder.invalid_embed[task].weight.view(1, -1, 1, 1)
        parts.append(mask * invalid + (1 - mask) * encoder.label_embed[task](value))
    fused = encoder.label_fuse(torch.cat(parts, dim=1))
    return (torch.sigmoid(fused) * 2 - 1) * config.scale


def test_encoded_targets_follow_the_authors_formula_with_255_as_the_only_mark():
    encoder, config = label_encoder()
    target = targets(config)
    target['depth'][0, 0, 0, 0] = 0.0                 # no measurement: a value of 0
    target['depth'][0, 0, 1, 2] = 255.0               # padding: invalid
    target['normals'][0, :, 0, 1] = 0.0               # no normal: the authors' 255
    target['edge'][0, 0, 1, 0] = 255.0
    target['semseg'][0, 0, 0, 2] = 255
    with torch.no_grad():
        ours = encoder.encode_targets(target, SIZE)
        expected = authors_formula(encoder, config, target)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)


def test_depth_zero_is_a_value_and_zero_normals_are_invalid():
    encoder, config = label_encoder()
    zero_depth, ignored_depth = targets(config), targets(config)
    zero_depth['depth'][0, 0, 0, 0] = 0.0
    ignored_depth['depth'][0, 0, 0, 0] = 255.0
    zero_normals, ignored_normals = targets(config), targets(config)
    zero_normals['normals'][0, :, 1, 1] = 0.0
    ignored_normals['normals'][0, :, 1, 1] = 255.0
    with torch.no_grad():
        a = encoder.encode_targets(zero_depth, SIZE)
        b = encoder.encode_targets(ignored_depth, SIZE)
        c = encoder.encode_targets(zero_normals, SIZE)
        d = encoder.encode_targets(ignored_normals, SIZE)
    assert (a[0, :, 0, 0] - b[0, :, 0, 0]).abs().max() > 1e-6     # depth 0 is not invalid
    torch.testing.assert_close(a[..., 1:, :], b[..., 1:, :])      # other pixels unchanged
    torch.testing.assert_close(c, d)                              # zero normals: invalid
