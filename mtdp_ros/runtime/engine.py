"""What every engine shares: model resolution, argument checks, the infer contract.

An engine takes a camera image (numpy uint8 H x W x 3 RGB, any size) and returns the
metric outputs of the requested tasks at that size (see :mod:`.postprocess`).
"""

import logging
import os
import time
from collections import namedtuple, OrderedDict

import numpy as np
import torch

from mtdp_ros.models import ModelConfig, resolve_model
from mtdp_ros.models.sampler import check_init, check_strength

from .options import check_seed, check_steps, is_diffusion, MAX_STEPS
from .postprocess import (canonical_scale, check_focal_correction, check_intrinsics,
                          corrected_depth_factor, DEFAULT_FOCAL_CORRECTION,
                          focal_correction_factor)
from .preprocess import plan_letterbox

LOGGER = logging.getLogger('mtdp_ros.runtime')
# Explicit: once `launch` is imported in a process, every new logger starts non-propagating.
LOGGER.propagate = True
# Cached per-image-size state (letterbox plans, CUDA graphs) is bounded: a camera has one size.
CACHE_LIMIT = 4
# How a call starts the sampler when it asks for more than a plain cold start: from ``init``
# (the previous frame's state, None: noise) at time ``strength``; its state is computed.
SamplerStart = namedtuple('SamplerStart', 'init strength')


def warn(message):
    """Report a fallback (CPU instead of CUDA, random weights...) on the runtime's logger.

    A log record rather than a Python warning: a long-running node forwards the logger to
    its own log and sees every occurrence (Python warnings show once per code location).
    Without a configured handler, Python prints WARNING records to stderr.
    """
    LOGGER.warning(message)


def resolve_engine_model(model, checkpoint=None):
    """(ModelConfig, checkpoint path/mapping or None, display name) for a model spec.

    ``model``: a preset or default-model name, a ``.safetensors``/``.yaml``/``.json`` file
    (see ``mtdp_ros.models.resolve_model``), a config dict or a config object (ModelConfig,
    or the config class a family registered).
    ``checkpoint`` (a path or a state-dict mapping) overrides the spec's own weights.
    """
    if isinstance(model, dict) or not isinstance(model, (str, os.PathLike)):
        config = ModelConfig.from_dict(model)
        spec_checkpoint = None
        name = config.name or config.family
    else:
        config, spec_checkpoint = resolve_model(model)
        name = config.name or os.path.splitext(os.path.basename(str(model)))[0]
    if checkpoint is not None and isinstance(checkpoint, (str, os.PathLike)):
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    return config, (checkpoint if checkpoint is not None else spec_checkpoint), name


