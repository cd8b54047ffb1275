"""A renderer that costs next to nothing, for measuring everything around the render.

Select it with ``renderer_class="benchmarks.fast_renderer:FastRenderer"`` (or the environment
variable ``GENJOBS_RENDERER_CLASS``). It loads no model, calls the step callback once per step
without waiting, and returns a smooth gradient per seed (same seed, same pixels), so the encode,
upload, metadata and callback steps see realistic, compressible images.

``FAST_RENDER_SECONDS`` in the environment (a benchmark's, not a setting) makes each render
last that long, spread over its steps, as a GPU would: a stand-in for GPU time that costs no
CPU.
"""

from __future__ import annotations

import os
import time

import numpy as np
from PIL import Image

from genjobs.jobs.plan import ReferenceRole, RenderPlan
from genjobs.render.base import RenderOutput, StepCallback
from genjobs.settings import Settings

RENDERER_CLASS = "benchmarks.fast_renderer:FastRenderer"
RENDER_SECONDS_VARIABLE = "FAST_RENDER_SECONDS"


def gradient(width: int, height: int, seed: int) -> np.ndarray:
    """An (H, W, 3) uint8 image: two ramps offset by the seed, and a flat third channel."""
    rng = np.random.default_rng(seed)
    red, green, blue = (int(v) for v in rng.integers(0, 256, size=3))
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = (np.linspace(0, 255, width, dtype=np.float32)[None, :] + red) % 256
    image[..., 1] = (np.linspace(0, 255, height, dtype=np.float32)[:, None] + green) % 256
    image[..., 2] = blue
    return image


class FastRenderer:
    """Serves every family; called as ``FastRenderer(family, settings)`` by the registry."""

    def __init__(self, family: str, settings: Settings):
        self.family = family
        self.device = settings.device

    def render(
        self,
        plan: RenderPlan,
        references: dict[ReferenceRole, Image.Image],
        on_step: StepCallback | None = None,
    ) -> RenderOutput:
        total = plan.denoising_steps
        pause = float(os.environ.get(RENDER_SECONDS_VARIABLE, "0")) / max(total, 1)
        for step in range(total):
            if pause:
                time.sleep(pause)
            if on_step is not None:
                on_step(step + 1, total)
        frames = []
        for seed in plan.seeds:
            image = gradient(plan.width, plan.height, seed)
            frames.append(
                np.repeat(image[None], plan.num_frames or 1, axis=0)
                if plan.output == "video"
                else image
            )
        return RenderOutput(
            frames=frames,
            details={"model": "fast-renderer", "scheduler": None, "device": self.device},
        )
