"""Turn a validated :class:`Job` into a :class:`RenderPlan`: every effective value, decided once.

The plan is what the renderer executes and what the metadata reports, so requested and effective
values can never drift apart (predecessor defect 16).
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from genjobs.errors import ErrorCode, InvalidPayload, ReferenceModeUnsupported
from genjobs.jobs.output_size import mp4_worst_case_bytes, png_worst_case_bytes
from genjobs.jobs.payload import MAX_SEED, Job, clamp_num_images, parse_resolution
from genjobs.jobs.types import WAN_FPS, WAN_SAMPLE_SHIFT, Family, OutputKind
from genjobs.storage.limits import WORKSPACE_TEMP_FILE_SIZE_LIMIT

DEFAULT_RESOLUTION = "1024x1024"
DEFAULT_MODIFY_STRENGTH = 0.5
EXACT_COPY_MAX_STRENGTH = 0.05
EXACT_COPY_MIN_STRENGTH = 0.02
EXACT_COPY_DEFAULT_STEPS = 15

# Upstream Wan 2.1 default negative prompt; diffusers does not apply it on its own.
WAN_DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
    "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

logger = logging.getLogger(__name__)

Mode = Literal["txt2img", "img2img", "copy", "t2v", "frame"]
ReferenceRole = Literal["image", "first_frame", "last_frame"]


class ReferenceInput(BaseModel):
    """One reference image the render needs: where it comes from and what it is for."""

    model_config = ConfigDict(frozen=True)

    role: ReferenceRole
    url: str


class RenderPlan(BaseModel):
    """Everything a render needs, with effective values only. Small and serialisable."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    user_id: str
    job_type: str
    family: Family
    output: OutputKind
    mode: Mode
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    strength: float | None = None
    num_images: int
    num_images_requested: int | None = None
    base_seed: int
    seed_source: Literal["request", "random"]
    seeds: tuple[int, ...]
    num_frames: int | None = None
    fps: int | None = None
    sample_solver: str | None = None
    sample_shift: float | None = None
    reference_mode: str = "none"
    references: tuple[ReferenceInput, ...] = ()

    @property
    def denoising_steps(self) -> int:
        """Steps the scheduler really runs: ``int(steps * strength)`` for image-to-image."""
        if self.strength is None:
            return self.steps
        return int(self.steps * self.strength)

    @property
    def extension(self) -> str:
        return "mp4" if self.output == "video" else "png"


def draw_base_seed(job_id: str, count: int) -> int:
    """A base drawn uniformly from [1, MAX_SEED - count + 1] by hashing the job id.

    Unpredictable across jobs, yet the same for every attempt of one job, so a retried or
    resumed job renders (and reports) the same seeds and never duplicates different pixels.
    Every ``base + i`` stays a valid seed, and 0 (which the backend drops) is never drawn.
    """
    digest = hashlib.sha256(f"genjobs-seed:{job_id}".encode()).digest()
    return 1 + int.from_bytes(digest[:8], "big") % (MAX_SEED - count)


def _seeds(job: Job, count: int) -> tuple[int, Literal["request", "random"], tuple[int, ...]]:
    base: int
    source: Literal["request", "random"]
    if job.config.seed is not None:  # 0 is a valid seed
        base, source = job.config.seed, "request"
    else:
        base, source = draw_base_seed(str(job.id), count), "random"
    return base, source, tuple(base + i for i in range(count))


def plan_job(job: Job, max_object_bytes: int = WORKSPACE_TEMP_FILE_SIZE_LIMIT) -> RenderPlan:
    """Decide every effective value of a job.

    Args:
        job: The validated payload.
        max_object_bytes: Largest object the output bucket takes; a job whose output could
            be larger is refused (``OUTPUT_TOO_LARGE``).
    """
    spec = job.spec
    if job.compel_enabled:
        raise InvalidPayload(
            "Field 'compel_enabled' is invalid (True): prompt weighting is not supported; "
            "send the plain prompt",
            code=ErrorCode.COMPEL_UNSUPPORTED,
        )
    plan = _plan_sdxl(job) if spec.family == "sdxl" else _plan_wan(job)
    _check_output_size(job, plan, max_object_bytes)
    return plan


def _check_output_size(job: Job, plan: RenderPlan, max_object_bytes: int) -> None:
    """Refuse, naming the field, an output whose worst-case size the bucket could not take."""
    size = f"{plan.width}x{plan.height}"
    if plan.output == "video":
        assert plan.num_frames is not None
        worst = mp4_worst_case_bytes(plan.width, plan.height, plan.num_frames)
        output = f"MP4 of {plan.num_frames} frames of {size}"
    else:
        worst = png_worst_case_bytes(plan.width, plan.height)
        output = f"{size} PNG"
    # The job type fixes WAN's size and frames; SDXL's size is the requested resolution.
    if job.spec.fixed_size is None:
        field, value = "config.resolution", job.config.resolution or size
    else:
        field, value = "type", job.type
    if worst > max_object_bytes:
        raise InvalidPayload(
            f"Field '{field}' is invalid ({value!r}): its {output} could reach {worst} bytes, "
            f"more than the {max_object_bytes} bytes the storage bucket takes per object",
            code=ErrorCode.OUTPUT_TOO_LARGE,
        )


def _require_prompt(job: Job, what: str) -> None:
    """Contract section 2: only an exact copy may come without a prompt."""
    if not job.prompt.strip():
        raise InvalidPayload(
            f"Field 'prompt' is required for {what} jobs ({job.prompt!r}); only an exact copy "
            "runs without one"
        )


