"""The training loop behind ``mtdp train CONFIG.yaml``.

One process per GPU (``torchrun --nproc_per_node N -m mtdp_ros.cli train CONFIG`` gives
DistributedDataParallel; a plain call trains on one device). Synthetic batches are drawn
by worker processes (scene parameters) and rendered on the training device, so a GPU is
not starved by the CPU. Mixed precision (bf16 by default on CUDA, fp16 with a gradient
scaler), gradient clipping, a warm-up + poly learning-rate schedule, a wall-time budget
that fits the schedule to the time available, checkpoints with resume, JSONL and
TensorBoard logs (when ``tensorboard`` is installed).
"""

import contextlib
import json
import math
import os
import sys
import time

import torch
from torch import nn

from ..models import build_model, load_checkpoint, ModelConfig, resolve_model, save_checkpoint
from ..models.pretrained import load_pretrained_encoder
from ..runtime import options
from .config import load_config
from .losses import MultiTaskLoss

CHECKPOINT_NAME = 'checkpoint_last.pt'


# ----------------------------------------------------------------------------- setup
def model_config_from(spec):
    """Model config from a name/path, a full config dict, or ``{base: NAME, **overrides}``."""
    if isinstance(spec, ModelConfig):
        return spec, None
    if isinstance(spec, dict):
        spec = dict(spec)
        if 'base' in spec:
            config, checkpoint = resolve_model(spec.pop('base'))
            return config.replace(**spec), None
        return ModelConfig.from_dict(spec), None
    return resolve_model(spec)


def resolve_device(name):
    """torch.device for train.device 'auto' | 'cpu' | 'cuda' (see runtime.options).

    Under torchrun, CUDA is this process's GPU (``LOCAL_RANK``).
    """
    name = options.resolve_device(name, 'train.device')
    if name == 'cuda' and 'LOCAL_RANK' in os.environ:
        return torch.device('cuda', int(os.environ['LOCAL_RANK']))
    return torch.device(name)


def amp_dtype(choice, device):
    """The autocast dtype (None: full precision)."""
    if choice == 'off':
        return None
    if choice == 'auto':
        if device.type != 'cuda':
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if choice == 'fp16' and device.type != 'cuda':
        raise ValueError('train.amp fp16 needs a CUDA device (use bf16 or off on the CPU)')
    return torch.bfloat16 if choice == 'bf16' else torch.float16


