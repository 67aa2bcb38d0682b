"""The recipes of the nine published configurations load, validate and name their model."""

import os

import pytest
import torch

from mtdp_ros.cli.train import build_config, register
from mtdp_ros.models import PRESETS
from mtdp_ros.models.pretrained import encoder_state_from_timm
from mtdp_ros.models.vit import ViTEncoder
from mtdp_ros.training.config import load_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       'mtdp_ros', 'training', 'configs')
# A few of the authors' figures per recipe (their YAML files): lr, edge_w, aux_weight.
AUTHORS = {
    'mlore_nyud_vitL': (1e-5, 0.88, None), 'mlore_pascal_vitL': (2e-5, 0.925, None),
    'mlore_pascal_vitB': (2e-5, 0.95, None), 'mlore_pascal_vitS': (2e-5, 0.95, None),
    'taskdiffusion_nyud_vitL': (1e-5, 0.90, 0.25),
    'taskdiffusion_mlore_nyud_vitL': (1e-5, 0.90, 1.0),
    'taskdiffusion_pascal_vitL': (2e-5, 0.95, 0.25),
    'taskdiffusion_pascal_vitB': (2e-5, 0.95, 0.125),
    'taskdiffusion_mlore_pascal_vitL': (2e-5, 0.95, 1.0),
}


# MLoRE/TaskDiffusion presets (MT-CP's recipes follow another codebase: test_models_mtcp).
VIT_PRESETS = sorted(n for n, c in PRESETS.items() if c.family != 'mtcp')


def test_there_is_one_recipe_per_preset():
    assert set(AUTHORS) == set(VIT_PRESETS)
    for name in VIT_PRESETS:
        assert os.path.isfile(os.path.join(CONFIGS, f'{name}.yaml')), name


@pytest.mark.parametrize('name', VIT_PRESETS)
def test_recipe_loads_validates_and_follows_the_authors(name):
    path = os.path.join(CONFIGS, f'{name}.yaml')
    with open(path, encoding='utf-8') as handle:
        text = handle.read()
    assert 'github.com/YuqiYang213/' in text.splitlines()[1]          # cites its source
    config = load_config(path)
    assert config['model'] == name
    lr, edge_w, aux = AUTHORS[name]
    train, loss = config['train'], config['loss']
    assert train['optimizer'] == 'adam' and train['schedule'] == 'poly'
    assert train['lr'] == pytest.approx(lr) and train['steps'] == 40000
    assert train['warmup_steps'] == 0 and train['grad_clip'] == 10.0
    assert train['amp'] == 'off' and train['sync_batchnorm'] == 'auto'
    assert loss['edge_w'] == pytest.approx(edge_w)
    if aux is not None:
        assert loss['aux_weight'] == pytest.approx(aux)
    assert config['data']['source'] == ('nyud' if '_nyud_' in name else 'pascal')
    assert config['data']['augment'] is True
    encoder = config['init']['encoder']
    vit = {'L': 'L_16', 'B': 'B_16', 'S': 'S_16'}[name[-1]]
    assert os.path.basename(encoder).startswith(vit) and encoder.endswith('res_384.npz')


def test_cli_overrides_the_data_root_and_the_encoder(tmp_path):
    import argparse
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    path = os.path.join(CONFIGS, 'mlore_pascal_vitS.yaml')
    args = parser.parse_args(['train', path, '--data-root', str(tmp_path),
                              '--init-encoder', 'vit_s.safetensors', '--batch-size', '4'])
    config = build_config(args)
    assert config['data']['root'] == str(tmp_path)
    assert config['init'] == {'encoder': 'vit_s.safetensors'}
    assert config['train']['batch_size'] == 4


def test_a_vit_small_384_file_fits_the_vitS_preset_encoder():
    """ViT-S/16 at 384 (24 x 24 grid) into mlore_pascal_vitS (512 x 512: 32 x 32)."""
    cfg = PRESETS['mlore_pascal_vitS']
    torch.manual_seed(0)
    encoder = ViTEncoder(cfg.image_size, cfg.patch_size, cfg.embed_dim, cfg.depth,
                         cfg.num_heads, cfg.mlp_ratio, cfg.select_layers)
    state = {k: torch.zeros_like(v) for k, v in encoder.state_dict().items()}
    state['pos_embed'] = torch.zeros(1, 1 + 24 * 24, cfg.embed_dim)
    state['cls_token'] = torch.zeros(1, 1, cfg.embed_dim)
    state['head.weight'] = torch.zeros(1000, cfg.embed_dim)
    state['head.bias'] = torch.zeros(1000)
    kept, dropped = encoder_state_from_timm(state, encoder, 'vit_small_patch16_384')
    assert kept['pos_embed'].shape == (1, 1 + 32 * 32, 384)
    assert dropped == ['cls_token', 'head.bias', 'head.weight']
