"""One render at a time on this process's GPU, and when the GPU worker may take its next job.

The render task holds :data:`GPU_LOCK` around the pipeline call, so at most one pipeline runs in
a process, whatever else runs beside it. The GPU worker (entrypoints/gpu_worker.py) asks
:data:`GPU` whether to take another job: when nothing it took is waiting for or using the GPU, or
when the one render it holds is on the GPU and expected to end within ``prefetch_seconds``. The
next job's set-up (parameters, state changes, references) then overlaps the end of the current
render and the GPU does not wait for it, while a job is never held back for long from another,
idle GPU worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

GPU_LOCK = threading.Lock()
"""Held around every pipeline call of this process."""


class GpuSchedule:
    """The renders this process has taken, and the progress of the one on the GPU."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims: set[Hashable] = set()
        self._active: Hashable | None = None
        self._started = 0.0
        self._done = 0
        self._total = 0

    def claim(self, key: Hashable) -> None:
        """A render was taken (it will use the GPU)."""
        with self._lock:
            self._claims.add(key)

    def release(self, key: Hashable) -> None:
        """The render is off the GPU for good (finished, failed or never started). Idempotent."""
        with self._lock:
            self._claims.discard(key)
            if self._active == key:
                self._active = None

    def pipeline_started(self, key: Hashable) -> None:
        with self._lock:
            self._active = key
            self._started = time.monotonic()
            self._done = 0
            self._total = 0

    def step(self, done: int, total: int) -> None:
        with self._lock:
            self._done, self._total = done, total

    def remaining_seconds(self) -> float | None:
        """Expected seconds until the pipeline on the GPU ends; ``None`` when unknown or idle."""
        with self._lock:
            if self._active is None or self._done <= 0 or self._total <= 0:
                return None
            per_step = (time.monotonic() - self._started) / self._done
            return max(self._total - self._done, 0) * per_step

    def may_take_next(self, prefetch_seconds: float) -> bool:
        """Whether the worker may take another render now (see the module docstring)."""
        with self._lock:
            claims = len(self._claims)
            active = self._active
        if claims == 0:
            return True
        if claims > 1 or active is None or prefetch_seconds <= 0:
            return False
        remaining = self.remaining_seconds()
        return remaining is not None and remaining <= prefetch_seconds


GPU = GpuSchedule()
"""This process's schedule."""
