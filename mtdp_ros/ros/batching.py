"""Several cameras, one engine: which frames form a batch, and running one batch.

:class:`BatchScheduler` waits on the latest-frame slots of every camera stream at once and
takes the newest waiting frame of each camera, at most ``max_batch`` of them, starting
after the camera served last (round-robin: with more cameras than ``max_batch`` none
starves). A camera with no frame waiting is simply not in the batch, so a camera that
stops sending never holds the others up.

:func:`run_batch` runs the taken frames as one batch: each camera decodes its frame
(``CameraStream.prepare``) and computes its intrinsics; the engine runs the frames in one
``Engine.infer_batch`` call (each frame with its own letterbox, focal correction and, for
TaskDiffusion, its camera's own noise seed and, under warm start, its own sampler start,
warm or cold, decided by its camera's ``WarmStartRunner``: ``infer_warm_batch``); each
camera publishes its outputs. A frame one camera cannot use is rejected by that camera and
leaves the batch; should the engine refuse the batch, every frame is run alone so that
only the bad one is rejected.

:class:`BatchStatistics` is what /diagnostics reports about the engine: the batch-size
histogram and the model time per batch. Nothing here needs rclpy (``mtdp bag`` batches
the same way).
"""

import threading
import time
from collections import Counter

from mtdp_ros.ros.monitoring import Samples
from mtdp_ros.runtime.warm_runner import infer_warm_batch


class BatchScheduler:
    """The newest waiting frame of each stream, at most ``max_batch``, round-robin."""

    def __init__(self, streams, max_batch=8):
        self.streams = list(streams)
        self.max_batch = max(1, int(max_batch))
        self._condition = threading.Condition()
        self._pending = False
        self._closed = False
        self._next = 0
        for stream in self.streams:
            stream.slot.listener = self.notify

    def notify(self):
        """A frame was put into some stream's slot."""
        with self._condition:
            self._pending = True
            self._condition.notify()

    def take(self, timeout):
        """``[(stream, item)]`` of the frames waiting now; empty after ``timeout`` s or closed.

        Blocks until some stream has a frame. ``item`` is what the stream's slot held.
        """
        with self._condition:
            if not self._pending and not self._closed:
                self._condition.wait(timeout)
            if self._closed:
                return []
            self._pending = False
        count = len(self.streams)
        batch = []
        # Fixed before the loop: the loop moves _next past each camera it takes from.
        first = self._next
        for offset in range(count):
            if len(batch) == self.max_batch:
                break
            index = (first + offset) % count
            stream = self.streams[index]
            item = stream.slot.take(0)
            if item is not None:
                batch.append((stream, item))
                self._next = (index + 1) % count
        if any(stream.slot.waiting for stream in self.streams):
            # Beyond max_batch: the cameras left out come first next time.
            self.notify()
        return batch

    def close(self):
        """Wake the taker for good."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class BatchStatistics:
    """The engine's side of a multi-camera node: batch sizes and model time per batch."""

    def __init__(self):
        self._lock = threading.Lock()
        self.sizes = Counter()
        self.model_ms = Samples()
        self.engine_ms = Samples()
        # Seconds in the engine over every batch (``mtdp bag``'s summary).
        self.engine_seconds = 0.0

    def add(self, size, model_ms, engine_ms):
        """One batch of ``size`` frames ran (model and whole-engine milliseconds)."""
        with self._lock:
            self.sizes[int(size)] += 1
            self.engine_seconds += float(engine_ms) / 1000.0
        self.model_ms.add(float(model_ms))
        self.engine_ms.add(float(engine_ms))

    def histogram(self):
        """``'1:12,3:40'``: how many batches had each size."""
        with self._lock:
            return ','.join(f'{size}:{n}' for size, n in sorted(self.sizes.items()))

    def batches(self):
        """How many batches ran."""
        with self._lock:
            return sum(self.sizes.values())


