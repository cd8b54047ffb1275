"""The process-wide pipeline cache: each model is loaded once per process and reused.

Keyed by :class:`ModelSpec` (hashable config), never by a pipeline or client object. Loads are
counted and logged so tests and benchmarks can assert "one load per worker".
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from genjobs.render.base import ModelSpec

logger = logging.getLogger(__name__)
T = TypeVar("T")


class PipelineCache:
    """A thread-safe map from ModelSpec to a loaded pipeline."""

    def __init__(self) -> None:
        self._items: dict[ModelSpec, Any] = {}
        self._lock = threading.Lock()
        self.loads: Counter[ModelSpec] = Counter()

    def get(self, spec: ModelSpec, loader: Callable[[ModelSpec], T]) -> T:
        with self._lock:
            if spec not in self._items:
                logger.info(
                    "Loading the %s pipeline from %s.",
                    spec.family,
                    spec.source or "the embedded model",
                )
                self._items[spec] = loader(spec)
                self.loads[spec] += 1
                logger.info(
                    "Loaded the %s pipeline (load number %d in this process).",
                    spec.family,
                    sum(self.loads.values()),
                )
            return self._items[spec]  # type: ignore[no-any-return]

    def load_count(self, family: str | None = None) -> int:
        return sum(n for spec, n in self.loads.items() if family in (None, spec.family))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


PIPELINES = PipelineCache()


def resolve_device(requested: str) -> str:
    """``auto`` picks CUDA when present, else the CPU."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(requested: str, device: str) -> Any:
    """``auto`` is float16 on CUDA and float32 on the CPU (CPU half precision is slow)."""
    import torch

    if requested == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, requested)