class Engine:
    """Base of the engines: the ``infer`` contract, argument checks and shared caches.

    Subclasses implement ``_infer(image, plan, tasks, steps, seed)`` returning numpy outputs
    and filling ``self.last_timing``; an engine with ``supports_warm_start`` also takes
    ``start`` (a :data:`SamplerStart`) and then returns ``(outputs, state)``.
    """

    backend = None
    supports_warm_start = False
    # Whether infer_batch runs its images in one network pass (else one pass per image).
    batches_in_one_pass = False

    def __init__(self, config: ModelConfig, model_name, random_weights, device, precision,
                 steps=None, seed=0):
        self.config = config
        self.model_name = model_name
        self.random_weights = bool(random_weights)
        self.device = device
        self.precision = precision
        # Whether the family samples in steps (the registry says; see options.is_diffusion).
        self.diffusion = is_diffusion(config)
        # Validated here, where the engine's default enters (None for other families).
        steps = check_steps(steps, config)
        self.default_steps = (steps or config.trained_steps) if self.diffusion else None
        self.seed = check_seed(seed)
        self.last_timing = {'preprocess_ms': 0.0, 'model_ms': 0.0, 'postprocess_ms': 0.0}
        self._plans = OrderedDict()
        # Depth factor of the last infer call (1.0 without intrinsics, see focal_factor).
        self.last_focal_factor = 1.0
        self.last_focal_factors = [1.0]
        # How infer makes depth metric for a camera's intrinsics (see infer).
        self.focal_correction = DEFAULT_FOCAL_CORRECTION
        self._warned_no_train_focal = False

    @property
    def tasks(self):
        """The model's tasks, in the model's order."""
        return tuple(self.config.tasks)

    def select_tasks(self, tasks):
        """Return the requested tasks (None: all) in the model's order; ValueError if unknown."""
        return self.config.select_tasks(tasks)

    def forward_arguments(self, x, tasks, steps, seed):
        """Validated ``(x, tasks, steps, seed)`` of a ``forward`` call (x as a CPU tensor)."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        expected = (1, 3, *self.config.image_size)
        if tuple(x.shape) != expected:
            raise ValueError(f'input must be {expected}, got {tuple(x.shape)}')
        return (x, self.select_tasks(tasks), self.resolve_steps(steps),
                self.seed if seed is None else seed)

    def resolve_steps(self, steps):
        """Step count of one call (None: the engine's default); None for MLoRE models."""
        if steps is None:
            return self.default_steps
        return check_steps(steps, self.config)

    # ------------------------------------------------------------------ step counts
    def runnable_steps(self, steps):
        """``(resolved count, None)`` when this engine can run ``steps``, else ``(None, why)``.

        The one check of a requested count: ``check_steps``, ``prepare_steps`` and
        ``wait_for_steps`` all ask it (an engine that cannot run some counts adds its
        reasons by overriding it).
        """
        try:
            return self.resolve_steps(steps), None
        except ValueError as exc:
            return None, str(exc)

    def check_steps(self, steps):
        """None when this engine can run ``steps`` (None: its default), else the reason."""
        return self.runnable_steps(steps)[1]

    def available_steps(self):
        """Step counts that run now without preparation (empty for MLoRE models)."""
        return range(1, MAX_STEPS + 1) if self.diffusion else ()

    def prepare_steps(self, steps):
        """Make ``steps`` ready to run; True when it is ready now (ValueError if impossible).

        An engine that must build something per step count (ONNX Runtime: an exported
        graph) does it in the background and returns False; until it is ready, calls asking
        for that count run the count that served before (see ``OrtEngine``).
        """
        _, reason = self.runnable_steps(steps)
        if reason:
            raise ValueError(reason)
        return True

    def steps_status(self, steps):
        """'ready' when ``steps`` runs now, else 'unavailable: <reason>' (see OrtEngine)."""
        reason = self.check_steps(steps)
        return f'unavailable: {reason}' if reason else 'ready'

    def running_steps(self, steps):
        """The step count an ``infer`` call asking for ``steps`` runs (None: no diffusion)."""
        return self.resolve_steps(steps) if self.diffusion else None

    def wait_for_steps(self, steps, timeout=None):
        """Block until ``steps`` is ready (or ``timeout`` s pass); True when it is ready."""
        return self.check_steps(steps) is None

    def plan(self, image_size, max_scale=None):
        """Return the (cached) letterbox plan for an image size (``max_scale``: see infer)."""
        key = (*(int(v) for v in image_size), max_scale)
        plan = self._plans.get(key)
        if plan is None:
            plan = plan_letterbox(key[:2], self.config.image_size, max_scale)
            self._plans[key] = plan
            while len(self._plans) > CACHE_LIMIT:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    def noise_shape(self):
        """Shape of the sampler's initial map for one image."""
        grid = self.config.grid_size
        return (1, self.config.noise_channels, grid[0], grid[1])

    def initial_noise(self, seed):
        """Draw the sampler's initial map for ``seed`` (the same on every backend and device)."""
        generator = torch.Generator().manual_seed(int(seed))
        return torch.randn(self.noise_shape(), generator=generator, dtype=torch.float32)

    def infer(self, image, tasks=None, steps=None, seed=None, intrinsics=None,
              focal_correction=None, init=None, strength=1.0, return_state=False):
        """Metric outputs of ``tasks`` (None: all) for one uint8 H x W x 3 RGB image.

        ``intrinsics``: the camera's (fx, fy, cx, cy) in pixels of ``image``; when given,
        depth is made metric for this camera, as ``focal_correction`` says (None: the
        engine's ``focal_correction``, :data:`DEFAULT_FOCAL_CORRECTION`): ``'hybrid'``
        rescales depth by the full factor for a wider camera and by its square root for a
        zoomed one (``postprocess.corrected_depth_factor``); ``'canonical'``
        letterboxes a zoomed camera's image to the training focal length (shrunk, padded;
        ``postprocess.canonical_scale``) and rescales what is left (:meth:`focal_factor`);
        ``'scale'`` only rescales depth. None intrinsics: depth as the network predicts it.

        Video (TaskDiffusion, torch backend): ``return_state=True`` returns ``(outputs,
        state)``, where ``state`` is the final clean cross-task map (a tensor on the
        engine's device, 1 x C_map x h/16 x w/16 of the model input); passing it as
        ``init`` of the next frame with ``strength`` s < 1 starts that frame's sampler at
        t = s from it (s = 1: the cold start, bit for bit). Whether a previous state still
        fits a frame is :class:`mtdp_ros.runtime.warm_start.WarmStartState`'s call.
        """
        from .preprocess import check_image
        image = check_image(image)
        tasks = self.select_tasks(tasks)
        steps = self.resolve_steps(steps)
        seed = self.seed if seed is None else check_seed(seed)
        max_scale, correction = None, None
        if intrinsics is not None:
            intrinsics = check_intrinsics(intrinsics)
            intrinsics, max_scale, correction = self.focal_plan_arguments(intrinsics,
                                                                          focal_correction)
        start = self.sampler_start(init, strength, return_state)
        plan = self.plan(image.shape[:2], max_scale)
        if start is None:
            outputs, state = self._infer(image, plan, tasks, steps, seed), None
        else:
            outputs, state = self._infer(image, plan, tasks, steps, seed, start=start)
        factor = 1.0
        if intrinsics is not None and 'depth' in outputs:
            factor = corrected_depth_factor(self.focal_factor(intrinsics, plan), correction)
            # A new array: the caller may hold (or the engine reuse) the unscaled one.
            outputs['depth'] = outputs['depth'] * np.float32(factor)
        self.last_focal_factor = factor
        self.last_focal_factors = [factor]
        return (outputs, state) if return_state else outputs

    def focal_plan_arguments(self, intrinsics, focal_correction=None):
        """(intrinsics for the depth factor or None, letterbox max_scale, the checked mode)."""
        correction = check_focal_correction(
            self.focal_correction if focal_correction is None else focal_correction)
        max_scale = None
        if correction == 'canonical':
            max_scale = canonical_scale(intrinsics, self.config.train_focal_px)
        elif correction == 'off':
            intrinsics = None
        return intrinsics, max_scale, correction

    @staticmethod
    def _plain_start(init, strength, return_state):
        """Whether a call's warm-start arguments ask for nothing but a plain cold start."""
        return (init is None and not isinstance(strength, bool) and strength == 1.0
                and not return_state)

    def _check_warm_start_support(self):
        """Raise ValueError unless this engine's model and backend can start warm."""
        if not self.diffusion:
            raise ValueError(f'warm start (init, strength, return_state) applies to '
                             f'TaskDiffusion models only; {self.config.family} has no sampler')
        if not self.supports_warm_start:
            raise ValueError(f'the {self.backend} engine serves cold starts only; warm start '
                             f'(init, strength, return_state) needs the torch backend')

    def sampler_start(self, init, strength, return_state):
        """None for a plain cold call, else the validated :data:`SamplerStart`."""
        if self._plain_start(init, strength, return_state):
            return None
        self._check_warm_start_support()
        strength = check_strength(strength)
        check_init(init, self.noise_shape(), strength)
        # Strength 1 is the cold start: the previous map is not used.
        return SamplerStart(init if strength < 1.0 else None, strength)

    def infer_batch(self, images, tasks=None, steps=None, seeds=None, intrinsics=None,
                    focal_correction=None, inits=None, strengths=None, return_state=False):
        """Metric outputs of several images (one per camera) from one batched network pass.

        ``images``: a sequence of uint8 H x W x 3 RGB images, each of its own size (each is
        letterboxed by its own plan). ``seeds``: one sampler seed per image (None, or a
        None entry: the engine's seed); every image draws its own initial noise, so an
        image's outputs equal ``infer(image, seed=its seed)`` whatever it is batched with.
        ``intrinsics``: one (fx, fy, cx, cy) or None per image (per-frame focal
        correction, as ``focal_correction`` says: see :meth:`infer`). Returns one
        ``{task: array}`` per image, in order; ``last_timing`` is the batch's
        (``model_ms``: its network passes) and ``last_focal_factors`` one depth factor
        per image. ValueError (naming the image's index) for a bad argument.

        Video (TaskDiffusion, torch backend), per image as :meth:`infer` takes them:
        ``inits`` (one previous state or None per image), ``strengths`` (one strength per
        image; None, or a None entry: 1.0, the cold start) and ``return_state``: then
        ``(outputs, states)``, one 1 x C_map x h x w state per image. Each image's outputs
        and state equal ``infer(image, seed, intrinsics, init, strength,
        return_state=True)`` of it alone. The sampler's schedule depends on the strength,
        so the images run in one network pass per distinct strength (cold and warm: two).
        """
        from .preprocess import check_image
        images = list(images)
        if not images:
            raise ValueError('infer_batch needs at least one image')
        count = len(images)
        checked = []
        for index, image in enumerate(images):
            try:
                checked.append(check_image(image))
            except ValueError as exc:
                raise ValueError(f'image {index}: {exc}') from None
        tasks = self.select_tasks(tasks)
        steps = self.resolve_steps(steps)
        seeds = self._per_image('seeds', seeds, count)
        seeds = [self.seed if seed is None else check_seed(seed) for seed in seeds]
        intrinsics = self._per_image('intrinsics', intrinsics, count)
        intrinsics = [None if k is None else check_intrinsics(k) for k in intrinsics]
        starts = self._batch_starts(inits, strengths, return_state, count)
        plans, corrections = [], []
        for index, (image, camera) in enumerate(zip(checked, intrinsics)):
            max_scale, correction = None, None
            if camera is not None:
                # As infer: the correction mode decides the letterbox and the depth factor.
                camera, max_scale, correction = self.focal_plan_arguments(camera,
                                                                          focal_correction)
                intrinsics[index] = camera
            plans.append(self.plan(image.shape[:2], max_scale))
            corrections.append(correction)
        states = None
        if count == 1 and starts is None:
            outputs = [self._infer(checked[0], plans[0], tasks, steps, seeds[0])]
        elif count == 1:
            result, state = self._infer(checked[0], plans[0], tasks, steps, seeds[0],
                                        start=starts[0])
            outputs, states = [result], [state]
        elif starts is None:
            outputs = self._infer_batch(checked, plans, tasks, steps, seeds)
        else:
            outputs, states = self._infer_batch(checked, plans, tasks, steps, seeds, starts)
        factors = []
        for result, plan, camera, correction in zip(outputs, plans, intrinsics, corrections):
            factor = 1.0
            if camera is not None and 'depth' in result:
                factor = corrected_depth_factor(self.focal_factor(camera, plan), correction)
                result['depth'] = result['depth'] * np.float32(factor)
            factors.append(factor)
        self.last_focal_factors = factors
        self.last_focal_factor = factors[-1]
        return (outputs, states) if return_state else outputs

    def _batch_starts(self, inits, strengths, return_state, count):
        """None for a plain cold batch, else one validated :data:`SamplerStart` per image.

        As :meth:`sampler_start` per image: an engine that cannot start warm refuses the
        warm arguments as ``infer`` does; a bad image's init or strength names its index.
        """
        inits = self._per_image('inits', inits, count)
        strengths = [1.0 if strength is None else strength
                     for strength in self._per_image('strengths', strengths, count)]
        if all(self._plain_start(init, strength, return_state)
               for init, strength in zip(inits, strengths)):
            return None
        self._check_warm_start_support()
        starts = []
        for index, (init, strength) in enumerate(zip(inits, strengths)):
            try:
                # Every image computes its state: the batch's images run as one call.
                starts.append(self.sampler_start(init, strength, True))
            except ValueError as exc:
                raise ValueError(f'image {index}: {exc}') from None
        return starts

    @staticmethod
    def _per_image(name, values, count):
        if values is None:
            return [None] * count
        values = list(values)
        if len(values) != count:
            raise ValueError(f'{name} must have one entry per image ({count}), '
                             f'got {len(values)}')
        return values

    def _infer_batch(self, images, plans, tasks, steps, seeds, starts=None):
        """Outputs of several images; the base runs them one by one (timings summed).

        With ``starts`` (one :data:`SamplerStart` per image): ``(outputs, states)``.
        """
        outputs, states, total = [], [], {}
        for index, (image, plan, seed) in enumerate(zip(images, plans, seeds)):
            if starts is None:
                outputs.append(self._infer(image, plan, tasks, steps, seed))
            else:
                result, state = self._infer(image, plan, tasks, steps, seed,
                                            start=starts[index])
                outputs.append(result)
                states.append(state)
            for stage, ms in self.last_timing.items():
                total[stage] = total.get(stage, 0.0) + ms
        self.last_timing = total
        return outputs if starts is None else (outputs, states)

    def focal_factor(self, intrinsics, plan):
        """Depth factor for a camera of ``intrinsics`` seen through letterbox ``plan``.

        ``(fx * s) / train_focal_px`` (s: the letterbox scale; the mean over x and y, see
        ``postprocess.focal_correction_factor``). 1.0, with one warning, for a model whose
        config does not state its training focal length.
        """
        factor = focal_correction_factor(intrinsics, self.config.train_focal_px, plan.scale)
        if factor is None:
            if not self._warned_no_train_focal:
                warn(f'{self.model_name}: the model config states no train_focal_px, so '
                     f'depth cannot be corrected for the camera; depth is uncorrected')
                self._warned_no_train_focal = True
            return 1.0
        return factor

    def _infer(self, image, plan, tasks, steps, seed, start=None):
        raise NotImplementedError

    def benchmark_network(self, iters, warmup=0, tasks=None, steps=None):
        """Latencies (ms) of the network alone on a model-size input, no pre/post-processing."""
        raise NotImplementedError

    def describe(self):
        """Describe what this engine runs (a dict for logs and bench output)."""
        return {'model': self.model_name, 'family': self.config.family,
                'backend': self.backend, 'device': self.device, 'precision': self.precision,
                'image_size': list(self.config.image_size), 'tasks': list(self.tasks),
                'steps': self.default_steps, 'random_weights': self.random_weights}

    def close(self):
        """Release device memory held by the engine (it cannot be used afterwards)."""

    def __repr__(self):
        info = ', '.join(f'{k}={v!r}' for k, v in self.describe().items())
        return f'{type(self).__name__}({info})'


class StageTimer:
    """Wall-clock stage timer for host-synchronous paths (the CPU)."""

    def __init__(self):
        self.marks = [time.perf_counter()]

    def mark(self):
        self.marks.append(time.perf_counter())

    def timing(self):
        ms = [(b - a) * 1000.0 for a, b in zip(self.marks, self.marks[1:])]
        return dict(zip(('preprocess_ms', 'model_ms', 'postprocess_ms'), ms))