def run_batch(engine, entries, on_error=None, statistics=None):
    """Run ``entries`` ``[(stream, FrameSettings, msg, received_ns)]`` as one batch.

    Every entry's settings must share tasks, steps and warm-start settings (its seed and
    output options are its camera's; under warm start each camera's own WarmStartRunner
    decides its frame's start). Returns ``[(stream, FrameResult)]`` of the frames
    published. ``on_error`` ``(stream, exc)``: an exception while one camera publishes (the
    others go on; default: raise). ``statistics``: a BatchStatistics the batch is recorded
    in.
    """
    frames = []
    for stream, settings, msg, received_ns in entries:
        frame = stream.prepare(msg, settings, received_ns)
        if frame is not None and stream.set_intrinsics(frame):
            frames.append((stream, settings, frame))
    if not frames:
        return []
    first = frames[0][1]
    arguments = dict(tasks=first.tasks, steps=first.steps,
                     seeds=[settings.seed for _, settings, _ in frames],
                     intrinsics=[frame.intrinsics for _, _, frame in frames],
                     focal_correction=frames[0][0].focal.mode)
    # Warm start: each camera's runner decides its frame's start from its own map, time
    # and scene; the engine runs warm and cold frames in the one call.
    runners = [stream.warm_runner(settings) for stream, settings, _ in frames]
    started = time.perf_counter()
    try:
        if any(runner is not None for runner in runners):
            outputs = infer_warm_batch(engine, runners, [frame.rgb for _, _, frame in frames],
                                       [frame.stamp_s for _, _, frame in frames], first.warm,
                                       **arguments)
        else:
            outputs = engine.infer_batch([frame.rgb for _, _, frame in frames], **arguments)
    except ValueError:
        # Something in one frame: alone, each is accepted or rejected on its own.
        return _one_by_one(engine, frames, on_error, statistics)
    engine_s = time.perf_counter() - started
    timing = dict(engine.last_timing)
    if statistics is not None:
        statistics.add(len(frames), timing.get('model_ms', 0.0), engine_s * 1000.0)
    results = []
    for (stream, settings, frame), result in zip(frames, outputs):
        published = _publish(stream, frame, result, settings, timing, engine_s, on_error)
        if published is not None:
            results.append((stream, published))
    return results


def _one_by_one(engine, frames, on_error, statistics):
    results = []
    for stream, settings, frame in frames:
        started = time.perf_counter()
        outputs = stream.infer(engine, frame, settings)
        if outputs is None:
            continue
        engine_s = time.perf_counter() - started
        timing = dict(engine.last_timing)
        if statistics is not None:
            statistics.add(1, timing.get('model_ms', 0.0), engine_s * 1000.0)
        published = _publish(stream, frame, outputs, settings, timing, engine_s, on_error)
        if published is not None:
            results.append((stream, published))
    return results


def _publish(stream, frame, outputs, settings, timing, engine_s, on_error):
    try:
        return stream.publish(frame, outputs, settings, timing, engine_s)
    except Exception as exc:  # noqa: B902 - one camera's failure is that camera's
        if on_error is None:
            raise
        on_error(stream, exc)
        return None


def serve_batch(engine, batch, settings, streams, gate, statistics, log):
    """The frames of ``batch`` ([(stream, item)]) through the engine; streams with a first output.

    Their outputs go out only while ``gate`` lets these frames publish: a transition during
    them drops the rest (counted as ``abandoned`` and said through ``log``).
    """
    entries = [(stream, settings.for_frames(stream.focal.rectified, streams.index(stream)),
                *item) for stream, item in batch]
    results = run_batch(engine, entries, on_error=lambda stream, exc: stream.frame_failed(exc),
                        statistics=statistics)
    if not gate.frame_allowed():
        # A transition came during the frames: the gate refused their outputs.
        for stream, _ in batch:
            stream.statistics.counters.add('abandoned')
        log(f'the outputs of {len(batch)} frame(s) in flight when the outputs stopped were '
            f'dropped')
        return []
    return [stream for stream, result in results if result.first]
