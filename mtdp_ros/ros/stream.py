"""One camera stream: a camera's frames in, that camera's output messages out.

A :class:`CameraStream` owns everything that belongs to one camera: the latest-frame slot,
its camera_info and the focal correction, the output builder (with its ray cache), where
its messages go (a :class:`Sink`), its statistics, input watchdog and warning throttle, a
slot for per-camera engine state, and the per-frame pipeline
``prepare`` (decode, intrinsics) -> ``infer`` (the engine) -> ``publish`` (output messages),
joined as :meth:`CameraStream.process`. The engine itself is not the stream's: it is shared,
passed in per call, so that one engine can serve several streams.

Both the perception node and ``mtdp bag`` run frames through here. Nothing in this module
needs rclpy: the node hands in a sink of ROS publishers and its logger; ``mtdp bag`` a sink
that writes into the output bag.
"""

import threading
import time
from dataclasses import dataclass, field
from typing import Optional, Tuple

from mtdp_ros.ros.camera import FocalCorrection, camera_info_problem
from mtdp_ros.ros.image_input import (DEFAULT_MAX_PIXELS, ImageRejected, compressed_msg_to_rgb,
                                      image_msg_to_rgb)
from mtdp_ros.ros.monitoring import MS_PER_NS, FrameStatistics, WarningThrottle
from mtdp_ros.ros.outputs import KINDS, OutputBuilder, OutputOptions
from mtdp_ros.runtime.warm_runner import WarmStartRunner, WarmStartSettings


def camera_info_size_problem(msg, max_pixels):
    """Why a camera_info's size is refused (over ``max_pixels``, input.max_pixels), or None."""
    pixels = int(msg.width) * int(msg.height)
    if pixels > max_pixels:
        return (f'it declares {msg.width}x{msg.height} = {pixels} pixels, more than '
                f'input.max_pixels ({max_pixels})')
    return None


class LatestFrame:
    """A one-slot buffer: ``put`` replaces what waits there; ``take`` blocks for a frame."""

    def __init__(self):
        self._condition = threading.Condition()
        self._item = None
        self._closed = False
        # Called (no argument) after every put: the node's batch scheduler of several
        # cameras waits on all slots at once through it.
        self.listener = None

    def put(self, item):
        """Store ``item``; True when it replaced (dropped) an unprocessed one."""
        with self._condition:
            dropped = self._item is not None
            self._item = item
            self._condition.notify()
        if self.listener is not None:
            self.listener()
        return dropped

    @property
    def waiting(self):
        """Whether an item waits."""
        with self._condition:
            return self._item is not None

    def take(self, timeout):
        """The waiting item (removing it), or None after ``timeout`` s or once closed."""
        with self._condition:
            if self._item is None and not self._closed:
                self._condition.wait(timeout)
            item, self._item = self._item, None
            return item

    def clear(self):
        """Drop what waits (a deactivated node serves no old frame later)."""
        with self._condition:
            self._item = None

    def close(self):
        """Wake the taker for good."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


@dataclass(frozen=True)
class FrameSettings:
    """What one frame is run with: the engine's arguments and how outputs are drawn."""

    tasks: Tuple[str, ...]
    steps: Optional[int] = None          # None: the model's trained step count
    seed: Optional[int] = None           # None: the engine's seed
    max_pixels: int = DEFAULT_MAX_PIXELS
    options: OutputOptions = OutputOptions()
    warm: WarmStartSettings = WarmStartSettings()   # TaskDiffusion on video (default off)


class Sink:
    """Where a stream's output messages go; ``topic`` is relative to the stream.

    The default takes everything and keeps nothing. The node's sink publishes through its
    ROS publishers (``wanted``: somebody subscribes); ``mtdp bag``'s writes into a bag.
    """

    def wanted(self, topic):
        """Whether to build a message on ``topic`` (a message nobody takes is not built)."""
        return True

    def publish(self, topic, msg):
        """Hand over one message."""


