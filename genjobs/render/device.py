"""What both renderers do around a pipeline call: free device memory after a failure, and
forward diffusion steps to the job's step callback."""

from __future__ import annotations

import gc
import traceback
from typing import Any

import torch

from genjobs.render.base import StepCallback


def free_device_memory(exc: BaseException) -> None:
    """Drop the tensors a failed call's frames still hold, then return cached device memory."""
    traceback.clear_frames(exc.__traceback__)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def step_callback(on_step: StepCallback) -> Any:
    """A diffusers ``callback_on_step_end`` that reports (steps done, total) to ``on_step``."""

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        on_step(step + 1, pipe.num_timesteps)
        return kwargs

    return callback
