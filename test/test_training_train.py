"""The training loop and the train / eval / infer commands, on tiny real models."""

import json
import os

import cv2
import numpy as np
import pytest
import torch
import yaml

from mtdp_ros.cli import main
from mtdp_ros.models import build_model, load_checkpoint, resolve_model, save_checkpoint
from mtdp_ros.training.config import load_config
from mtdp_ros.training.synthetic import render_batch, render_scene
from mtdp_ros.training.train import model_config_from, Trainer

TINY = {'image_size': [32, 48], 'embed_dim': 32, 'depth': 3, 'num_heads': 2,
        'select_layers': [1, 2, 3], 'decoder_dim': 16}


def tiny_model(family):
    return {'base': family, **TINY}


def tiny_config(tmp_path, family='default_mlore', **train):
    return {
        'model': tiny_model(family),
        'data': {'workers': 0},
        'train': {'steps': 4, 'batch_size': 2, 'lr': 2e-3, 'warmup_steps': 0, 'log_every': 2,
                  'checkpoint_every': 2, 'amp': 'off', 'device': 'cpu', **train},
        'eval': {'num': 2, 'batch_size': 2},
        'output': {'dir': str(tmp_path / 'run')},
    }


def last_json_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return json.loads(lines[-1])


@pytest.mark.slow  # trains the shipped models: `make test-fast` leaves it out
@pytest.mark.parametrize('family', ['default_mlore', 'default_taskdiffusion'])
def test_training_on_a_fixed_batch_lowers_the_loss_by_at_least_30_percent(tmp_path, family):
    config = tiny_config(tmp_path, family, steps=30, grad_clip=10.0)
    trainer = Trainer(config)
    batch = render_batch([11, 12], *TINY['image_size'])
    totals = [float(trainer.step(batch)['total'].detach()) for _ in range(30)]
    first, last = np.mean(totals[:3]), np.mean(totals[-3:])
    assert last <= 0.7 * first, f'loss {first:.3f} -> {last:.3f}'


def test_poly_schedule_with_warm_up(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, steps=100, warmup_steps=10, lr=1.0))
    assert trainer.lr_at(0) == pytest.approx(0.1)
    assert trainer.lr_at(9) == pytest.approx(1.0)
    assert trainer.lr_at(55) == pytest.approx(0.5 ** 0.9)
    assert trainer.lr_at(100) == 0.0


@pytest.mark.slow  # trains, resumes: `make test-fast` leaves it out
def test_mtdp_train_saves_resumes_and_reports(tmp_path, capsys):
    config_path = tmp_path / 'train.yaml'
    config_path.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    assert main(['train', str(config_path)]) == 0
    out = capsys.readouterr()
    summary = last_json_line(out.out)
    assert summary['steps'] == 4 and summary['stop_reason'] == 'steps'
    assert set(summary['validation']) == {'semseg', 'depth', 'normals', 'edge'}
    run_dir = tmp_path / 'run'
    assert (run_dir / 'checkpoint_last.pt').is_file() and (run_dir / 'log.jsonl').is_file()
    assert 'TensorBoard' in out.err or (run_dir / 'tensorboard').is_dir()
    weights = str(run_dir / 'model.safetensors')
    config, path = resolve_model(weights)
    assert path == weights and config.image_size == (32, 48)
    load_checkpoint(build_model(config), weights)

    assert main(['train', str(config_path), '--steps', '6']) == 0
    out = capsys.readouterr()
    assert 'resumed from' in out.err and 'at step 4' in out.err
    assert last_json_line(out.out)['steps'] == 6
    steps = [json.loads(line)['step'] for line in (run_dir / 'log.jsonl').read_text().splitlines()
             if '"train"' in line]
    assert steps == [2, 4, 6]


def test_training_config_mistakes_are_reported(tmp_path, capsys):
    with pytest.raises(ValueError, match='unknown training config keys'):
        load_config({'train': {'stepz': 3}})
    with pytest.raises(ValueError, match='held-out'):
        load_config({'data': {'seed_stop': 500000}})
    with pytest.raises(ValueError, match='data.root'):
        load_config({'data': {'source': 'nyud'}})
    bad = tmp_path / 'bad.yaml'
    bad.write_text('train: {optimizer: sgd}\n')
    assert main(['train', str(bad)]) == 2
    assert 'train.optimizer' in capsys.readouterr().err


