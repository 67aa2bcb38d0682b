"""Frame-by-frame warm start of one camera stream: settings, decision, engine call, report.

:class:`WarmStartSettings` are the four knobs (the node's ``diffusion.warm_*`` parameters,
``mtdp bag``'s ``--warm-*`` options), validated once where they enter.
:class:`WarmStartRunner` is a camera stream's ``engine_state``
(:class:`mtdp_ros.ros.stream.CameraStream`): for each frame it asks its
:class:`~mtdp_ros.runtime.warm_start.WarmStartState` warm or cold, calls
``engine.infer`` with the previous map (or cold, with ``return_state`` so that the next
frame can start warm), keeps the new map, and counts what it did for the diagnostics.
:func:`infer_warm_batch` does the same for several cameras' frames in one
``engine.infer_batch`` call: each camera's runner decides (:meth:`WarmStartRunner.decide`)
from its own map, time and scene, the engine runs every frame with its own start, each
runner keeps its own new map (:meth:`WarmStartRunner.commit`).

A cold frame under warm start is the cold start bit for bit (strength 1 ignores ``init``:
see ``mtdp_ros.models.sampler``), so switching warm start on changes the outputs only
through the warm frames. With warm start off the engine is called exactly as without this
module, and a map still held is dropped (the next warm frame starts cold).
"""

from dataclasses import dataclass
import threading
from typing import Optional

from .warm_start import (check_positive, Decision, DEFAULT_CUT_THRESHOLD, DEFAULT_MAX_GAP_S,
                         SIGNATURE_SIZE, WarmStartState)

# The node's and mtdp bag's default strength: the previous map shows through the noise at
# about 0.6 of its size (see README, "TaskDiffusion on video").
DEFAULT_STRENGTH = 0.01
OFF_REASON = 'warm start off'


@dataclass(frozen=True)
class WarmStartSettings:
    """Whether frames start warm, from how far (strength), and when to start cold again."""

    enabled: bool = False
    strength: float = DEFAULT_STRENGTH
    max_gap_s: float = DEFAULT_MAX_GAP_S
    cut_threshold: float = DEFAULT_CUT_THRESHOLD

    @classmethod
    def checked(cls, enabled=False, strength=DEFAULT_STRENGTH, max_gap_s=DEFAULT_MAX_GAP_S,
                cut_threshold=DEFAULT_CUT_THRESHOLD):
        """Validated settings; ValueError naming the first bad value."""
        # Imported here: the command line reads this module's defaults without PyTorch.
        from mtdp_ros.models.sampler import check_strength
        if not isinstance(enabled, bool):
            raise ValueError(f'warm start must be true or false, got {enabled!r}')
        return cls(enabled, check_strength(strength), check_positive('max_gap_s', max_gap_s),
                   check_positive('cut_threshold', cut_threshold))


def warm_start_problem(engine):
    """Why ``engine`` cannot start frames warm (a sentence), or None when it can."""
    if not engine.diffusion:
        return (f'warm start applies to TaskDiffusion models only; {engine.model_name} '
                f'({engine.config.family}) has no sampler')
    if not engine.supports_warm_start:
        return (f'the {engine.backend} engine serves cold starts only; warm start needs the '
                f'torch backend')
    return None


@dataclass(frozen=True)
class FrameStart:
    """How one frame starts (:meth:`WarmStartRunner.decide`), until its map is committed."""

    decision: Optional[Decision]     # None: the image is too small to decide (cold)
    generation: int                  # the runner's resets when it was decided
    strength: float                  # 1.0: cold

    @property
    def warm(self):
        """Whether the frame starts from the previous map."""
        return self.decision is not None and self.decision.warm

    @property
    def init(self):
        """The previous map to start from (None: cold)."""
        return self.decision.init if self.warm else None


