"""Every published preset has exactly the authors' state-dict keys, shapes and size."""

import json
import math

import pytest
import torch

from conftest import reference_path
from mtdp_ros.models import PRESETS, build_model
from mtdp_ros.models.convert import authors_key_map, authors_state_dict_shapes


@pytest.fixture(scope='module')
def manifest():
    with open(reference_path('official_key_shapes.json'), encoding='utf-8') as handle:
        return json.load(handle)


# MT-CP's presets are checked against mtcp_key_shapes.json in test_models_mtcp.py.
VIT_PRESETS = sorted(n for n, c in PRESETS.items() if c.family != 'mtcp')


def test_presets_are_the_nine_published_models(manifest):
    assert VIT_PRESETS == sorted(manifest)
    for name, config in PRESETS.items():
        assert config.name == name


@pytest.mark.parametrize('name', VIT_PRESETS)
def test_preset_keys_and_shapes_equal_the_authors(name, manifest):
    # The meta device builds the ViT-L models without allocating their weights.
    with torch.device('meta'):
        model = build_model(PRESETS[name])
    ours = authors_state_dict_shapes(model)
    theirs = manifest[name]
    assert sorted(set(theirs) - set(ours)) == []
    assert sorted(set(ours) - set(theirs)) == []
    mismatched = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert mismatched == {}
    # The mapping is one-to-one, so a checkpoint of this preset loads key for key.
    assert len(authors_key_map(model.state_dict())) == len(theirs)
    # Size: every state-dict element (parameters and BatchNorm statistics), as the authors
    # count it in the MLoRE paper (407.8 M for ViT-L PASCAL, 42.2 M for ViT-S).
    total = sum(t.numel() for t in model.state_dict().values())
    assert total == sum(math.prod(shape) for shape in theirs.values())


@pytest.mark.parametrize('name, millions', [('mlore_pascal_vitL', 407.8),
                                            ('mlore_pascal_vitS', 42.2)])
def test_parameter_counts_quoted_in_the_paper(name, millions):
    with torch.device('meta'):
        model = build_model(PRESETS[name])
    total = sum(t.numel() for t in model.state_dict().values())
    assert round(total / 1e6, 1) == millions


def test_published_facts_of_presets():
    nyud = PRESETS['mlore_nyud_vitL']
    assert nyud.image_size == (448, 576)
    assert nyud.num_outputs == {'semseg': 40, 'depth': 1, 'normals': 3, 'edge': 1}
    pascal = PRESETS['taskdiffusion_pascal_vitL']
    assert pascal.image_size == (512, 512)
    assert pascal.tasks == ('semseg', 'human_parts', 'sal', 'normals', 'edge')
    assert pascal.noise_channels == 376 + 94
    assert all(c.trained_steps == 3 for c in PRESETS.values() if c.is_diffusion)
