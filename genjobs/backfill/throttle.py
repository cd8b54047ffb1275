"""A thread-safe rate limit: at most ``rate`` starts per second, spaced evenly."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """Spaces calls to :meth:`wait` at least ``1 / rate`` seconds apart (None: no limit)."""

    def __init__(self, rate: float | None):
        if rate is not None and rate <= 0:
            raise ValueError(f"max_objects_per_second must be positive, got {rate}")
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until the next start is allowed."""
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            time.sleep(delay)
