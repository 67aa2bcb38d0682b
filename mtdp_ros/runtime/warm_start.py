"""Per-camera warm-start bookkeeping for TaskDiffusion on video (pure Python, no ROS).

A TaskDiffusion engine can start a frame's denoising from the previous frame's clean
cross-task map (``engine.infer(image, init=state, strength=s, return_state=True)``, see
``mtdp_ros.models.sampler``). That is only right while the previous map still describes
the scene: :class:`WarmStartState` keeps, for one camera stream, the previous map, its
time stamp, a small signature of its image and the key of the run that made it (model,
tasks, steps, image size), and :meth:`WarmStartState.decide` says warm or cold, with the
reason, for the next frame:

* cold when warm start is off, when there is no previous map, after :meth:`reset`
  (lifecycle deactivate/cleanup, a user's request);
* cold when the key changed (another model, task set, step count or camera size);
* cold after a gap in time larger than ``max_gap_s`` or when time went backwards (a bag
  restarted);
* cold after a scene cut: the image signatures differ by more than ``cut_threshold``.

The signature is a 16 x 16 grey thumbnail (block means), normalised to zero mean and unit
variance so that exposure and lighting changes do not count as cuts; the change is the
mean absolute difference of two signatures (0 for the same picture, about 1.1 for two
unrelated ones). A camera that moves slowly changes it little, a cut a lot (measured on
the synthetic video: see README, "TaskDiffusion on video").

One instance per camera stream; the node and ``mtdp bag`` call::

    decision = state.decide(image, stamp_s, key, enabled=warm_start)
    outputs, new = engine.infer(image, ..., init=decision.init,
                                strength=strength if decision.warm else 1.0,
                                return_state=True)
    state.update(new, decision)
"""

from dataclasses import dataclass
import math
from typing import Any, Optional, Tuple

import numpy as np

SIGNATURE_SIZE = 16
DEFAULT_MAX_GAP_S = 0.5
DEFAULT_CUT_THRESHOLD = 0.5


def check_positive(name, value, allow_inf=True):
    """``value`` as a float > 0 (inf allowed: 'never'); ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise ValueError(f'{name} must be a positive number, got {value!r}')
    value = float(value)
    if not (value > 0) or (math.isinf(value) and not allow_inf):
        raise ValueError(f'{name} must be a positive number, got {value!r}')
    return value


def image_signature(image):
    """16 x 16 grey thumbnail of an H x W (x C) image, zero mean, unit variance (float32).

    Block means over a grid of equal blocks (the image is cropped to a multiple of 16 on
    each side, at most 15 pixels); a flat image gives zeros.
    """
    array = np.asarray(image)
    if array.ndim == 3:
        array = array.mean(axis=2, dtype=np.float32)
    if array.ndim != 2 or min(array.shape) < SIGNATURE_SIZE:
        raise ValueError(f'image signature needs an H x W (x C) image of at least '
                         f'{SIGNATURE_SIZE} x {SIGNATURE_SIZE} pixels, got {np.shape(image)}')
    rows, cols = (array.shape[0] // SIGNATURE_SIZE, array.shape[1] // SIGNATURE_SIZE)
    blocks = array[:rows * SIGNATURE_SIZE, :cols * SIGNATURE_SIZE].astype(np.float32)
    thumb = blocks.reshape(SIGNATURE_SIZE, rows, SIGNATURE_SIZE, cols).mean(axis=(1, 3))
    thumb -= thumb.mean()
    std = float(thumb.std())
    return thumb / std if std > 1e-6 else thumb


def image_change(signature, previous):
    """Mean absolute difference of two signatures (0: same picture; ~1.1: unrelated)."""
    return float(np.abs(signature - previous).mean())


@dataclass(frozen=True)
class Decision:
    """Warm or cold for one frame, why, and what :meth:`WarmStartState.update` needs."""

    warm: bool
    reason: str
    init: Any = None              # the previous state when warm (pass as ``init``)
    stamp: Optional[float] = None
    signature: Any = None
    key: Tuple = ()
    change: Optional[float] = None  # image change against the previous frame, if measured


class WarmStartState:
    """The warm-start state of one camera stream (see the module docstring)."""

    def __init__(self, max_gap_s=DEFAULT_MAX_GAP_S, cut_threshold=DEFAULT_CUT_THRESHOLD):
        self.max_gap_s = check_positive('max_gap_s', max_gap_s)
        self.cut_threshold = check_positive('cut_threshold', cut_threshold)
        self._clear('start')

    def _clear(self, reason):
        self.state = None
        self.stamp = None
        self.signature = None
        self.key = None
        self.pending_reset = reason

    @property
    def has_state(self):
        """True when a previous map is held."""
        return self.state is not None

    def reset(self, reason='reset'):
        """Forget the previous map; the next frame starts cold with ``reason``."""
        self._clear(str(reason))

    def configure(self, max_gap_s=None, cut_threshold=None):
        """Change the thresholds while running (None keeps a value); validated first."""
        gap = self.max_gap_s if max_gap_s is None else check_positive('max_gap_s', max_gap_s)
        cut = self.cut_threshold if cut_threshold is None else \
            check_positive('cut_threshold', cut_threshold)
        self.max_gap_s, self.cut_threshold = gap, cut

    def decide(self, image, stamp, key, enabled=True):
        """Warm or cold for the frame ``image`` taken at ``stamp`` (seconds) under ``key``.

        ``key``: anything hashable naming the run (model, tasks, steps, image size...); a
        change of it means cold. The returned :class:`Decision` goes to :meth:`update`.
        """
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise ValueError(f'stamp must be a finite time in seconds, got {stamp!r}')
        key = tuple(key) if isinstance(key, (list, tuple)) else (key,)
        signature = image_signature(image)

        def cold(reason, change=None):
            return Decision(False, reason, None, stamp, signature, key, change)

        if not enabled:
            return cold('warm start off')
        if self.state is None:
            return cold(f'no previous map ({self.pending_reset})')
        if key != self.key:
            changed = [f'{old!r} -> {new!r}' for old, new in zip(self.key, key) if old != new]
            if len(key) != len(self.key):
                changed = [f'{self.key!r} -> {key!r}']
            return cold('run changed: ' + ', '.join(changed))
        gap = stamp - self.stamp
        if gap < 0:
            return cold(f'time went backwards by {-gap:.3f} s')
        if gap > self.max_gap_s:
            return cold(f'time gap {gap:.3f} s > max_gap_s {self.max_gap_s:g} s')
        change = image_change(signature, self.signature)
        if change > self.cut_threshold:
            return cold(f'scene cut: image change {change:.3f} > cut_threshold '
                        f'{self.cut_threshold:g}', change)
        return Decision(True, 'warm', self.state, stamp, signature, key, change)

    def update(self, state, decision):
        """Keep ``state`` (the map the engine returned for the decided frame)."""
        if not isinstance(decision, Decision):
            raise ValueError(f'update needs the Decision returned by decide, got '
                             f'{type(decision).__name__}')
        if state is None:
            raise ValueError('update needs the state the engine returned (return_state=True)')
        self.state = state
        self.stamp = decision.stamp
        self.signature = decision.signature
        self.key = decision.key
        self.pending_reset = None
