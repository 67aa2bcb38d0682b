"""Evaluation on synthetic video: per-task metrics over all frames, flicker, time per frame.

``evaluate_video(model, num=4, seed=424242, length=16, motion='slow', steps=1,
warm_start=True, strength=0.5)`` renders sequences ``seed .. seed + num - 1``
(:mod:`.synthetic_video`) at the model's input size and runs the frames in order, one at
a time, as the node does: the sampler's noise is the same draw (seed 0) for every frame,
and with ``warm_start`` each frame starts from the previous frame's state when
:class:`mtdp_ros.runtime.warm_start.WarmStartState` says warm (frames 1/30 s apart;
its scene-cut test decides after a cut). Returns ``(metrics, temporal)``: the nested
metrics of :class:`.metrics.MultiTaskMeter` and the flicker of
:class:`.temporal_metrics.TemporalMeter` with ``ms_per_frame`` (median wall time of the
network per frame) and the count of warm and cold frames.
"""

import statistics
import time

import torch

from ..runtime.options import check_steps, is_diffusion
from ..runtime.warm_start import DEFAULT_CUT_THRESHOLD, DEFAULT_MAX_GAP_S, WarmStartState
from .metrics import MultiTaskMeter
from .synthetic import SCENE_TASKS
from .temporal_metrics import TemporalMeter

FRAME_PERIOD_S = 1.0 / 30.0


def render_sequences(config, num, seed, length, motion, device='cpu', progress=None):
    """Render the ``num`` sequences once (a list of dicts), to evaluate several settings."""
    from .synthetic_video import render_sequence
    height, width = config.image_size
    sequences = []
    for index in range(num):
        sequences.append(render_sequence(seed + index, length, height, width, motion,
                                         device=device))
        if progress:
            progress(index + 1, num)
    return sequences


class VideoRun:
    """One setting (steps, warm start, strength) run over frames in order, as a node would.

    ``frame(frames, index)`` runs frame ``index`` of a rendered sequence and scores it;
    several runs can take the same frames in turn (interleaved timing, see
    ``scripts/bench_warm_start.py``).
    """

    def __init__(self, model, steps=None, warm_start=False, strength=0.5, device='cpu',
                 focal_correction=True, max_gap_s=DEFAULT_MAX_GAP_S,
                 cut_threshold=DEFAULT_CUT_THRESHOLD, new_noise=False):
        config = model.config
        missing = [t for t in config.tasks if t not in SCENE_TASKS]
        if missing:
            raise ValueError(f'synthetic video has no labels for {missing}')
        if warm_start and not is_diffusion(config):
            raise ValueError('--warm-start applies to TaskDiffusion models only')
        # The one check of a step count given to an evaluation (as evaluate_model's).
        steps = check_steps(steps, config, '--steps')
        self.model, self.config = model, config
        self.steps, self.warm_start, self.strength = steps, bool(warm_start), strength
        self.device = torch.device(device)
        self.focal_correction = focal_correction
        self.max_gap_s, self.cut_threshold = max_gap_s, cut_threshold
        self.meter = MultiTaskMeter(config.tasks, config.num_outputs, edge_max_dist=0.011)
        self.temporal = TemporalMeter(config.tasks)
        self.mean = torch.tensor(config.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(config.std, device=self.device).view(1, 3, 1, 1)
        self.times, self.warm_frames, self.cold_frames = [], 0, 0
        self.state = None
        # new_noise: a new noise draw every frame (seed = frame count) instead of the
        # engines' fixed draw; for comparison with samplers that reseed per frame.
        self.new_noise = bool(new_noise)
        self.frames_run = 0

    @torch.no_grad()
    def frame(self, frames, index, image=None):
        """Run and score frame ``index`` of ``frames`` (a rendered sequence).

        ``image``: the frame as uint8 H x W x 3 (for the scene-cut test; made if None).
        """
        config = self.config
        if index == 0:
            self.state = WarmStartState(self.max_gap_s, self.cut_threshold)
            self.temporal.new_sequence()
        if index == frames['cut']:
            self.temporal.new_sequence()                 # no flicker across a scene cut
        if image is None:
            image = (frames['image'][index] * 255).round().byte().permute(1, 2, 0).numpy()
        x = (frames['image'][index:index + 1].to(self.device) - self.mean) / self.std
        targets = {t: frames[t][index:index + 1].to(self.device) for t in config.tasks}
        started = time.perf_counter()
        if is_diffusion(config):
            decision = self.state.decide(image, index * FRAME_PERIOD_S, (self.steps,),
                                         enabled=self.warm_start)
            raw, new = self.model(x, steps=self.steps, init=decision.init,
                                  strength=self.strength if decision.warm else 1.0,
                                  return_state=True,
                                  seed=self.frames_run if self.new_noise else 0)
            self.state.update(new, decision)
            self.warm_frames += decision.warm
            self.cold_frames += not decision.warm
        else:
            raw = self.model(x)
        self.times.append((time.perf_counter() - started) * 1000.0)
        self.frames_run += 1
        if self.focal_correction:
            from .evaluate import _focal_corrected
            raw = _focal_corrected(raw, frames['intrinsics'][index:index + 1].cpu(),
                                   config.train_focal_px)
        raw = {t: v.float() for t, v in raw.items()}
        self.meter.update(raw, targets)
        self.temporal.update(raw, targets)

    def score(self):
        """(per-task metrics, temporal summary with ms_per_frame and warm/cold counts)."""
        summary = self.temporal.score()
        summary.update(ms_per_frame=statistics.median(self.times) if self.times else None,
                       warm_frames=self.warm_frames, cold_frames=self.cold_frames)
        return self.meter.score(), summary


def frame_images(frames):
    """The frames of a rendered sequence as uint8 L x H x W x 3 (what a camera sends)."""
    return (frames['image'] * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def evaluate_video(model, num=4, seed=424242, length=16, motion='slow', steps=None,
                   warm_start=False, strength=0.5, device=None, progress=None,
                   focal_correction=True, max_gap_s=DEFAULT_MAX_GAP_S,
                   cut_threshold=DEFAULT_CUT_THRESHOLD, sequences=None):
    """Metrics and flicker of a TaskDiffusion (or MLoRE) ``model`` on synthetic video.

    ``sequences``: frames from :func:`render_sequences` (None: rendered here).
    Returns ``(metrics, temporal)`` (see :meth:`VideoRun.score`).
    """
    from .synthetic_video import check_motion
    check_motion(motion)
    for name, value in (('num', num), ('length', length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive integer, got {value!r}')
    device = torch.device(device) if device is not None else next(model.parameters()).device
    run = VideoRun(model, steps, warm_start, strength, device, focal_correction, max_gap_s,
                   cut_threshold)
    if sequences is None:
        sequences = render_sequences(model.config, num, seed, length, motion, device)
    was_training = model.training
    model.eval()
    try:
        for number, frames in enumerate(sequences):
            images = frame_images(frames)
            for index in range(frames['image'].shape[0]):
                run.frame(frames, index, images[index])
            if progress:
                progress(number + 1, len(sequences))
    finally:
        model.train(was_training)
    return run.score()
