"""Rendering figures, each beside its baseline, measured in one run (no assertions).

- pipeline loads over N jobs: the process-wide cache (one load) against reloading per job, as the
  predecessor's WAN worker did;
- a warm job through the renderer against the bare diffusers pipeline call it wraps;
- encoding 6 images 1024x1024: parallel PNG at zlib level 1 (plus thumbnails) against sequential
  ``optimize=True``.

Runs on the embedded tiny SDXL by default (CPU); on a GPU machine point it at the real
architecture with ``GENJOBS_SDXL_SOURCE`` and ``--size 1024``.

    python benchmarks/rendering.py [--jobs 10] [--size 512] [--steps 10]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genjobs.encode.images import encode_images
from genjobs.jobs.payload import parse_job
from genjobs.jobs.plan import RenderPlan, plan_job
from genjobs.render.cache import PipelineCache
from genjobs.render.registry import sdxl_spec
from genjobs.render.sdxl import SdxlRenderer, load_sdxl_pipelines
from genjobs.settings import Settings


def make_plan(size: int, steps: int, images: int) -> RenderPlan:
    return plan_job(
        parse_job(
            {
                "id": str(uuid.uuid4()),
                "user_id": str(uuid.uuid4()),
                "type": "sdxl_image_fast",
                "prompt": "a lighthouse at dusk",
                "config": {
                    "num_images": images,
                    "seed": 1,
                    "num_inference_steps": steps,
                    "resolution": f"{size}x{size}",
                },
            }
        )
    )


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def loads_over_jobs(settings: Settings, jobs: int, plan: RenderPlan) -> None:
    cache = PipelineCache()
    renderer = SdxlRenderer(sdxl_spec(settings), settings.model_dir, cache=cache)
    cached = timed(lambda: [renderer.render(plan, {}) for _ in range(jobs)])
    spec = sdxl_spec(settings)
    reload_seconds = timed(
        lambda: [load_sdxl_pipelines(spec, settings.model_dir) for _ in range(jobs)]
    )
    print(
        f"pipeline loads over {jobs} jobs: cached {cache.load_count()}, "
        f"reload-per-job baseline {jobs}; {jobs} jobs took {cached:.2f} s warm, and "
        f"the reloads alone would add {reload_seconds:.2f} s"
    )


def warm_job_vs_bare_call(settings: Settings, plan: RenderPlan, repeats: int = 3) -> None:
    renderer = SdxlRenderer(sdxl_spec(settings), settings.model_dir)
    pipes = renderer.pipelines()
    renderer.render(plan, {})  # warm up

    def bare() -> None:
        generators = [torch.Generator("cpu").manual_seed(s) for s in plan.seeds]
        pipes.text2img(
            prompt=plan.prompt,
            width=plan.width,
            height=plan.height,
            num_inference_steps=plan.steps,
            guidance_scale=plan.guidance_scale,
            num_images_per_prompt=len(plan.seeds),
            generator=generators,
            output_type="np",
        )

    ours = min(timed(lambda: renderer.render(plan, {})) for _ in range(repeats))
    base = min(timed(bare) for _ in range(repeats))
    print(
        f"warm job render: renderer {ours:.3f} s, bare pipeline call {base:.3f} s, "
        f"ratio {ours / base:.3f} (target close to 1.0)"
    )


def encoding(count: int = 6, size: int = 1024) -> None:
    rng = np.random.default_rng(0)
    # Smooth images compress like real renders; noise would flatter neither side.
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    frames = []
    for _ in range(count):
        base = rng.integers(0, 256, 3)
        image = np.stack(
            [
                (ramp[None, :] + base[0]) % 256 + 0 * ramp[:, None],
                (ramp[:, None] + base[1]) % 256 + 0 * ramp[None, :],
                np.full((size, size), base[2], np.float32),
            ],
            axis=-1,
        )
        frames.append((image + rng.normal(0, 4, image.shape)).clip(0, 255).astype(np.uint8))

    def predecessor() -> None:
        for frame in frames:
            image = Image.fromarray(frame)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
            thumb = image.copy()
            thumb.thumbnail((256, 256), Image.Resampling.LANCZOS)
            thumb.save(io.BytesIO(), format="WEBP", quality=85)

    ours = min(timed(lambda: encode_images(frames, compress_level=1)) for _ in range(2))
    base = min(timed(predecessor) for _ in range(2))
    print(
        f"encoding {count} images {size}x{size} with thumbnails: parallel level-1 PNG "
        f"{ours:.2f} s, sequential optimize=True {base:.2f} s, ratio {ours / base:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home))
        if settings.sdxl_source is None:
            settings = settings.model_copy(update={"model_cache": Path(home) / "models"})
        plan = make_plan(args.size, args.steps, 1)
        print(
            f"device {settings.device}, model {settings.sdxl_source or 'embedded tiny SDXL'}, "
            f"{args.size}x{args.size}, {args.steps} steps"
        )
        loads_over_jobs(settings, args.jobs, plan)
        warm_job_vs_bare_call(settings, make_plan(args.size, args.steps, 3))
        encoding()


if __name__ == "__main__":
    main()
