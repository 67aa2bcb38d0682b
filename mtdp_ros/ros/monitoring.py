"""Counters, rates, latency percentiles and throttled warnings of the perception node.

Thread-safe: the executor thread (frames arriving) and the inference thread (frames
published) update them while the diagnostics timer reads them.
"""

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
