"""Synthetic video, temporal metrics and ``mtdp eval --sequence`` (warm start on video)."""

import json
import math

import numpy as np
import pytest
import torch

from mtdp_ros.cli import main
from mtdp_ros.models import build_model, save_checkpoint
from mtdp_ros.runtime.warm_start import WarmStartState
from mtdp_ros.training.synthetic_video import CUT_SEED_OFFSET, render_sequence
from mtdp_ros.training.temporal_metrics import TemporalMeter
from mtdp_ros.training.train import model_config_from

TINY = {'image_size': [32, 48], 'embed_dim': 32, 'depth': 3, 'num_heads': 2,
        'select_layers': [1, 2, 3], 'decoder_dim': 16}


# ----------------------------------------------------------------------------- metrics
def _frame(semseg_logits=None, depth=None, normals=None, edge=None):
    """Raw outputs / targets of one 2 x 2 frame from nested lists."""
    out = {}
    if semseg_logits is not None:
        out['semseg'] = torch.tensor(semseg_logits, dtype=torch.float32)[None]
    for name, value in (('depth', depth), ('edge', edge)):
        if value is not None:
            out[name] = torch.tensor(value, dtype=torch.float32)[None, None]
    if normals is not None:
        out['normals'] = torch.tensor(normals, dtype=torch.float32).permute(2, 0, 1)[None]
    return out


def _one_hot(labels, classes=3):
    return np.eye(classes, dtype=np.float32)[np.array(labels)].transpose(2, 0, 1).tolist()


def test_depth_flicker_is_the_change_the_scene_does_not_explain():
    meter = TemporalMeter(['depth'])
    gt = _frame(depth=[[1.0, 1.0], [1.0, 0.0]])             # one pixel without depth
    meter.update(_frame(depth=[[2.0, 2.0], [2.0, 2.0]]), {'depth': gt['depth']})
    meter.update(_frame(depth=[[4.0, 4.0], [4.0, 9.0]]), {'depth': gt['depth']})
    assert math.isclose(meter.score()['depth_flicker'], math.log(2), rel_tol=1e-6)
    # The scene doubles its depth and so does the prediction: no flicker.
    meter = TemporalMeter(['depth'])
    meter.update(_frame(depth=[[2.0, 3.0], [1.0, 1.0]]), _frame(depth=[[1.0, 1.0], [1.0, 1.0]]))
    meter.update(_frame(depth=[[4.0, 6.0], [2.0, 2.0]]), _frame(depth=[[2.0, 2.0], [2.0, 2.0]]))
    assert meter.score()['depth_flicker'] < 1e-6 and meter.score()['pairs'] == 1


def test_semseg_and_edge_flicker_count_changes_where_the_truth_stays():
    meter = TemporalMeter(['semseg', 'edge'])
    gt_a = {'semseg': torch.tensor([[[[1, 1], [2, 255]]]]),
            'edge': torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])}
    gt_b = {'semseg': torch.tensor([[[[1, 0], [2, 255]]]]),     # top right changes class
            'edge': torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])}  # bottom left becomes edge
    first = _frame(semseg_logits=_one_hot([[1, 1], [2, 0]]), edge=[[-5, 5], [-5, -5]])
    # Predicted labels change at top right (truth changed too: not flicker) and top left.
    second = _frame(semseg_logits=_one_hot([[0, 0], [2, 1]]), edge=[[5, 5], [5, -5]])
    meter.update(first, gt_a)
    meter.update(second, gt_b)
    score = meter.score()
    assert math.isclose(score['semseg_flicker'], 1 / 2)     # 1 of the 2 stable pixels
    assert math.isclose(score['edge_flicker'], 1 / 3)       # 1 of the 3 stable pixels


def test_normals_flicker_is_the_unexplained_change_of_angle():
    up, tilted = [0.0, 0.0, 1.0], [0.0, math.sin(math.radians(30)), math.cos(math.radians(30))]
    meter = TemporalMeter(['normals'])
    gt = _frame(normals=[[up, up], [up, [0.0, 0.0, 0.0]]])
    meter.update(_frame(normals=[[up, up], [up, up]]), gt)
    meter.update(_frame(normals=[[tilted, up], [up, tilted]]), gt)
    assert math.isclose(meter.score()['normals_flicker'], 30.0 / 3, rel_tol=1e-4)


def test_pairs_stop_at_a_new_sequence_and_frames_go_one_at_a_time():
    meter = TemporalMeter(['depth', 'no_such_task'])
    assert meter.tasks == ('depth',)
    frame = _frame(depth=[[1.0, 1.0], [1.0, 1.0]])
    meter.update(frame, frame)
    meter.new_sequence()
    meter.update(_frame(depth=[[5.0, 5.0], [5.0, 5.0]]), frame)
    assert meter.score()['pairs'] == 0 and math.isnan(meter.score()['depth_flicker'])
    with pytest.raises(ValueError, match='one frame at a time'):
        meter.update({'depth': torch.ones(2, 1, 2, 2)}, {'depth': torch.ones(2, 1, 2, 2)})


