"""DistributedDataParallel training: 2 CPU processes (gloo) under torchrun; SyncBatchNorm.

PyTorch's SyncBatchNorm trains on GPU tensors only (its forward raises for CPU input in
training mode), so the 2-process CPU run keeps BatchNorm and the conversion is tested on
its own: same state dict, same outputs as BatchNorm where no synchronisation happens.
"""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
import yaml

from mtdp_ros.models import build_model
from mtdp_ros.training.train import convert_sync_batchnorm, model_config_from, \
    use_sync_batchnorm

# Slow (distributed training in worker processes): `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = {'image_size': [32, 48], 'embed_dim': 32, 'depth': 3, 'num_heads': 2,
        'select_layers': [1, 2, 3], 'decoder_dim': 16}


@pytest.mark.parametrize('family', ['default_mlore', 'default_taskdiffusion'])
def test_two_gloo_processes_end_with_identical_weights(tmp_path, family):
    config = {'model': {'base': family, **TINY}, 'data': {'workers': 0},
              'train': {'steps': 3, 'batch_size': 2, 'lr': 2e-3, 'warmup_steps': 0,
                        'device': 'cpu', 'amp': 'off', 'log_every': 1, 'checkpoint_every': 0,
                        'find_unused_parameters': True},
              'eval': {'num': 0}, 'output': {'dir': str(tmp_path / 'run')}}
    config_path = tmp_path / 'ddp.yaml'
    config_path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nnodes', '1',
         '--nproc_per_node', '2', os.path.join(HERE, 'ddp_train_worker.py'),
         str(config_path), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    facts = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1)]
    for rank, fact in enumerate(facts):
        assert fact['rank'] == rank and fact['world_size'] == 2 and fact['distributed']
        assert fact['ddp'] == 'DistributedDataParallel' and fact['steps'] == 3
        assert fact['sync_batchnorm'] is False and fact['batchnorm_types'] == ['BatchNorm2d']
    assert any('SyncBatchNorm runs on CUDA only' in m for m in facts[0]['messages'])
    states = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1)]
    params = dict(build_model(model_config_from(config['model'])[0]).named_parameters())
    initial = build_model(model_config_from(config['model'])[0]).state_dict()
    for name in params:
        assert torch.equal(states[0][name], states[1][name]), name      # identical weights
    moved = [n for n in params if not torch.equal(states[0][n], initial[n])]
    assert len(moved) > len(params) // 2                                # and they trained
    # Rank 0 saved what it holds.
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / 'run' / 'model.safetensors'))
    for name in params:
        torch.testing.assert_close(saved[name].float(), states[0][name], rtol=1e-3, atol=1e-3)


def test_sync_batchnorm_conversion_keeps_state_and_outputs():
    config, _ = model_config_from({'base': 'default_mlore', **TINY})
    torch.manual_seed(0)
    model = build_model(config)
    reference = copy.deepcopy(model)
    converted = convert_sync_batchnorm(model)
    kinds = {type(m) for m in converted.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert kinds == {nn.SyncBatchNorm}
    assert sum(isinstance(m, nn.BatchNorm2d) for m in reference.modules()) == \
        sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) > 0
    ref_state, new_state = reference.state_dict(), converted.state_dict()
    assert list(ref_state) == list(new_state)
    for key in ref_state:
        assert torch.equal(ref_state[key], new_state[key]), key
    x = torch.randn(2, 3, *TINY['image_size'])
    with torch.no_grad():
        for mode in ('eval', 'train'):       # train: no process group, so no sync -> same
            getattr(reference, mode)()
            getattr(converted, mode)()
            torch.manual_seed(1)                  # the routers' training noise
            expected = reference(x)
            torch.manual_seed(1)
            got = converted(x)
            for task in expected:
                torch.testing.assert_close(got[task], expected[task], msg=f'{mode} {task}')


def test_sync_batchnorm_choice():
    cpu, cuda = torch.device('cpu'), torch.device('cuda', 0)
    assert use_sync_batchnorm('auto', cuda, True) is True
    assert use_sync_batchnorm('auto', cuda, False) is False
    assert use_sync_batchnorm('auto', cpu, True) is False
    assert use_sync_batchnorm(False, cuda, True) is False
    assert use_sync_batchnorm(True, cuda, True) is True
    with pytest.raises(ValueError, match='needs CUDA'):
        use_sync_batchnorm(True, cpu, True)
