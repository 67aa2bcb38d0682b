"""Camera-aware metric depth, models: the training focal length each configuration states."""

import pytest

from mtdp_ros.models import DEFAULT_MODELS, ModelConfig, PRESETS, read_checkpoint_config
from mtdp_ros.models.factory import default_checkpoint_path

KINECT_FX = 518.8579
# Half the Kinect's focal length: the shipped models see 640 x 480 at half scale.
DEFAULT_FX = KINECT_FX / 2


def test_depth_models_state_their_training_focal_length(mlore_reference):
    for name, config in PRESETS.items():
        if config.dataset == 'NYUD':
            # Full 640-pixel-wide Kinect frames, or scaled ones (MT-CP's tiny preset).
            width = config.image_size[1] if config.family == 'mtcp' else 640
            assert config.train_focal_px == pytest.approx(KINECT_FX * width / 640), name
        else:
            assert config.train_focal_px is None, name       # PASCAL: no depth head
    for name, config in DEFAULT_MODELS.items():
        assert config.train_focal_px == pytest.approx(DEFAULT_FX, abs=1e-9), name
        # The shipped file's own config says the same (how `--model path` resolves it).
        stored = read_checkpoint_config(default_checkpoint_path(name))
        assert stored.train_focal_px == config.train_focal_px
        assert stored == config
    # The reference schema has no such field and still loads (no correction then).
    assert ModelConfig.from_dict(mlore_reference['config']).train_focal_px is None
    round_trip = ModelConfig.from_dict(PRESETS['mlore_nyud_vitL'].to_dict())
    assert round_trip.train_focal_px == KINECT_FX


@pytest.mark.parametrize('value', [0.0, -5.0, float('nan'), float('inf'), 'wide', True])
def test_invalid_training_focal_length_is_refused(mlore_reference, value):
    with pytest.raises(ValueError, match='train_focal_px'):
        ModelConfig.from_dict({**mlore_reference['config'], 'train_focal_px': value})
