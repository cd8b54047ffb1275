"""What every renderer takes and returns. Imports nothing heavy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image

from genjobs.jobs.plan import ReferenceRole, RenderPlan

StepCallback = Callable[[int, int], None]
"""Called after each diffusion step with (step done, total steps). May raise JobCancelled."""


@dataclass(frozen=True)
class ModelSpec:
    """Which weights to load and how. Hashable: the pipeline cache key.

    ``source`` is a folder saved with ``save_pretrained``, a single-file ``.safetensors``
    checkpoint, or a hub id; ``None`` means the tiny embedded model of the family.
    """

    family: Literal["sdxl", "wan", "wan_vace"]
    source: str | None = None
    dtype: str = "auto"
    scheduler: str | None = None
    device: str = "auto"
    compile: bool = False


@dataclass
class RenderOutput:
    """Pixels and facts from one render.

    ``frames`` holds one uint8 array per asset: (H, W, 3) for an image, (F, H, W, 3) for a video.
    ``details`` holds batch-wide facts worth reporting (model, scheduler, ...).
    """

    frames: list[np.ndarray]
    details: dict[str, Any] = field(default_factory=dict)


class Renderer(Protocol):
    def render(
        self,
        plan: RenderPlan,
        references: dict[ReferenceRole, Image.Image],
        on_step: StepCallback | None = None,
    ) -> RenderOutput: ...
