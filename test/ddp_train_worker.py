"""One torchrun process of test_training_ddp.py: train a config, save this rank's state.

Run as ``torchrun --standalone --nproc_per_node 2 test/ddp_train_worker.py CONFIG OUT``.
"""

import json
import os
import sys

import torch

from mtdp_ros.training.train import Trainer


def main(config_path, out_dir):
    """Train per the config; write rank<R>.pt (state dict) and rank<R>.json (facts)."""
    import yaml
    with open(config_path, encoding='utf-8') as handle:
        config = yaml.safe_load(handle)
    messages = []
    trainer = Trainer(config, echo=messages.append)
    rank = trainer.rank
    summary = trainer.fit()
    state = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    torch.save(state, os.path.join(out_dir, f'rank{rank}.pt'))
    facts = {'rank': rank, 'world_size': trainer.world_size, 'steps': summary['steps'],
             'distributed': trainer.distributed, 'sync_batchnorm': trainer.sync_batchnorm,
             'ddp': type(trainer.forward).__name__, 'messages': messages,
             'batchnorm_types': sorted({type(m).__name__ for m in trainer.model.modules()
                                        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)})}
    with open(os.path.join(out_dir, f'rank{rank}.json'), 'w', encoding='utf-8') as handle:
        json.dump(facts, handle)


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