# ----------------------------------------------------------------------------- video
def test_sequences_are_deterministic_and_move_as_asked():
    static = render_sequence(11, 3, 24, 32, 'static')
    again = render_sequence(11, 3, 24, 32, 'static')
    for key in ('image', 'depth', 'semseg', 'normals', 'edge'):
        assert torch.equal(static[key], again[key]), key
    # A fixed camera: the same labels every frame, a new noise and light every frame.
    assert torch.equal(static['depth'][0], static['depth'][2])
    assert not torch.equal(static['image'][0], static['image'][1])
    slow = render_sequence(11, 3, 24, 32, 'slow')
    assert torch.equal(slow['depth'][0], static['depth'][0])      # frame 0: same pose
    assert not torch.equal(slow['depth'][1], slow['depth'][2])
    assert static['cut'] is None and slow['room_seeds'] == [11, 11, 11]
    fast = render_sequence(11, 4, 24, 32, 'fast')
    assert fast['cut'] == 2 and fast['room_seeds'] == [11, 11] + [11 + CUT_SEED_OFFSET] * 2
    assert fast['image'].shape == (4, 3, 24, 32) and fast['semseg'].shape == (4, 1, 24, 32)


def test_bad_sequence_requests_are_named():
    with pytest.raises(ValueError, match='motion must be one of'):
        render_sequence(1, 2, 24, 32, 'wobbly')
    with pytest.raises(ValueError, match='length'):
        render_sequence(1, 0, 24, 32, 'slow')
    with pytest.raises(ValueError, match='non-negative'):
        render_sequence(-1, 2, 24, 32, 'slow')


def test_the_cut_test_finds_the_scene_cut_and_nothing_else():
    frames = render_sequence(424242, 6, 60, 80, 'fast')
    images = (frames['image'] * 255).round().byte().permute(0, 2, 3, 1).numpy()
    state = WarmStartState()
    reasons = []
    for index, image in enumerate(images):
        decision = state.decide(image, index / 30.0, ('tiny', 1))
        reasons.append(decision.reason)
        state.update(f'map-{index}', decision)
    assert reasons[0].startswith('no previous map')
    assert reasons[3].startswith('scene cut'), reasons
    assert [r for i, r in enumerate(reasons) if i not in (0, 3)] == ['warm'] * 4, reasons


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope='module')
def tiny_diffusion(tmp_path_factory):
    config, _ = model_config_from({'base': 'default_taskdiffusion', **TINY})
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp('weights') / 'tiny_td.safetensors')
    save_checkpoint(build_model(config), path)
    return path


def _last_json(text):
    return json.loads([line for line in text.strip().splitlines() if line.strip()][-1])


def test_mtdp_eval_on_video_reports_flicker(tiny_diffusion, capsys):
    assert main(['eval', '--model', tiny_diffusion, '--sequence', '4', '--motion', 'fast',
                 '--num', '1', '--steps', '1', '--warm-start', '--warm-strength', '0.2',
                 '--device', 'cpu', '--json']) == 0
    summary = _last_json(capsys.readouterr().out)
    temporal = summary['temporal']
    assert set(temporal) >= {'depth_flicker', 'semseg_flicker', 'normals_flicker',
                             'edge_flicker', 'ms_per_frame', 'warm_frames', 'cold_frames'}
    # 4 frames, the cut after 2: two pairs (none across the cut); the first frame is cold.
    assert temporal['pairs'] == 2
    assert temporal['warm_frames'] + temporal['cold_frames'] == 4
    assert temporal['cold_frames'] >= 1 and temporal['ms_per_frame'] > 0
    assert 0.0 <= temporal['semseg_flicker'] <= 1.0 and temporal['depth_flicker'] >= 0
    assert 0.0 <= summary['semseg']['mIoU'] <= 1.0


@pytest.mark.parametrize('extra, message', [
    (['--warm-start'], '--warm-start applies to video'),
    (['--sequence', '3', '--warm-strength', '0.5'], '--warm-strength needs --warm-start'),
    (['--sequence', '3', '--warm-start', '--warm-strength', '0'], 'must lie in (0, 1]'),
    (['--sequence', '1'], '--sequence must be >= 2'),
    (['--sequence', '3', '--data', 'nyud:/x'], 'synthetic only'),
    (['--sequence', '3', '--warm-start', '--cut-threshold', '-1'], '--cut-threshold must'),
])
def test_mtdp_eval_video_refuses_bad_requests(tiny_diffusion, capsys, extra, message):
    assert main(['eval', '--model', tiny_diffusion, '--device', 'cpu', *extra]) == 2
    assert message in capsys.readouterr().err