@dataclass
class Frame:
    """A decoded frame on its way through the stream."""

    msg: object                          # the input message (its header goes on the outputs)
    rgb: object                          # uint8 H x W x 3
    intrinsics: Optional[tuple]          # (fx, fy, cx, cy) for the focal correction, or None
    received_ns: int                     # arrival (latency origin when the stamp is unset)
    started: float                       # perf_counter() when processing began
    convert_s: float                     # seconds of decoding
    stamp_s: float = 0.0                 # capture time: the header stamp, else arrival


@dataclass
class FrameResult:
    """What :meth:`CameraStream.publish` did with one frame."""

    outputs: dict                        # task -> array, as the engine returned them
    published: int                       # messages handed to the sink
    engine_s: float                      # seconds in engine.infer
    first: bool = False                  # the first output since activation
    seconds: dict = field(default_factory=dict)   # kind -> seconds building + publishing


class _Quiet:
    """A logger that says nothing (``mtdp bag``: problems are raised, not logged)."""

    def info(self, text):
        """Say nothing."""

    def warning(self, text):
        """Say nothing."""


class CameraStream:
    """One camera's frames through a shared engine (see the module docstring).

    ``name``: '' for the node's single camera (today's topics); a camera's name prefixes
    its topics (``<name>/image``, ``<name>/depth``...). ``focal``: the camera's
    :class:`~mtdp_ros.ros.camera.FocalCorrection` (its ``rectified`` says K or P).
    ``compressed``: frames are CompressedImage. ``sink``: where outputs go. ``log``: has
    ``info`` and ``warning`` (the node's ROS logger); warnings are throttled per kind.
    ``on_problem(kind, text)``: a wanted output that cannot be built (default: warn);
    ``on_reject(kind, exc)``: a frame that cannot be used, after it was counted (default:
    warn; ``mtdp bag`` raises). ``now_ns``: the clock of latencies (the node's ROS clock).
    """

    def __init__(self, name='', *, focal=None, compressed=False, sink=None, log=None,
                 input_topic='', info_topic='', on_problem=None, on_reject=None,
                 now_ns=time.time_ns):
        self.name = name
        self.focal = focal or FocalCorrection(False, False, info_topic, lambda text: None)
        self.compressed = bool(compressed)
        self.sink = sink or Sink()
        self.input_topic = input_topic
        self.info_topic = info_topic
        self._log = log or _Quiet()
        self._throttle = WarningThrottle(period=5.0)
        self._on_problem = on_problem or self.warn
        self._on_reject = on_reject
        self._now_ns = now_ns
        self.camera_info = None
        self.frame_pixels = 0           # of the last decoded frame (LargeFrameMemory)
        # input.max_pixels: a camera_info declaring more is refused (configure warms the
        # engine up at the camera_info's size); why the last one was refused, or None.
        self.max_pixels = DEFAULT_MAX_PIXELS
        self.camera_info_problem = None
        self.slot = LatestFrame()
        self.statistics = FrameStatistics()
        # The node's InputWatchdog of this camera (it asks the ROS graph who publishes).
        self.watchdog = None
        # The node's SequenceGaps of the image subscription (frames lost before the callback).
        self.sequence_gaps = None
        self.outputs = OutputBuilder()
        # Per-camera engine state carried from frame to frame (the WarmStartRunner of a
        # warm start, made by the first warm frame, holding the previous diffusion map);
        # forgotten by reset().
        self.engine_state = None

    def topic(self, relative):
        """The node-relative name of this stream's topic ``relative`` (e.g. 'image')."""
        return f'{self.name}/{relative}' if self.name else relative

    @property
    def image_topic(self):
        """The relative input topic: ``image`` or ``image/compressed``."""
        return self.topic('image/compressed' if self.compressed else 'image')

    # ------------------------------------------------------------------ inputs
    def on_image(self, msg, received_ns):
        """A frame arrived: into the slot (an older one waiting there is dropped, counted)."""
        self.statistics.frame_in()
        if self.slot.put((msg, received_ns)):
            self.statistics.counters.add('dropped')

    def on_camera_info(self, msg):
        """Use ``msg`` from now on; the problem (a sentence) when it is ignored, else None."""
        problem = (camera_info_size_problem(msg, self.max_pixels) or
                   camera_info_problem(msg, self.focal.rectified))
        self.camera_info_problem = problem       # for /diagnostics: why outputs stopped
        if problem:        # e.g. NaN in D: the cloud would be all NaN
            self.warn('camera_info', f'ignoring camera_info from {self.info_topic}: {problem}')
            return problem
        previous = self.camera_info
        self.camera_info = msg
        if previous is None or (previous.width, previous.height) != (msg.width, msg.height):
            camera = f'camera {self.name}: ' if self.name else ''
            self._log.info(f'{camera}camera_info: {msg.width}x{msg.height} '
                           f'(frame {msg.header.frame_id!r})')
        return None

    def activated(self):
        """Start the clocks of the statistics and the watchdog (lifecycle activate)."""
        self.statistics.activated()
        if self.watchdog is not None:
            self.watchdog.reset()

    def frame_failed(self, exc):
        """Count and report (throttled) a frame the engine or the publishing failed on."""
        self.statistics.counters.add('errors')
        self.warn('error', f'frame from {self.input_topic} failed: {type(exc).__name__}: {exc}')

    def reset(self, reason='reset'):
        """Forget the waiting frame and the per-camera engine state (deactivate, cleanup).

        ``reason``: why, as the engine state reports it (the next frame starts cold).
        """
        self.slot.clear()
        # A state that keeps what it did (the warm start's counts, shown in /diagnostics)
        # forgets its map itself, and learns why; any other state is dropped.
        if hasattr(self.engine_state, 'reset'):
            self.engine_state.reset(reason)
        else:
            self.engine_state = None

    def release_outputs(self):
        """A fresh output builder (its ray cache belongs to the released configuration)."""
        self.outputs = OutputBuilder()

    def warn(self, kind, text):
        """Log a warning, at most one per kind every 5 s (with a suppressed count)."""
        text = self._throttle.filter(kind, text)
        if text is not None:
            self._log.warning(text)

    # ------------------------------------------------------------------ the pipeline
    def process(self, engine, msg, settings: FrameSettings, received_ns=0):
        """Decode, infer and publish one frame; its FrameResult, or None when rejected."""
        frame = self.prepare(msg, settings, received_ns)
        if frame is None:
            return None
        engine_started = time.perf_counter()
        outputs = self.infer(engine, frame, settings)
        if outputs is None:
            return None
        engine_s = time.perf_counter() - engine_started
        return self.publish(frame, outputs, settings, engine.last_timing, engine_s)

    def prepare(self, msg, settings: FrameSettings, received_ns=0):
        """The decoded Frame, or None when the image is rejected (counted, reported).

        ``msg``: an image message, or an item with ``deserialize()`` returning one (the
        node's subscriptions hand over serialized messages, deserialized here).
        """
        started = time.perf_counter()
        if hasattr(msg, 'deserialize'):
            try:
                msg = msg.deserialize()
            except Exception as exc:  # noqa: B902 - whatever the bytes hold, a rejection
                self.reject('message', exc)
                return None
        try:
            if self.compressed:
                rgb = compressed_msg_to_rgb(msg, settings.max_pixels)
            else:
                rgb = image_msg_to_rgb(msg, settings.max_pixels)
        except ImageRejected as exc:
            self.reject(exc.kind, exc)
            return None
        self.frame_pixels = rgb.shape[0] * rgb.shape[1]
        stamp = msg.header.stamp
        stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
        return Frame(msg, rgb, None, received_ns, started, time.perf_counter() - started,
                     (stamp_ns if stamp_ns > 0 else received_ns) * 1e-9)

    def infer(self, engine, frame: Frame, settings: FrameSettings):
        """The engine's outputs for ``frame``, or None when it refuses it (counted, reported).

        The depth of the outputs is rescaled to this camera (its focal length, from
        camera_info) when the focal correction is on. With ``settings.warm`` enabled (or a
        warm start to switch off) the stream's WarmStartRunner decides warm or cold.
        """
        if not self.set_intrinsics(frame):
            return None
        try:
            runner = self.warm_runner(settings)
            if runner is not None:
                return runner.infer(
                    engine, frame.rgb, frame.stamp_s, settings.warm, tasks=settings.tasks,
                    steps=settings.steps, seed=settings.seed, intrinsics=frame.intrinsics,
                    focal_correction=self.focal.mode)
            return engine.infer(frame.rgb, tasks=settings.tasks, steps=settings.steps,
                                seed=settings.seed, intrinsics=frame.intrinsics,
                                focal_correction=self.focal.mode)
        except ValueError as exc:
            self.reject('engine', exc)
            return None

    def warm_runner(self, settings: FrameSettings):
        """This camera's WarmStartRunner (made by its first warm frame), or None.

        Once made it serves every frame, also with warm start off (it drops its map and
        counts the frame cold, ``warm start off``).
        """
        if settings.warm.enabled and self.engine_state is None:
            self.engine_state = WarmStartRunner()
        state = self.engine_state
        return state if isinstance(state, WarmStartRunner) else None

    def set_intrinsics(self, frame: Frame):
        """Fill ``frame.intrinsics`` from camera_info; False when refused (counted, said)."""
        try:
            frame.intrinsics = self.focal.intrinsics(self.camera_info, frame.rgb.shape[1],
                                                     frame.rgb.shape[0])
        except ValueError as exc:
            self.reject('engine', exc)
            return False
        return True

    def reject(self, kind, exc):
        """Count a frame that cannot be used, then tell ``on_reject`` (or warn)."""
        counters = self.statistics.counters
        counters.add('rejected')
        counters.add('rejected_' + kind)
        if self._on_reject is not None:
            self._on_reject(kind, exc)
            return
        self.warn('rejected_' + kind, f'rejected a frame from {self.input_topic}: {exc}')

    def publish(self, frame: Frame, outputs, settings: FrameSettings, timing=None,
                engine_s=0.0):
        """Build and hand over the frame's output messages; record the frame's timing.

        ``timing``: the engine's ``last_timing`` for this frame (ms per stage).
        """
        clock = time.perf_counter
        seconds = dict.fromkeys(KINDS, 0.0)
        sink = self.sink
        published = 0
        mark = clock()
        # Each message is built when the loop asks for it, so its time is its kind's.
        for kind, topic, out in self.outputs.messages(
                outputs, frame.msg.header, frame.rgb, self.camera_info, settings.options,
                wanted=sink.wanted, on_problem=self._on_problem):
            sink.publish(topic, out)
            published += 1
            now = clock()
            seconds[kind] += now - mark
            mark = now
        timing = timing or {}
        stage_ms = self.statistics.stage_ms
        stage_ms['convert'].add(frame.convert_s * 1000.0)
        stage_ms['engine_pre_post'].add(float(timing.get('preprocess_ms', 0.0)) +
                                        float(timing.get('postprocess_ms', 0.0)))
        for kind in KINDS:
            stage_ms['publish_' + kind].add(seconds[kind] * 1000.0)
        stage_ms['node_own'].add((frame.convert_s + sum(seconds.values())) * 1000.0)
        first = self._record(frame, float(timing.get('model_ms', 0.0)))
        return FrameResult(outputs, published, engine_s, first, seconds)

    def _record(self, frame, model_ms):
        stamp = frame.msg.header.stamp
        stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
        # A camera that leaves the stamp unset gets latency from reception instead.
        origin_ns = stamp_ns if stamp_ns > 0 else frame.received_ns
        processing_ms = (time.perf_counter() - frame.started) * 1000.0
        return self.statistics.frame_out((self._now_ns() - origin_ns) * MS_PER_NS,
                                         processing_ms, model_ms)
