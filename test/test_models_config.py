"""ModelConfig validation and model-name resolution."""

import pytest

from mtdp_ros.models import DEFAULT_MODELS, ModelConfig, PRESETS, build_model, resolve_model


def test_reference_schema_round_trip(mlore_reference, taskdiffusion_reference):
    for reference in (mlore_reference, taskdiffusion_reference):
        config = ModelConfig.from_dict(reference['config'])
        assert ModelConfig.from_dict(config.to_dict()) == config
        assert config.tasks == tuple(reference['config']['tasks'])


@pytest.mark.parametrize('change, message', [
    ({'family': 'unet'}, 'family'),
    ({'tasks': ['depth', 'semseg']}, 'order'),
    ({'tasks': ['semseg', 'flow']}, 'unknown tasks'),
    ({'image_size': [65, 96]}, 'multiple of patch_size'),
    ({'select_layers': [1, 2]}, 'select_layers'),
    ({'select_layers': [1, 2, 9]}, 'select_layers'),
    ({'top_k': 9}, 'top_k'),
    ({'expert_ranks': []}, 'expert_ranks'),
    ({'embed_dim': 63}, 'num_heads'),
    ({'decoder_dim': 30}, 'decoder_dim'),
    ({'num_outputs': {'semseg': 40}}, 'num_outputs lacks'),
    ({'colour': 'red'}, 'unknown model config keys'),
])
def test_invalid_configs_name_the_problem(mlore_reference, change, message):
    data = {**mlore_reference['config'], **change}
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(data)


def test_missing_required_key(mlore_reference):
    data = dict(mlore_reference['config'])
    del data['embed_dim']
    with pytest.raises(ValueError, match='lacks required keys'):
        ModelConfig.from_dict(data)


def test_resolve_presets_defaults_and_files(tmp_path, mlore_reference):
    assert resolve_model('mlore_pascal_vitS') == (PRESETS['mlore_pascal_vitS'], None)
    config, _ = resolve_model('default')
    assert config == DEFAULT_MODELS['default_mlore']
    path = tmp_path / 'tiny.yaml'
    import yaml
    path.write_text(yaml.safe_dump(mlore_reference['config']))
    assert resolve_model(str(path))[0] == ModelConfig.from_dict(mlore_reference['config'])
    with pytest.raises(ValueError, match='unknown model'):
        resolve_model('mlore_nyud_vitXL')
    broken = tmp_path / 'broken.yaml'
    broken.write_text('family: [unclosed')
    with pytest.raises(ValueError, match='cannot parse'):
        resolve_model(str(broken))


def test_default_models_are_small():
    for config in DEFAULT_MODELS.values():
        model = build_model(config)
        count = sum(p.numel() for p in model.parameters())
        assert 1e6 < count < 10e6, (config.name, count)
