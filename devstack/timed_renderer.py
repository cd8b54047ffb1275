"""A renderer for load tests: GPU time is simulated by sleeping, so it does not contend for the CPU.

Select it with ``GENJOBS_RENDERER_CLASS=devstack.timed_renderer:TimedRenderer``. Its "model" is
loaded through the real process-wide pipeline cache (so load counts are real), each diffusion step
sleeps and calls the step callback (so cancellation and progress work as with a real pipeline),
and the pixels are a smooth gradient derived from the seed (same seed, same bytes).

Knobs (environment, read when a renderer is built):
``GENJOBS_TIMED_STEP_SECONDS`` (default 0.05) and ``GENJOBS_TIMED_LOAD_SECONDS`` (default 1.0).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from PIL import Image

from genjobs.jobs.plan import ReferenceRole, RenderPlan
from genjobs.render.base import ModelSpec, RenderOutput, StepCallback
from genjobs.render.cache import PIPELINES, PipelineCache
from genjobs.settings import Settings


class TimedRenderer:
    """Sleeps ``steps x step_seconds`` per render; loads once per process per family."""

    def __init__(self, family: str, settings: Settings, cache: PipelineCache = PIPELINES):
        self.spec = ModelSpec(
            family="wan" if family == "wan" else "sdxl",
            source="timed-renderer",
            device=settings.device,
        )
        self.cache = cache
        self.step_seconds = float(os.environ.get("GENJOBS_TIMED_STEP_SECONDS", "0.05"))
        self.load_seconds = float(os.environ.get("GENJOBS_TIMED_LOAD_SECONDS", "1.0"))

    def _load(self, spec: ModelSpec) -> dict[str, Any]:
        time.sleep(self.load_seconds)
        return {"spec": spec, "loaded_at": time.time(), "pid": os.getpid()}

    def pipelines(self) -> dict[str, Any]:
        return self.cache.get(self.spec, self._load)

    def render(
        self,
        plan: RenderPlan,
        references: dict[ReferenceRole, Image.Image],
        on_step: StepCallback | None = None,
    ) -> RenderOutput:
        self.pipelines()
        total = plan.denoising_steps
        for step in range(total):
            time.sleep(self.step_seconds)
            if on_step is not None:
                on_step(step + 1, total)
        frames = [self._frames(plan, seed) for seed in plan.seeds]
        return RenderOutput(
            frames=frames,
            details={"model": "timed-renderer", "scheduler": None, "device": self.spec.device},
        )

    @staticmethod
    def _frames(plan: RenderPlan, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        red, green, blue = (int(v) for v in rng.integers(0, 256, size=3))
        ramp = np.linspace(0, 255, plan.width, dtype=np.float32)[None, :]
        column = np.linspace(0, 255, plan.height, dtype=np.float32)[:, None]
        image = np.empty((plan.height, plan.width, 3), dtype=np.uint8)
        image[..., 0] = ((ramp + red) % 256).astype(np.uint8)
        image[..., 1] = ((column + green) % 256).astype(np.uint8)
        image[..., 2] = blue
        if plan.output == "video":
            count = plan.num_frames or 1
            return np.repeat(image[None], count, axis=0)
        return image
