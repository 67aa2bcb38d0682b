"""Counters, rates, latency percentiles, throttled warnings and per-frame statistics.

No ROS here: camera streams (:mod:`mtdp_ros.ros.stream`) keep their FrameStatistics
without rclpy; :mod:`mtdp_ros.ros.diagnostics` turns them into /diagnostics.

Thread-safe: the executor thread (frames arriving) and the inference thread (frames
published) update them while the diagnostics timer reads them.
"""

import os
import threading
import time
from collections import deque

import numpy as np


class RateMeter:
    """Events per second over a sliding window of the last ``window`` seconds."""

    def __init__(self, window=5.0, clock=time.monotonic):
        self.window = float(window)
        self._clock = clock
        self._times = deque()
        self._lock = threading.Lock()
        self.total = 0

    def tick(self):
        """Record one event now."""
        now = self._clock()
        with self._lock:
            self._times.append(now)
            self.total += 1
            self._trim(now)

    def _trim(self, now):
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()

    def rate(self):
        """Events per second in the window (0 with fewer than two events)."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            span = now - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0


class Samples:
    """The last ``size`` values of a quantity, with percentiles (bounded memory)."""

    def __init__(self, size=300):
        self._values = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, value):
        """Record one value."""
        with self._lock:
            self._values.append(float(value))

    def percentile(self, q):
        """Return the percentile ``q`` (0..100) of the samples, NaN when there are none."""
        with self._lock:
            if not self._values:
                return float('nan')
            return float(np.percentile(np.fromiter(self._values, float), q))

    def __len__(self):
        with self._lock:
            return len(self._values)


class Counters:
    """Named integer counters (dropped, rejected per kind, errors...)."""

    def __init__(self):
        self._counts = {}
        self._lock = threading.Lock()

    def add(self, name, amount=1):
        """Increase counter ``name`` by ``amount``."""
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + amount

    def get(self, name):
        """Current value of ``name`` (0 when never counted)."""
        with self._lock:
            return self._counts.get(name, 0)

    def snapshot(self):
        """A copy of every counter."""
        with self._lock:
            return dict(self._counts)


class WarningThrottle:
    """At most one message per key every ``period`` seconds; says how many were held back."""

    def __init__(self, period=5.0, clock=time.monotonic):
        self.period = float(period)
        self._clock = clock
        self._last = {}
        self._suppressed = {}
        self._lock = threading.Lock()

    def filter(self, key, message):
        """The message to log now (with a suppressed count), or None to stay quiet."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            held_back = self._suppressed.pop(key, 0)
        if held_back:
            return f'{message} ({held_back} similar message(s) suppressed)'
        return message


# Stages of a frame whose times the node keeps (reported in /diagnostics as <stage>_p50_ms):
# message -> RGB, the engine's letterbox + resizing back, and building and publishing the
# raw outputs, the colour images and the point cloud.
# node_own is their sum without the engine: the cost of the node itself.
STAGES = ('convert', 'engine_pre_post', 'publish_raw', 'publish_color', 'publish_points',
          'node_own')
# Milliseconds per nanosecond.
MS_PER_NS = 1e-6
# When this module was loaded: the program's start where /proc cannot say it.
MODULE_LOADED = time.monotonic()


def seconds_since_program_start():
    """Seconds since this process started (from /proc; else since this module loaded)."""
    try:
        with open('/proc/self/stat', encoding='ascii') as handle:
            # Field 22 (start time in clock ticks after boot) counts from after the
            # command name, which may hold spaces and parentheses.
            start_ticks = int(handle.read().rsplit(')', 1)[1].split()[19])
        with open('/proc/uptime', encoding='ascii') as handle:
            uptime = float(handle.read().split()[0])
        return uptime - start_ticks / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError):
        return time.monotonic() - MODULE_LOADED


class FrameStatistics:
    """Rates, latencies, per-stage times, counters and the time to the first output."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self.counters = Counters()
        self.input_rate = RateMeter(clock=clock)
        self.output_rate = RateMeter(clock=clock)
        self.latency_ms = Samples()
        self.processing_ms = Samples()
        self.model_ms = Samples()
        self.overhead_ms = Samples()
        self.stage_ms = {name: Samples() for name in STAGES}
        self.last_frame_time = None
        self.idle_since = clock()
        self.activated_at = None
        self.first_output_s = None

    def reset_samples(self):
        """Forget the latency and stage samples (counters and rates stay)."""
        self.latency_ms = Samples()
        self.processing_ms = Samples()
        self.model_ms = Samples()
        self.overhead_ms = Samples()
        self.stage_ms = {name: Samples() for name in STAGES}

    def activated(self):
        """Start the clocks of the watchdog and of the time to first output."""
        now = self._clock()
        self.activated_at = now
        self.idle_since = now
        self.last_frame_time = None
        self.first_output_s = None

    def frame_in(self):
        """Count one frame received."""
        self.last_frame_time = self._clock()
        self.input_rate.tick()

    def seconds_without_frames(self):
        """Seconds since the last frame (or since activation when none came)."""
        last = self.last_frame_time if self.last_frame_time is not None else self.idle_since
        return self._clock() - last

    def frame_out(self, latency_ms, processing_ms, model_ms):
        """Record one published frame; True when it is the first since activation."""
        self.latency_ms.add(latency_ms)
        self.processing_ms.add(processing_ms)
        self.model_ms.add(model_ms)
        self.overhead_ms.add(processing_ms - model_ms)
        self.output_rate.tick()
        if self.first_output_s is None and self.activated_at is not None:
            self.first_output_s = self._clock() - self.activated_at
            return True
        return False