def _batch_size(job: Job) -> int:
    """The contract's batch size for the requested count, with a warning when they differ."""
    requested = job.config.num_images
    count = clamp_num_images(requested) if job.spec.family == "sdxl" else 1
    if count != requested:
        logger.warning(
            "Job %s asked for %d image(s); %s renders %d (batches of 1, 3 or 6 images, one "
            "video), and the job's metadata reports both counts.",
            job.id,
            requested,
            job.type,
            count,
        )
    return count


def _common(job: Job, count: int) -> dict[str, Any]:
    base, source, seeds = _seeds(job, count)
    return {
        "job_id": str(job.id),
        "user_id": str(job.user_id),
        "job_type": job.type,
        "family": job.spec.family,
        "output": job.spec.output,
        "num_images": count,
        "num_images_requested": job.config.num_images,
        "base_seed": base,
        "seed_source": source,
        "seeds": seeds,
    }


def _plan_sdxl(job: Job) -> RenderPlan:
    spec, config, meta = job.spec, job.config, job.metadata
    width, height = parse_resolution(config.resolution or DEFAULT_RESOLUTION)
    count = _batch_size(job)
    steps = config.num_inference_steps or spec.steps
    guidance = float(
        config.guidance_scale if config.guidance_scale is not None else spec.guidance_scale
    )
    reference_url = meta.reference_image_url
    wants_reference = meta.exact_copy_mode or config.pipeline == "img2img" or meta.reference_mode
    common = _common(job, count)

    if not wants_reference:
        _require_prompt(job, "text-to-image")
        return RenderPlan(
            **common,
            mode="txt2img",
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            width=width,
            height=height,
            steps=steps,
            guidance_scale=guidance,
        )
    if not reference_url:
        raise InvalidPayload(
            "Field 'metadata.reference_image_url' is required for image-to-image jobs (missing)"
        )
    references = (ReferenceInput(role="image", url=reference_url),)
    denoise = (
        meta.denoise_strength if meta.denoise_strength is not None else config.denoise_strength
    )

    if meta.exact_copy_mode or meta.reference_mode == "copy":
        strength = min(
            denoise if denoise is not None else EXACT_COPY_MAX_STRENGTH, EXACT_COPY_MAX_STRENGTH
        )
        strength = max(strength, EXACT_COPY_MIN_STRENGTH)
        requested = config.num_inference_steps or EXACT_COPY_DEFAULT_STEPS
        copy_steps = max(requested, math.ceil(1 / strength - 1e-9))
        return RenderPlan(
            **common,
            mode="copy",
            prompt="",
            negative_prompt=None,
            width=width,
            height=height,
            steps=copy_steps,
            guidance_scale=1.0,
            strength=strength,
            reference_mode="copy",
            references=references,
        )

    _require_prompt(job, "image-to-image")
    if denoise is not None:
        strength = float(denoise)
    elif meta.reference_strength is not None:
        strength = 1.0 - float(meta.reference_strength)
    else:
        strength = DEFAULT_MODIFY_STRENGTH
    if int(steps * strength) < 1:
        raise InvalidPayload(
            f"Field 'metadata.denoise_strength' is invalid ({strength}): with {steps} steps "
            "no denoising step would run (steps x strength must be at least 1)"
        )
    return RenderPlan(
        **common,
        mode="img2img",
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance,
        strength=strength,
        reference_mode="modify",
        references=references,
    )


def _video_references(job: Job) -> tuple[str, tuple[ReferenceInput, ...]]:
    config, meta = job.config, job.metadata
    mode = meta.video_reference_mode or "none"
    image = config.image or meta.reference_image_url
    first = config.first_frame or meta.start_reference_url
    last = config.last_frame or meta.end_reference_url
    wanted: dict[str, tuple[tuple[ReferenceRole, str | None, str], ...]] = {
        "none": (),
        "single": (("image", image, "config.image"),),
        "start": (("first_frame", first, "config.first_frame"),),
        "end": (("last_frame", last, "config.last_frame"),),
        "both": (
            ("first_frame", first, "config.first_frame"),
            ("last_frame", last, "config.last_frame"),
        ),
    }
    references = []
    for role, url, field in wanted[mode]:
        if not url:
            raise InvalidPayload(
                f"Field '{field}' is required for video_reference_mode {mode!r} (missing)"
            )
        references.append(ReferenceInput(role=role, url=url))
    return mode, tuple(references)


def _plan_wan(job: Job) -> RenderPlan:
    spec, config = job.spec, job.config
    assert spec.fixed_size is not None and spec.frames is not None
    width, height = spec.fixed_size
    mode, references = _video_references(job)
    if spec.output == "image" and references:
        raise ReferenceModeUnsupported(
            f"Field 'metadata.video_reference_mode' ({mode!r}) is not supported for "
            f"single-frame job type {job.type}"
        )
    _require_prompt(job, "video" if spec.output == "video" else "single-frame")
    steps = config.num_inference_steps or spec.steps
    guidance = float(
        config.guidance_scale if config.guidance_scale is not None else spec.guidance_scale
    )
    negative = job.negative_prompt if job.negative_prompt else WAN_DEFAULT_NEGATIVE_PROMPT
    return RenderPlan(
        **_common(job, _batch_size(job)),
        mode="t2v" if spec.output == "video" else "frame",
        prompt=job.prompt,
        negative_prompt=negative,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance,
        num_frames=spec.frames,
        fps=WAN_FPS,
        sample_solver=config.sample_solver or "dpm++",
        sample_shift=WAN_SAMPLE_SHIFT,
        reference_mode=mode,
        references=references,
    )
