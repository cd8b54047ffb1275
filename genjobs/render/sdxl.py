"""The SDXL renderer: text-to-image, image-to-image (modify) and exact copy with diffusers.

The pipeline is loaded once per :class:`~genjobs.render.base.ModelSpec` through the process-wide
cache; the image-to-image pipeline is built from the loaded components, never loaded twice. A
whole batch runs in one pipeline call with one seeded generator per image.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps

from genjobs.errors import InvalidPayload, JobError, ModelLoadError, OutOfMemory
from genjobs.jobs.plan import ReferenceRole, RenderPlan
from genjobs.render.base import ModelSpec, RenderOutput, StepCallback
from genjobs.render.cache import PIPELINES, PipelineCache, resolve_device, resolve_dtype
from genjobs.render.device import free_device_memory, step_callback
from genjobs.render.tiny_sdxl import ensure_tiny_sdxl
from genjobs.render.tokenizers import CLIP_BYTE_VOCAB_SIZE, check_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_SCHEDULER = "EulerDiscreteScheduler"
EMBEDDED_SOURCE = "embedded:tiny-sdxl"
TINY_FOLDER_NAME = "tiny-sdxl"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
CLIP_MIN_TOKENS = CLIP_BYTE_VOCAB_SIZE
"""Every byte-level CLIP vocabulary has at least the bytes, their word-end forms and 2 specials."""
RESIZE_POLICY = "center_crop"

SourceKind = Literal["embedded", "single_file", "folder", "hub"]


def source_kind(source: str | None) -> SourceKind:
    """How a model source is loaded: embedded tiny model, single file, saved folder or hub id."""
    if source is None:
        return "embedded"
    if source.lower().endswith(SINGLE_FILE_SUFFIXES):
        return "single_file"
    if Path(source).is_dir():
        return "folder"
    return "hub"


def fit_reference(image: Image.Image, width: int, height: int) -> Image.Image:
    """Fit a reference image to exactly ``width`` x ``height``: centre crop, then LANCZOS.

    The crop takes the largest centred region with the target aspect ratio, so nothing is
    stretched and no border is added; the region is then resized (up or down) to the target.
    """
    image = ImageOps.exif_transpose(image).convert("RGB")
    source_width, source_height = image.size
    target_aspect = width / height
    if source_width / source_height > target_aspect:
        crop_width = source_height * target_aspect
        left = (source_width - crop_width) / 2
        box = (left, 0.0, left + crop_width, float(source_height))
    else:
        crop_height = source_width / target_aspect
        top = (source_height - crop_height) / 2
        box = (0.0, top, float(source_width), top + crop_height)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)


def to_uint8(images: np.ndarray) -> list[np.ndarray]:
    """Split a float batch in [0, 1] of shape (N, H, W, 3) into uint8 (H, W, 3) arrays."""
    pixels = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return [np.ascontiguousarray(frame) for frame in pixels]


@dataclass
class SdxlPipelines:
    """One cache entry: the loaded pipeline, the image-to-image view of it and their facts."""

    text2img: Any
    img2img: Any
    source: str
    scheduler: str
    dtype: str
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def _from_source(spec: ModelSpec, model_dir: Path, dtype: Any) -> tuple[Any, str]:
    from diffusers import StableDiffusionXLPipeline

    kwargs: dict[str, Any] = {"dtype": dtype, "add_watermarker": False}
    kind = source_kind(spec.source)
    if kind == "single_file":
        logger.info("Loading SDXL from the single-file checkpoint %s.", spec.source)
        return StableDiffusionXLPipeline.from_single_file(spec.source, **kwargs), str(spec.source)
    if kind == "embedded":
        folder = ensure_tiny_sdxl(model_dir / TINY_FOLDER_NAME)
        logger.info("Loading the embedded tiny SDXL model from %s.", folder)
        return StableDiffusionXLPipeline.from_pretrained(folder, **kwargs), EMBEDDED_SOURCE
    logger.info(
        "Loading SDXL from the %s %s.", "folder" if kind == "folder" else "hub id", spec.source
    )
    return StableDiffusionXLPipeline.from_pretrained(spec.source, **kwargs), str(spec.source)


def _check_text_stack(pipe: Any) -> None:
    pairs = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    for tokenizer_name, encoder_name in pairs:
        tokenizer = getattr(pipe, tokenizer_name)
        encoder = getattr(pipe, encoder_name)
        if tokenizer is None or encoder is None:
            raise ModelLoadError(f"The SDXL model has no {tokenizer_name} or {encoder_name}")
        check_tokenizer(tokenizer, tokenizer_name, CLIP_MIN_TOKENS)
        positions = encoder.config.max_position_embeddings
        if not 0 < tokenizer.model_max_length <= positions:
            raise ModelLoadError(
                f"Tokenizer {tokenizer_name!r} pads prompts to {tokenizer.model_max_length} "
                f"tokens but {encoder_name} has {positions} positions"
            )


def _set_scheduler(pipe: Any, name: str) -> None:
    import diffusers
    from diffusers import SchedulerMixin

    scheduler_class = getattr(diffusers, name, None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        raise ModelLoadError(f"Scheduler {name!r} is not a diffusers scheduler")
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)


def load_sdxl_pipelines(spec: ModelSpec, model_dir: Path) -> SdxlPipelines:
    """Load the text-to-image pipeline of ``spec`` and derive the image-to-image one from it.

    Raises:
        ModelLoadError: The model could not be loaded or is inconsistent.
        OutOfMemory: The device ran out of memory while loading.
    """
    from diffusers import StableDiffusionXLImg2ImgPipeline

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    scheduler = spec.scheduler or DEFAULT_SCHEDULER
    try:
        pipe, source = _from_source(spec, model_dir, dtype)
        _check_text_stack(pipe)
        _set_scheduler(pipe, scheduler)
        pipe = pipe.to(device)
        if spec.compile:
            logger.info("Compiling the SDXL UNet with torch.compile.")
            pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
        img2img: Any = StableDiffusionXLImg2ImgPipeline(
            **pipe.components,
            force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )
    except torch.OutOfMemoryError as exc:
        free_device_memory(exc)
        raise OutOfMemory(
            f"Out of memory loading SDXL from {spec.source or EMBEDDED_SOURCE}"
        ) from exc
    except JobError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"Could not load SDXL from {spec.source or EMBEDDED_SOURCE} "
            f"({source_kind(spec.source).replace('_', '-')} source): {exc}"
        ) from exc
    for each in (pipe, img2img):
        each.set_progress_bar_config(disable=True)
    logger.info("SDXL is ready on %s in %s with the %s scheduler.", device, dtype, scheduler)
    return SdxlPipelines(
        text2img=pipe,
        img2img=img2img,
        source=source,
        scheduler=type(pipe.scheduler).__name__,
        dtype=str(dtype).removeprefix("torch."),
        device=device,
    )


class SdxlRenderer:
    """Renders SDXL plans with a cached pipeline (the Renderer protocol)."""

    def __init__(self, spec: ModelSpec, model_dir: Path, cache: PipelineCache = PIPELINES):
        if spec.family != "sdxl":
            raise ValueError(f"SdxlRenderer needs an sdxl model spec, got {spec.family!r}")
        self.spec = spec
        self.model_dir = Path(model_dir)
        self.cache = cache

    def pipelines(self) -> SdxlPipelines:
        """The loaded pipelines, loading them on first use."""
        return self.cache.get(self.spec, self._load)

    def _load(self, spec: ModelSpec) -> SdxlPipelines:
        return load_sdxl_pipelines(spec, self.model_dir)

    def render(
        self,
        plan: RenderPlan,
        references: dict[ReferenceRole, Image.Image],
        on_step: StepCallback | None = None,
    ) -> RenderOutput:
        """Render every image of ``plan`` in one pipeline call, in seed order.

        Raises:
            InvalidPayload: The plan is not an SDXL image plan or lacks its reference image.
            OutOfMemory: The device ran out of memory; the renderer stays usable.
            JobCancelled: Raised by ``on_step``; passed through unchanged.
        """
        if plan.family != "sdxl" or plan.mode not in ("txt2img", "img2img", "copy"):
            raise InvalidPayload(
                f"Field 'type' is invalid ({plan.job_type!r}): mode {plan.mode!r} is not an "
                "SDXL image mode"
            )
        reference = None
        if plan.mode != "txt2img":
            if "image" not in references:
                raise InvalidPayload(
                    "Field 'metadata.reference_image_url' is required for image-to-image jobs "
                    "(no reference image was given to the renderer)"
                )
            reference = fit_reference(references["image"], plan.width, plan.height)
        entry = self.pipelines()
        negative = plan.negative_prompt or None
        arguments: dict[str, Any] = {
            "prompt": plan.prompt,
            "negative_prompt": negative,
            "num_inference_steps": plan.steps,
            "guidance_scale": plan.guidance_scale,
            "num_images_per_prompt": len(plan.seeds),
            "generator": [torch.Generator(entry.device).manual_seed(s) for s in plan.seeds],
            "output_type": "np",
            "callback_on_step_end": step_callback(on_step) if on_step else None,
        }
        if reference is None:
            pipe = entry.text2img
            arguments.update(width=plan.width, height=plan.height)
        else:
            pipe = entry.img2img
            arguments.update(image=reference, strength=plan.strength)
        logger.info(
            "Rendering %s SDXL %s images of %sx%s for job %s with %s steps.",
            len(plan.seeds),
            plan.mode,
            plan.width,
            plan.height,
            plan.job_id,
            plan.steps,
        )
        try:
            with entry.lock, torch.inference_mode():
                images = pipe(**arguments).images
                denoising_steps = pipe.num_timesteps
        except torch.OutOfMemoryError as exc:
            free_device_memory(exc)
            logger.warning("SDXL ran out of device memory on job %s.", plan.job_id)
            raise OutOfMemory(
                f"Out of device memory rendering {len(plan.seeds)} images of "
                f"{plan.width}x{plan.height}"
            ) from exc
        frames = to_uint8(images)
        details = {
            "model": entry.source,
            "scheduler": entry.scheduler,
            "pipeline": "txt2img" if reference is None else "img2img",
            "steps": plan.steps,
            "guidance_scale": plan.guidance_scale,
            "denoise_strength": plan.strength,
            "denoising_steps": denoising_steps,
            "resize_policy": None if reference is None else RESIZE_POLICY,
            "negative_prompt_used": negative is not None and plan.guidance_scale > 1.0,
            "dtype": entry.dtype,
            "device": entry.device,
        }
        return RenderOutput(frames=frames, details=details)