def normalise_images(images, config):
    """[0, 1] RGB batch -> the model's normalised input."""
    mean = torch.tensor(config.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def use_sync_batchnorm(choice, device, distributed):
    """Whether to convert BatchNorm to SyncBatchNorm (``train.sync_batchnorm``).

    ``auto``: when several processes train on CUDA (the authors convert before DDP).
    PyTorch's SyncBatchNorm forward in training mode needs a GPU (CUDA/XPU/HPU) tensor, so
    ``true`` on another device is an error rather than a crash at the first step.
    """
    if choice == 'auto':
        return distributed and device.type == 'cuda'
    if choice and device.type != 'cuda':
        raise ValueError(f'train.sync_batchnorm: true needs CUDA devices (PyTorch\'s '
                         f'SyncBatchNorm does not train on {device.type}); use auto or false')
    return bool(choice) and distributed


def has_batchnorm(model):
    """True when ``model`` has BatchNorm layers."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def convert_sync_batchnorm(model):
    """``model`` with every BatchNorm layer replaced by SyncBatchNorm (same state dict)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


class TrainForward(nn.Module):
    """Routes ``forward`` to ``forward_train`` so DistributedDataParallel sees the call."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, targets):
        """``model.forward_train(x, targets)``."""
        return self.model.forward_train(x, targets)


class ProgressBar:
    """A one-line progress bar on a terminal; plain log lines otherwise."""

    def __init__(self, stream=None, width=24):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.width = width

    def update(self, step, total, text):
        """Show progress ``step`` of ``total`` with a status text."""
        frac = min(1.0, step / max(total, 1))
        filled = int(round(frac * self.width))
        bar = '#' * filled + '.' * (self.width - filled)
        line = f'[{bar}] {step}/{total} {text}'
        if self.tty:
            self.stream.write('\r' + line[:160].ljust(160))
        else:
            self.stream.write(line + '\n')
        self.stream.flush()

    def close(self):
        """End the progress line."""
        if self.tty:
            self.stream.write('\n')
            self.stream.flush()


class Logger:
    """JSONL log in the output folder, TensorBoard when importable, text via ``echo``."""

    def __init__(self, out_dir, enabled, echo):
        self.enabled, self.echo = enabled, echo
        self.writer = None
        self.jsonl = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        self.jsonl = open(os.path.join(out_dir, 'log.jsonl'), 'a', encoding='utf-8')
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            echo('TensorBoard logging skipped: the tensorboard package is not installed '
                 '(pip install tensorboard); logs go to log.jsonl')
        else:
            self.writer = SummaryWriter(os.path.join(out_dir, 'tensorboard'))

    def log(self, step, values, prefix='train'):
        """Record ``values`` (nested dict of numbers) at ``step`` under ``prefix``."""
        if not self.enabled:
            return
        record = {'step': step, 'time': time.time(), prefix: values}
        self.jsonl.write(json.dumps(record) + '\n')
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in _flatten(values).items():
                self.writer.add_scalar(f'{prefix}/{key}', value, step)

    def close(self):
        """Flush and close the log files."""
        if self.jsonl:
            self.jsonl.close()
        if self.writer is not None:
            self.writer.close()


def _flatten(values, prefix=''):
    flat = {}
    for key, value in values.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(_flatten(value, name + '/'))
        elif isinstance(value, (int, float)) and math.isfinite(value):
            flat[name] = value
    return flat


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """Model, loss, optimiser, schedule and one ``step(batch)``; ``fit()`` runs the config."""

    def __init__(self, config, echo=print, device=None):
        self.config = config = load_config(config)
        self.echo = echo
        self.distributed = int(os.environ.get('WORLD_SIZE', '1')) > 1
        self.rank = int(os.environ.get('RANK', '0'))
        self.world_size = int(os.environ.get('WORLD_SIZE', '1'))
        train = config['train']
        self.device = torch.device(device) if device is not None else \
            resolve_device(train['device'])
        if self.distributed and not torch.distributed.is_initialized():
            backend = 'nccl' if self.device.type == 'cuda' else 'gloo'
            torch.distributed.init_process_group(backend)
        if self.device.type == 'cuda':
            if self.device.index is None:
                # One process per GPU: torchrun's LOCAL_RANK picks it (0 without torchrun).
                self.device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(int(train['seed']) + self.rank)

        self.model_config, shipped = model_config_from(config['model'])
        self.model = build_model(self.model_config)
        init = config['init']
        if init == 'model':
            if shipped is None:
                raise ValueError(f'init: model, but the model {config["model"]!r} comes '
                                 f'without weights (give a checkpoint path or random)')
            init = shipped
        if isinstance(init, dict) and 'backbone' in init:
            if not hasattr(self.model, 'load_pretrained_backbone'):
                raise ValueError(f'init: {{backbone: PATH}} loads a Mask2Former folder into '
                                 f'MT-CP models; {self.model_config.family} takes '
                                 f'{{encoder: PATH}}')
            report = self.model.load_pretrained_backbone(init['backbone'])
            self.echo(f'backbone initialised from {init["backbone"]} ({report["layout"]}; '
                      f'kept: {", ".join(report["kept"]) or "-"}); the rest random')
        elif isinstance(init, dict):
            if not hasattr(self.model, 'encoder'):
                raise ValueError(f'init: {{encoder: PATH}} loads an ImageNet ViT; '
                                 f'{self.model_config.family} has no ViT encoder (MT-CP: '
                                 f'{{backbone: PATH}})')
            report = load_pretrained_encoder(self.model.encoder, init['encoder'])
            self.echo(f'encoder initialised from {init["encoder"]} (position embedding '
                      f'{report["pos_embed"]}; left out: {", ".join(report["dropped"]) or "-"})'
                      f'; decoder and heads random')
        elif init not in (None, 'random'):
            load_checkpoint(self.model, init)
            self.echo(f'initialised from {init}')
        self.model.to(self.device)
        self.model.train()
        self.tasks = self.model_config.tasks
        # RGB-D recordings: semseg has no labels (distilled and/or frozen, see finetune.py).
        self.finetune = None
        if config['data']['source'] in ('tum', 'rosbag'):
            from .finetune import FineTune
            self.finetune = FineTune(self.model, config['finetune'],
                                     config['data']['source']).to(self.device)
        self.loss_tasks = self.finetune.loss_tasks if self.finetune else self.tasks
        loss_cfg = config['loss']
        self.criterion = MultiTaskLoss(
            self.loss_tasks, loss_cfg['weights'], edge_w=loss_cfg['edge_w'],
            load_balancing=loss_cfg['load_balancing'],
            aux_weight=loss_cfg['aux_weight'] if options.is_diffusion(self.model_config) else 0.0,
            balancing=loss_cfg['balancing'], lps=loss_cfg['lps'],
            deep_weight=loss_cfg['deep_supervision'])
        self.sync_batchnorm = use_sync_batchnorm(train['sync_batchnorm'], self.device,
                                                 self.distributed)
        if self.sync_batchnorm:
            self.model = convert_sync_batchnorm(self.model)
        elif self.distributed and self.is_main and has_batchnorm(self.model):
            self.echo('BatchNorm statistics stay per process: SyncBatchNorm runs on CUDA only '
                      '(PyTorch), this run trains on ' + self.device.type)
        forward = TrainForward(self.model)
        if train['compile']:
            forward = torch.compile(forward)
        if self.distributed:
            forward = nn.parallel.DistributedDataParallel(
                forward, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                find_unused_parameters=train['find_unused_parameters'])
        self.forward = forward

        params = [p for p in self.model.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if train['optimizer'] == 'adamw' else torch.optim.Adam
        extra = {'fused': True} if self.device.type == 'cuda' else {}
        self.optimizer = opt_cls(params, lr=float(train['lr']),
                                 weight_decay=float(train['weight_decay']),
                                 betas=tuple(train['betas']), **extra)
        self.base_lr = float(train['lr'])
        self.amp = amp_dtype(train['amp'], self.device)
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp == torch.float16)
        self.step_count = 0
        self.planned_steps = int(train['steps'])
        self.stream_position = 0

    # -- schedule ----------------------------------------------------------------
    def lr_at(self, step):
        """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then poly."""
        train = self.config['train']
        warmup = int(train['warmup_steps'])
        if warmup and step < warmup:
            return self.base_lr * (step + 1) / warmup
        if train['schedule'] == 'constant':
            return self.base_lr
        span = max(1, self.planned_steps - warmup)
        progress = min(1.0, max(0.0, (step - warmup) / span))
        return self.base_lr * (1.0 - progress) ** float(train['poly_power'])

    # -- one step ------------------------------------------------------------------
    def step(self, batch):
        """Take one optimiser step on ``batch`` (dict: image in [0, 1] and targets).

        Returns the loss dict (tensors, not synchronised with the device).
        """
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group['lr'] = lr
        x = normalise_images(batch['image'].to(self.device, non_blocking=True),
                             self.model_config)
        targets = {t: batch[t].to(self.device, non_blocking=True) for t in self.tasks
                   if t in batch}
        autocast = torch.autocast(self.device.type, dtype=self.amp) if self.amp \
            else contextlib.nullcontext()
        if self.finetune:
            self.finetune.before_forward(x)
        with autocast:
            outputs = self.forward(x, targets)
        losses = self.criterion(outputs, targets)
        if self.finetune:
            losses = self.finetune.add_losses(losses, x, outputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses['total']).backward()
        clip = float(self.config['train']['grad_clip'] or 0)
        if clip > 0:
            self.scaler.unscale_(self.optimizer)
            losses['grad_norm'] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step_count += 1
        losses['lr'] = lr
        return losses

    # -- checkpoints -------------------------------------------------------------
    @property
    def is_main(self):
        """True on the process that logs and saves (rank 0)."""
        return self.rank == 0

    def checkpoint_path(self):
        """Where the resumable training state is written."""
        return os.path.join(self.config['output']['dir'], CHECKPOINT_NAME)

    def save_state(self, path=None):
        """Everything needed to resume, as tensors and plain values (safe to load)."""
        if not self.is_main:
            return None
        path = path or self.checkpoint_path()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        state = {
            'model': self.model.state_dict(),
            'optimizer': self.optimizer.state_dict(),
            'scaler': self.scaler.state_dict(),
            'step': self.step_count,
            'planned_steps': self.planned_steps,
            'stream_position': self.stream_position,
            'lps': self.criterion.prioritizer.state_dict()
            if self.criterion.prioritizer else None,
            'model_config': json.dumps(self.model_config.to_dict()),
        }
        tmp = path + '.tmp'
        torch.save(state, tmp)
        os.replace(tmp, path)
        return path

    def load_state(self, path):
        """Resume from a state written by ``save_state``."""
        state = torch.load(path, map_location='cpu', weights_only=True)
        saved = ModelConfig.from_dict(json.loads(state['model_config']))
        if saved != self.model_config:
            raise ValueError(f'{path} was written for another model config; '
                             f'use a new output.dir or output.resume: never')
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scaler.load_state_dict(state['scaler'])
        self.step_count = int(state['step'])
        self.stream_position = int(state['stream_position'])
        if state.get('lps') and self.criterion.prioritizer:
            self.criterion.prioritizer.load_state_dict(state['lps'])

    def _resume(self):
        choice = self.config['output']['resume']
        if choice == 'never':
            return
        path = self.checkpoint_path() if choice == 'auto' else choice
        if os.path.isfile(path):
            self.load_state(path)
            self.echo(f'resumed from {path} at step {self.step_count}')
        elif choice != 'auto':
            raise FileNotFoundError(f'output.resume checkpoint not found: {path}')

    # -- data ----------------------------------------------------------------------
    def batches(self):
        """Endless iterator of training batches for this rank."""
        data, train = self.config['data'], self.config['train']
        height, width = self.model_config.image_size
        if data['source'] == 'synthetic':
            from .synthetic import SyntheticStream
            stream = SyntheticStream(train['batch_size'], height, width, self.device,
                                     start=data['seed_start'], stop=data['seed_stop'],
                                     workers=data['workers'], rank=self.rank,
                                     world_size=self.world_size)
            stream.position = self.stream_position
            for batch in stream:
                self.stream_position = stream.position
                yield batch
            return
        from .datasets import build_dataset, collate
        if self.finetune:
            from .rgbd import build_rgbd_dataset, training_focal_px
            dataset = build_rgbd_dataset(data, (height, width), seed=int(train['seed']))
            # The fine-tuned model predicts depth for this camera: its config says so, or
            # the node's focal correction would rescale from the starting model's camera.
            focal = training_focal_px(dataset)
            if self.model_config.train_focal_px != focal:
                self.echo(f'train_focal_px {self.model_config.train_focal_px} -> '
                          f'{focal:.4g} px (the RGB-D frames\' camera in the model input)')
                self.model_config = self.model_config.replace(train_focal_px=focal)
                self.model.config = self.model_config
        else:
            dataset = build_dataset(data['source'], data['root'], 'train', self.tasks,
                                    (height, width), augment=data['augment'])
        sampler = None
        if self.distributed:
            sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=True)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=train['batch_size'], shuffle=sampler is None,
            sampler=sampler, num_workers=data['workers'], drop_last=True,
            pin_memory=self.device.type == 'cuda', collate_fn=collate,
            persistent_workers=data['workers'] > 0)
        epoch = 0
        while True:
            if sampler is not None:
                sampler.set_epoch(epoch)
            for batch in loader:
                yield batch
            epoch += 1

    # -- the whole run -------------------------------------------------------------
    def fit(self):
        """Train per the config; returns a summary dict (also written to summary.json)."""
        config = self.config
        train, output = config['train'], config['output']
        out_dir = output['dir']
        logger = Logger(out_dir, self.is_main, self.echo)
        self._resume()
        budget_s = float(train['time_budget_min']) * 60 if train['time_budget_min'] else None
        # Kept back from the budget for the final validation and saving.
        reserve_s = min(60.0, 0.06 * budget_s) if budget_s else 0.0
        start = time.time()
        if self.is_main:
            self.echo(f'training {self.model_config.name or self.model_config.family} '
                      f'({sum(p.numel() for p in self.model.parameters()) / 1e6:.2f} M '
                      f'parameters) on {self.device}, amp {self.amp}, '
                      f'batch {train["batch_size"]} x {self.world_size}, '
                      f'{self.planned_steps} steps'
                      + (f', time budget {budget_s / 60:.1f} min' if budget_s else ''))
        bar = ProgressBar() if self.is_main else None
        batches = self.batches()
        timing_from, timing_step = None, None
        last_losses = {}
        ema = None
        stop_reason = 'steps'
        first_step = self.step_count
        while self.step_count < self.planned_steps:
            batch = next(batches)
            losses = self.step(batch)
            step = self.step_count
            if step - first_step == 5:    # time from here: skip allocation, autotuning
                if self.device.type == 'cuda':
                    torch.cuda.synchronize(self.device)
                timing_from, timing_step = time.time(), step
            if budget_s and step % 10 == 0:
                planned, reason = self._fit_to_budget(step, start, budget_s, reserve_s,
                                                      timing_from, timing_step)
                if planned is not None:
                    self.planned_steps, stop_reason = planned, reason
            if step % train['log_every'] == 0 or step == self.planned_steps:
                values = {k: float(v.detach() if torch.is_tensor(v) else v)
                          for k, v in losses.items()}
                if not math.isfinite(values['total']):
                    raise FloatingPointError(f'loss became {values["total"]} at step {step}: '
                                             f'lower train.lr or enable grad_clip')
                ema = values['total'] if ema is None else 0.8 * ema + 0.2 * values['total']
                last_losses = values
                if self.criterion.prioritizer:
                    values['priority'] = self.criterion.priorities()
                logger.log(step, values)
                if bar:
                    elapsed = time.time() - start
                    rate = step / max(elapsed, 1e-9)
                    eta = (self.planned_steps - step) / max(rate, 1e-9)
                    parts = ' '.join(f'{t}={values[t]:.3f}' for t in self.loss_tasks)
                    bar.update(step, self.planned_steps,
                               f'loss {ema:.3f} ({parts}) lr {values["lr"]:.2e} '
                               f'{rate:.2f} it/s eta {eta / 60:.1f} min')
            if train['checkpoint_every'] and step % train['checkpoint_every'] == 0:
                self.save_state()
            if config['eval']['every'] and step % config['eval']['every'] == 0 \
                    and self.is_main:
                logger.log(step, self.validate(), prefix='val')
        if bar:
            bar.close()
        train_seconds = time.time() - start
        summary = {'steps': self.step_count, 'stop_reason': stop_reason,
                   'batch_size': train['batch_size'],
                   'images_seen': self.step_count * train['batch_size'] * self.world_size,
                   'train_seconds': round(train_seconds, 1), 'final_losses': last_losses,
                   'device': device_description(self.device), 'world_size': self.world_size,
                   'amp': str(self.amp).replace('torch.', '') if self.amp else 'off'}
        if self.is_main:
            self.save_state()
            weights = os.path.join(out_dir, 'model.safetensors')
            meta = {'trained_optimizer_steps': self.step_count,
                    'training_seconds': round(train_seconds, 1),
                    'training_device': summary['device']}
            save_checkpoint(self.model, weights, half=output['half'], metadata=meta)
            summary['weights'] = weights
            if output['save']:
                save_checkpoint(self.model, output['save'], half=output['half'], metadata=meta)
                summary['saved'] = output['save']
            if config['eval']['num']:
                summary['validation'] = self.validate()
                logger.log(self.step_count, summary['validation'], prefix='val')
            with open(os.path.join(out_dir, 'summary.json'), 'w', encoding='utf-8') as handle:
                json.dump(summary, handle, indent=2)
        logger.close()
        if self.distributed:
            torch.distributed.barrier()
        return summary

    def _fit_to_budget(self, step, start, budget_s, reserve_s, timing_from, timing_step):
        """New (planned steps, stop reason) from the time left, or (None, None).

        Called at the same steps on every rank; the ranks agree on the smallest plan, so
        they stop together.
        """
        steps = int(self.config['train']['steps'])
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        now = time.time()
        left = budget_s - (now - start) - reserve_s
        if left <= 0:
            planned = step                                      # out of time: stop here
        elif timing_from is not None and step > timing_step:
            per_step = (now - timing_from) / (step - timing_step)
            planned = min(steps, step + max(1, int(left / per_step)))
        else:
            planned = self.planned_steps
        if self.distributed:
            agreed = torch.tensor([planned], device=self.device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
            planned = int(agreed)
        # Shrink the plan as the time runs out; let it grow only early on (estimates settle).
        if planned < self.planned_steps or (step < 200 and planned != self.planned_steps):
            return max(step, planned), ('time budget' if planned < steps else 'steps')
        return None, None

    def validate(self):
        """Metrics on the validation scenes (``eval`` section), model left in train mode."""
        from .evaluate import evaluate_model, summarize
        cfg = self.config['eval']
        self.model.eval()
        try:
            if self.finetune:
                return self._validate_rgbd()
            if self.config['data']['source'] == 'synthetic':
                results = evaluate_model(self.model, 'synthetic', num=cfg['num'],
                                         seed=cfg['seed'], batch_size=cfg['batch_size'],
                                         device=self.device)
            else:
                results = evaluate_model(
                    self.model, f'{self.config["data"]["source"]}:{self.config["data"]["root"]}',
                    num=cfg['num'], batch_size=cfg['batch_size'], device=self.device)
        finally:
            self.model.train()
        summary = summarize(results)
        self.echo('validation: ' + json.dumps(summary))
        return summary

    def _validate_rgbd(self):
        """Metrics on ``data.val_root`` (RGB-D sources); {} when none is given."""
        from .evaluate import summarize
        from .finetune import evaluate_rgbd
        from .rgbd import build_rgbd_dataset
        data, cfg = self.config['data'], self.config['eval']
        if not data['val_root']:
            return {}
        dataset = build_rgbd_dataset(data, self.model_config.image_size,
                                     roots=data['val_root'], augment=False)
        subset = torch.utils.data.Subset(dataset, range(min(cfg['num'], len(dataset))))
        scores = evaluate_rgbd(self.model, subset, teacher=self.finetune.teacher,
                               tasks=self.loss_tasks, batch_size=cfg['batch_size'],
                               device=self.device)
        summary = summarize(scores)
        self.echo('validation: ' + json.dumps(summary))
        return summary


def device_description(device):
    """'NVIDIA H100 80GB HBM3' / 'cpu (N threads)'."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'cpu ({torch.get_num_threads()} threads)'


def train(config, echo=print):
    """Run a training config (path or dict); returns the summary."""
    trainer = Trainer(config, echo=echo)
    try:
        return trainer.fit()
    finally:
        if trainer.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
