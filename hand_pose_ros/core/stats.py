"""
Running statistics for diagnostics and benchmarks: rates and latency percentiles.

Thread-safe: a node's worker thread records while its diagnostics timer reads.
"""

from collections import deque
import threading

import numpy as np


class RateMeter:
    """
    Events per second over a sliding window of event times.

    :param window_s: length of the window, seconds.
    """

    def __init__(self, window_s=5.0):
        self.window_s = float(window_s)
        self._times = deque()
        self._last = None
        self._lock = threading.Lock()

    def tick(self, now_s):
        """Record one event at ``now_s`` (any monotonic clock, seconds)."""
        with self._lock:
            self._times.append(now_s)
            self._last = now_s
            self._trim(now_s)

    def rate_hz(self, now_s):
        """Return the event rate over the window ending at ``now_s``."""
        with self._lock:
            self._trim(now_s)
            if len(self._times) < 2:
                return 0.0
            span = max(now_s - self._times[0], self._times[-1] - self._times[0])
            return (len(self._times) - 1) / span if span > 0 else 0.0

    def last(self):
        """Return the time of the latest event ever recorded (kept past the window), or None."""
        return self._last

    def silence_s(self, now_s, since_s):
        """Return the seconds since the latest event, or since ``since_s`` before any."""
        last = self.last()
        return now_s - (last if last is not None else since_s)

    def _trim(self, now_s):
        while self._times and self._times[0] < now_s - self.window_s:
            self._times.popleft()


class LatencyWindow:
    """
    Percentiles over the latest ``size`` samples.

    :param size: number of samples kept.
    """

    def __init__(self, size=300):
        self._values = deque(maxlen=int(size))
        self._lock = threading.Lock()

    def add(self, value):
        """Add one sample."""
        with self._lock:
            self._values.append(float(value))

    def percentile(self, q):
        """Return the q-th percentile, or NaN without samples."""
        with self._lock:
            values = list(self._values)
        return float(np.percentile(values, q)) if values else float('nan')

    def __len__(self):
        return len(self._values)
