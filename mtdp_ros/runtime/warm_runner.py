"""Frame-by-frame warm start of one camera stream: settings, decision, engine call, report.

:class:`WarmStartSettings` are the four knobs (the node's ``diffusion.warm_*`` parameters,
``mtdp bag``'s ``--warm-*`` options), validated once where they enter.
:class:`WarmStartRunner` is a camera stream's ``engine_state``
(:class:`mtdp_ros.ros.stream.CameraStream`): for each frame it asks its
:class:`~mtdp_ros.runtime.warm_start.WarmStartState` warm or cold, calls
``engine.infer`` with the previous map (or cold, with ``return_state`` so that the next
frame can start warm), keeps the new map, and counts what it did for the diagnostics.

A cold frame under warm start is the cold start bit for bit (strength 1 ignores ``init``:
see ``mtdp_ros.models.sampler``), so switching warm start on changes the outputs only
through the warm frames. With warm start off the engine is called exactly as without this
module, and a map still held is dropped (the next warm frame starts cold).
"""

from dataclasses import dataclass
import threading

from .warm_start import (check_positive, DEFAULT_CUT_THRESHOLD, DEFAULT_MAX_GAP_S,
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
              steps=None, seed=None, intrinsics=None):
        """``engine.infer``'s outputs for ``image`` taken at ``stamp_s``, warm when it may be.

        ``tasks``, ``steps``, ``seed``, ``intrinsics``: as ``engine.infer``'s; a change of
        tasks, steps or image size (or of the engine's model) starts cold.
        """
        if not settings.enabled:
            if self.state.has_state:
                self.reset(OFF_REASON)
            outputs = engine.infer(image, tasks=tasks, steps=steps, seed=seed,
                                   intrinsics=intrinsics)
            self._count(False, OFF_REASON, None)
            return outputs
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
        outputs, new_map = engine.infer(
            image, tasks=tasks, steps=steps, seed=seed, intrinsics=intrinsics,
            init=decision.init if warm else None,
            strength=settings.strength if warm else 1.0, return_state=True)
        with self._lock:
            if decision is not None and generation == self._generation:
                self.state.update(new_map, decision)
        reason = (decision.reason if decision is not None else
                  f'image smaller than {SIGNATURE_SIZE} x {SIGNATURE_SIZE} pixels')
        self._count(warm, reason, None if decision is None else decision.change)
        return outputs

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