@pytest.mark.slow  # trains: `make test-fast` leaves it out
def test_init_from_a_checkpoint(tmp_path):
    config, _ = model_config_from(tiny_model('default_mlore'))
    model = build_model(config)
    path = str(tmp_path / 'init.safetensors')
    save_checkpoint(model, path)
    trainer = Trainer({**tiny_config(tmp_path), 'init': path})
    for key, value in model.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[key], value)


@pytest.fixture(scope='module')
def tiny_weights(tmp_path_factory):
    config, _ = model_config_from(tiny_model('default_mlore'))
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp('weights') / 'tiny.safetensors')
    save_checkpoint(build_model(config), path)
    return path


def test_mtdp_eval_prints_metrics_as_json_on_the_last_line(tiny_weights, capsys):
    assert main(['eval', '--model', tiny_weights, '--data', 'synthetic', '--num', '3',
                 '--seed', '424242', '--device', 'cpu', '--json']) == 0
    summary = last_json_line(capsys.readouterr().out)
    assert 0.0 <= summary['semseg']['mIoU'] <= 1.0
    assert summary['depth']['rmse'] > 0 and summary['depth']['abs_rel'] > 0
    assert 0.0 <= summary['normals']['mean_angle'] <= 180.0
    assert 'median_angle' in summary['normals'] and 0.0 <= summary['edge']['odsF'] <= 1.0


def test_mtdp_eval_refuses_bad_requests(tiny_weights, capsys):
    assert main(['eval', '--model', tiny_weights, '--data', 'kitti:/x']) == 2
    assert 'synthetic, nyud:DIR or pascal:DIR' in capsys.readouterr().err
    assert main(['eval', '--model', tiny_weights, '--steps', '3', '--num', '1',
                 '--device', 'cpu']) == 2
    assert 'TaskDiffusion' in capsys.readouterr().err


def test_mtdp_infer_writes_pictures_and_a_mosaic(tiny_weights, tmp_path, capsys):
    scene = render_scene(3, 60, 80)
    image_path = str(tmp_path / 'room.png')
    cv2.imwrite(image_path, cv2.cvtColor(scene['image'], cv2.COLOR_RGB2BGR))
    out_dir = tmp_path / 'pictures'
    assert main(['infer', image_path, '--model', tiny_weights, '--out', str(out_dir),
                 '--device', 'cpu']) == 0
    for suffix in ('input', 'semseg', 'depth', 'normals', 'edge', 'mosaic'):
        picture = cv2.imread(str(out_dir / f'room_{suffix}.png'))
        assert picture is not None, suffix
        if suffix != 'mosaic':
            assert picture.shape == (60, 80, 3)
    mosaic = cv2.imread(str(out_dir / 'room_mosaic.png'))
    assert mosaic.shape[1] == 3 * 80 and mosaic.shape[0] > 2 * 60
    assert str(out_dir / 'room_mosaic.png') in capsys.readouterr().out

    folder = tmp_path / 'frames'
    folder.mkdir()
    for index in range(2):
        cv2.imwrite(str(folder / f'f{index}.jpg'), scene['image'])
    assert main(['infer', str(folder), '--model', tiny_weights, '--out', str(out_dir),
                 '--device', 'cpu']) == 0
    assert (out_dir / 'f0_mosaic.png').is_file() and (out_dir / 'f1_mosaic.png').is_file()
    assert main(['infer', str(tmp_path / 'absent.png'), '--model', tiny_weights,
                 '--out', str(out_dir)]) == 2


# ----------------------------------------------------------------------------- shipped models
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        'mtdp_ros', 'data')
# A smaller held-out set than the model cards' 200 scenes (same first seed), for CPU time.
FLOOR_SCENES = 32


@pytest.mark.slow  # evaluates the shipped models: `make test-fast` leaves it out
@pytest.mark.parametrize('name', ['default_mlore', 'default_taskdiffusion'])
def test_shipped_default_models_meet_the_quality_floors(name):
    from mtdp_ros.training.evaluate import check_floors, evaluate_model, summarize
    path = os.path.join(DATA_DIR, f'{name}.safetensors')
    if not os.path.isfile(path):
        pytest.skip(f'{path} does not exist yet: train it with '
                    f'scripts/train_default_models.py')
    assert os.path.getsize(path) <= 25 * 1024 * 1024
    config, weights = resolve_model(name)
    assert weights == path
    model = build_model(config)
    load_checkpoint(model, path)
    summary = summarize(evaluate_model(model, 'synthetic', num=FLOOR_SCENES, seed=424242,
                                       batch_size=8, device='cpu'))
    assert not check_floors(summary), f'{name} on {FLOOR_SCENES} held-out scenes: {summary}'