class WarmStartRunner:
    """The warm-start state of one camera stream and what it did (see the module docstring).

    ``reset(reason)`` may come from another thread (a lifecycle transition) while a frame
    runs: that frame's new map is then dropped, so the next frame starts cold with
    ``reason``.
    """

    def __init__(self):
        self.state = WarmStartState()
        self._lock = threading.Lock()
        self._generation = 0
        self.warm_frames = 0
        self.cold_frames = 0
        self.last_start = None            # 'warm' or 'cold' (the last frame run)
        self.last_cold_reason = 'start'   # why the last cold frame was cold
        self.last_change = None           # the last image change measured

    def reset(self, reason='reset'):
        """Forget the previous map; the next frame starts cold because of ``reason``."""
        with self._lock:
            self._generation += 1
            self.state.reset(reason)

    def infer(self, engine, image, stamp_s, settings: WarmStartSettings, tasks=None,
              steps=None, seed=None, intrinsics=None, focal_correction=None):
        """``engine.infer``'s outputs for ``image`` taken at ``stamp_s``, warm when it may be.

        ``tasks``, ``steps``, ``seed``, ``intrinsics``, ``focal_correction``: as
        ``engine.infer``'s; a change of tasks, steps or image size (or of the engine's
        model) starts cold. Several cameras' frames in one engine call:
        :func:`infer_warm_batch`.
        """
        arguments = dict(tasks=tasks, steps=steps, seed=seed, intrinsics=intrinsics,
                         focal_correction=focal_correction)
        if not settings.enabled:
            self.switch_off()
            outputs = engine.infer(image, **arguments)
            self.count_off()
            return outputs
        start = self.decide(engine, image, stamp_s, settings, tasks, steps)
        outputs, new_map = engine.infer(image, init=start.init, strength=start.strength,
                                        return_state=True, **arguments)
        self.commit(start, new_map)
        return outputs

    def decide(self, engine, image, stamp_s, settings: WarmStartSettings, tasks=None,
               steps=None):
        """Warm or cold for ``image`` (warm start on): the :class:`FrameStart` to run.

        Run the frame with the start's ``init`` and ``strength`` and ``return_state=True``,
        then hand the returned map to :meth:`commit`.
        """
        self.state.configure(settings.max_gap_s, settings.cut_threshold)
        key = (engine.model_name, tuple(engine.select_tasks(tasks)),
               engine.resolve_steps(steps), tuple(image.shape[:2]))
        with self._lock:
            generation = self._generation
            if min(image.shape[:2]) < SIGNATURE_SIZE:
                decision = None     # too small for the scene-cut test: every frame cold
            else:
                decision = self.state.decide(image, stamp_s, key)
        warm = decision is not None and decision.warm
        return FrameStart(decision, generation, settings.strength if warm else 1.0)

    def commit(self, start, new_map):
        """Keep the map the engine returned for the frame of ``start``; count the frame.

        A :meth:`reset` since :meth:`decide` drops the map (the next frame starts cold).
        """
        with self._lock:
            if start.decision is not None and start.generation == self._generation:
                self.state.update(new_map, start.decision)
        decision = start.decision
        reason = (decision.reason if decision is not None else
                  f'image smaller than {SIGNATURE_SIZE} x {SIGNATURE_SIZE} pixels')
        self._count(start.warm, reason, None if decision is None else decision.change)

    def switch_off(self):
        """Warm start is off: forget a map still held (the next warm frame starts cold)."""
        if self.state.has_state:
            self.reset(OFF_REASON)

    def count_off(self):
        """Count a frame run cold because warm start is off."""
        self._count(False, OFF_REASON, None)

    def _count(self, warm, reason, change):
        if warm:
            self.warm_frames += 1
        else:
            self.cold_frames += 1
            self.last_cold_reason = reason
        self.last_start = 'warm' if warm else 'cold'
        self.last_change = change

    def report(self):
        """What /diagnostics shows of this stream's warm start (key -> text)."""
        return {
            'warm_start_last': self.last_start or 'none',
            'warm_start_last_cold_reason': self.last_cold_reason,
            'warm_start_warm_frames': str(self.warm_frames),
            'warm_start_cold_frames': str(self.cold_frames),
            'warm_start_image_change': ('nan' if self.last_change is None
                                        else f'{self.last_change:.3f}'),
        }


def infer_warm_batch(engine, runners, images, stamps, settings: WarmStartSettings,
                     tasks=None, steps=None, seeds=None, intrinsics=None,
                     focal_correction=None):
    """``engine.infer_batch``'s outputs for several cameras' frames, each warm when it may be.

    ``runners``: one :class:`WarmStartRunner` per image (each camera's own, so each decides
    from its own previous map, time gap and scene; None: a camera without warm-start state,
    run cold and not counted); ``stamps``: each image's time in seconds. The other
    arguments as ``engine.infer_batch``'s (one seed, one intrinsics per image). One engine
    call runs all frames (``Engine.infer_batch`` with ``inits``, ``strengths``,
    ``return_state``); then each runner keeps its new map and counts its frame, exactly as
    :meth:`WarmStartRunner.infer` does for one frame. ValueError from the engine (a bad
    frame) leaves every runner as it was.
    """
    images, runners, stamps = list(images), list(runners), list(stamps)
    if not len(images) == len(runners) == len(stamps):
        raise ValueError(f'infer_warm_batch needs one runner and one stamp per image '
                         f'({len(images)}), got {len(runners)} and {len(stamps)}')
    present = [runner for runner in runners if runner is not None]
    if len({id(runner) for runner in present}) != len(present):
        raise ValueError('infer_warm_batch needs a runner of its own for every image')
    arguments = dict(tasks=tasks, steps=steps, seeds=seeds, intrinsics=intrinsics,
                     focal_correction=focal_correction)
    if not settings.enabled:
        for runner in present:
            runner.switch_off()
        outputs = engine.infer_batch(images, **arguments)
        for runner in present:
            runner.count_off()
        return outputs
    starts = [None if runner is None else
              runner.decide(engine, image, stamp, settings, tasks, steps)
              for runner, image, stamp in zip(runners, images, stamps)]
    outputs, maps = engine.infer_batch(
        images, inits=[None if start is None else start.init for start in starts],
        strengths=[1.0 if start is None else start.strength for start in starts],
        return_state=True, **arguments)
    for runner, start, new_map in zip(runners, starts, maps):
        if runner is not None:
            runner.commit(start, new_map)
    return outputs
