"""The WAN 2.1 renderer: text-to-video, single frames, and reference frames through VACE.

The text-to-video pipeline is loaded once per :class:`~genjobs.render.base.ModelSpec` through the
process-wide cache and stays resident. Reference frames go through a ``WanVACEPipeline`` built
from the loaded text encoder, tokenizer and VAE plus a VACE transformer (loaded once per VACE
spec), so nothing is loaded twice. Each job gets its own scheduler (``dpm++`` or ``unipc`` with
the plan's flow shift) in a per-job view of the shared components; the cached pipelines are
never changed by a job.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from genjobs.errors import (
    InvalidPayload,
    JobError,
    ModelLoadError,
    OutOfMemory,
    ReferenceModeUnsupported,
)
from genjobs.jobs.plan import ReferenceRole, RenderPlan
from genjobs.jobs.types import WAN_SAMPLE_SHIFT
from genjobs.render.base import ModelSpec, RenderOutput, StepCallback
from genjobs.render.cache import PIPELINES, PipelineCache, resolve_device, resolve_dtype
from genjobs.render.device import free_device_memory, step_callback
from genjobs.render.sdxl import fit_reference
from genjobs.render.tiny_wan import (
    TINY_WAN_FOLDER,
    TINY_WAN_VACE_FOLDER,
    ensure_tiny_wan,
    ensure_tiny_wan_vace,
)
from genjobs.render.tokenizers import check_tokenizer

logger = logging.getLogger(__name__)

EMBEDDED_SOURCE = "embedded:tiny-wan"
EMBEDDED_VACE_SOURCE = "embedded:tiny-wan-vace"
UMT5_MIN_TOKENS = 200
"""Real UMT5 has about 256k tokens and the embedded tiny one 240; a load that found no
vocabulary files gives a handful."""
SIZE_MULTIPLE = 16
"""What the released model needs; a loaded model may need more (:func:`size_multiple`)."""
TEMPORAL_FACTOR = 4
GREY = 128
KEEP, GENERATE = 0, 255
"""VACE mask values: black keeps a given frame, white generates it."""

DEFAULT_SOLVER = "dpm++"
SOLVERS: dict[str, str] = {
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}
ROLES_BY_MODE: dict[str, tuple[ReferenceRole, ...]] = {
    "none": (),
    "single": ("image",),
    "start": ("first_frame",),
    "end": ("last_frame",),
    "both": ("first_frame", "last_frame"),
}

SourceKind = Literal["embedded", "folder", "hub"]


def source_kind(source: str | None) -> SourceKind:
    """How a WAN model source is loaded: embedded tiny model, saved folder or hub id."""
    if source is None:
        return "embedded"
    return "folder" if Path(source).is_dir() else "hub"


def wan_dtype(requested: str, device: str) -> torch.dtype:
    """The transformer and text encoder dtype. ``auto`` on CUDA is bfloat16, not float16:
    UMT5 overflows in float16. The VAE always runs in float32."""
    if requested == "auto" and device.startswith("cuda"):
        return torch.bfloat16
    dtype: torch.dtype = resolve_dtype(requested, device)
    return dtype


def make_scheduler(solver: str, shift: float, num_train_timesteps: int = 1000) -> Any:
    """A fresh flow-matching scheduler for one job.

    Args:
        solver: ``dpm++`` (flow-sigma DPM-Solver++) or ``unipc``.
        shift: The flow shift (5.0 for WAN 2.1 at 480x832).
        num_train_timesteps: From the loaded model's scheduler config.

    Raises:
        InvalidPayload: The solver is not one of :data:`SOLVERS`.
    """
    import diffusers

    if solver not in SOLVERS:
        raise InvalidPayload(
            f"Field 'config.sample_solver' is invalid ({solver!r}): use one of {sorted(SOLVERS)}"
        )
    scheduler_class = getattr(diffusers, SOLVERS[solver])
    return scheduler_class(
        num_train_timesteps=num_train_timesteps,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
    )


def size_multiple(pipe: Any) -> int:
    """The multiple heights and widths must have for ``pipe``, which rounds others down
    with only a warning: the VAE's spatial factor times the transformer's patch."""
    return int(pipe.vae_scale_factor_spatial) * int(pipe.transformer.config.patch_size[1])


def conditioning_inputs(
    mode: str,
    references: dict[ReferenceRole, Image.Image],
    num_frames: int,
    width: int,
    height: int,
) -> dict[str, Any]:
    """The VACE inputs for a reference mode, every image exactly ``width`` x ``height``.

    ``single`` gives ``reference_images``; ``start``, ``end`` and ``both`` give a ``video`` of
    grey frames with the reference at the first and/or last frame and a ``mask`` that keeps
    (black) those frames and generates (white) the others. References are fitted by centre crop
    and LANCZOS resize.

    Raises:
        InvalidPayload: The mode is unknown or a reference it needs is missing.
    """
    if mode not in ROLES_BY_MODE or mode == "none":
        raise InvalidPayload(f"Field 'metadata.video_reference_mode' is invalid ({mode!r})")
    fitted: dict[ReferenceRole, Image.Image] = {}
    for role in ROLES_BY_MODE[mode]:
        if role not in references:
            raise InvalidPayload(
                f"Reference {role!r} is required for video_reference_mode {mode!r} "
                "(no such image was given to the renderer)"
            )
        fitted[role] = fit_reference(references[role], width, height)
    if mode == "single":
        return {"reference_images": [fitted["image"]]}
    size = (width, height)
    video = [Image.new("RGB", size, (GREY, GREY, GREY)) for _ in range(num_frames)]
    mask = [Image.new("L", size, GENERATE) for _ in range(num_frames)]
    kept = {"first_frame": 0, "last_frame": num_frames - 1}
    for role, image in fitted.items():
        video[kept[role]] = image
        mask[kept[role]] = Image.new("L", size, KEEP)
    return {"video": video, "mask": mask}


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] to contiguous uint8 of the same shape."""
    return np.ascontiguousarray((np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8))


@dataclass
class WanPipelines:
    """One cache entry: the resident text-to-video pipeline and the VACE views built from it."""

    t2v: Any
    source: str
    dtype: torch.dtype
    device: str
    vace: dict[ModelSpec, VaceView] = field(default_factory=dict, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass
class VaceTransformer:
    """One cache entry: a loaded VACE transformer and where it came from."""

    transformer: Any
    source: str


@dataclass(frozen=True)
class VaceView:
    """A VACE pipeline over the resident text-to-video modules, and its transformer's source."""

    pipeline: Any
    source: str


def _check_text_stack(pipe: Any) -> None:
    if pipe.tokenizer is None or pipe.text_encoder is None or pipe.transformer is None:
        raise ModelLoadError("The WAN model has no tokenizer, text encoder or transformer")
    check_tokenizer(pipe.tokenizer, "tokenizer", UMT5_MIN_TOKENS)
    encoder = pipe.text_encoder.config
    if encoder.vocab_size < len(pipe.tokenizer):
        raise ModelLoadError(
            f"The WAN tokenizer has {len(pipe.tokenizer)} tokens but the text encoder only "
            f"{encoder.vocab_size}"
        )
    if pipe.transformer.config.text_dim != encoder.d_model:
        raise ModelLoadError(
            f"The WAN transformer expects text features of {pipe.transformer.config.text_dim} "
            f"but the text encoder gives {encoder.d_model}"
        )


def _load_error(what: str, source: str | None, exc: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"Could not load {what} from {source or 'the embedded model'} "
        f"({source_kind(source)} source): {exc}"
    )


def load_wan_pipelines(spec: ModelSpec, model_dir: Path) -> WanPipelines:
    """Load the text-to-video pipeline of ``spec`` (VAE in float32) onto its device.

    Raises:
        ModelLoadError: The model could not be loaded or is inconsistent.
        OutOfMemory: The device ran out of memory while loading.
    """
    from diffusers import WanPipeline

    device = resolve_device(spec.device)
    dtype = wan_dtype(spec.dtype, device)
    kind = source_kind(spec.source)
    location: str | Path
    if kind == "embedded":
        location, source = ensure_tiny_wan(model_dir / TINY_WAN_FOLDER), EMBEDDED_SOURCE
    else:
        location = source = str(spec.source)
    kwargs: dict[str, Any] = {"dtype": {"default": dtype, "vae": torch.float32}}
    try:
        logger.info("Loading WAN text-to-video from the %s %s.", kind, location)
        pipe = WanPipeline.from_pretrained(location, **kwargs)
        _check_text_stack(pipe)
        pipe = pipe.to(device)
        if device.startswith("cuda"):
            pipe.vae.enable_slicing()
            pipe.vae.enable_tiling()
        if spec.compile:
            logger.info("Compiling the WAN transformer with torch.compile.")
            pipe.transformer.compile()
    except torch.OutOfMemoryError as exc:
        free_device_memory(exc)
        raise OutOfMemory(f"Out of memory loading WAN from {source}") from exc
    except JobError:
        raise
    except Exception as exc:
        raise _load_error("WAN", spec.source, exc) from exc
    logger.info("WAN %s is ready on %s in %s.", source, device, dtype)
    return WanPipelines(t2v=pipe, source=source, dtype=dtype, device=device)


def load_vace_transformer(spec: ModelSpec, model_dir: Path) -> VaceTransformer:
    """Load the VACE transformer of ``spec``: a transformer folder, a pipeline folder or hub id.

    Raises:
        ModelLoadError: The transformer could not be loaded.
        OutOfMemory: The device ran out of memory while loading.
    """
    from diffusers import WanVACETransformer3DModel

    device = resolve_device(spec.device)
    dtype = wan_dtype(spec.dtype, device)
    kind = source_kind(spec.source)
    kwargs: dict[str, Any] = {"dtype": dtype}
    location: str | Path
    if kind == "embedded":
        location = ensure_tiny_wan_vace(model_dir / TINY_WAN_VACE_FOLDER)
        source = EMBEDDED_VACE_SOURCE
    else:
        location = source = str(spec.source)
        if kind == "hub" or (Path(location) / "model_index.json").is_file():
            kwargs["subfolder"] = "transformer"
    try:
        logger.info("Loading the WAN VACE transformer from the %s %s.", kind, location)
        transformer = WanVACETransformer3DModel.from_pretrained(location, **kwargs).to(device)
        if spec.compile:
            transformer.compile()
    except torch.OutOfMemoryError as exc:
        free_device_memory(exc)
        raise OutOfMemory(f"Out of memory loading the VACE transformer from {source}") from exc
    except Exception as exc:
        raise _load_error("the WAN VACE transformer", spec.source, exc) from exc
    return VaceTransformer(transformer=transformer, source=source)


def _shared_view(pipeline_class: Any, pipe: Any, **overrides: Any) -> Any:
    """A pipeline over ``pipe``'s modules (same objects, no copy, no dtype cast).

    ``DiffusionPipeline.from_pipe`` would cast every shared module to float32 (its default
    dtype), in place, which changes the resident pipeline on a GPU.
    """
    view = pipeline_class(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        scheduler=overrides.pop("scheduler", pipe.scheduler),
        transformer=overrides.pop("transformer", pipe.transformer),
        **overrides,
    )
    view.set_progress_bar_config(disable=True)
    return view


class WanRenderer:
    """Renders WAN plans with cached pipelines (the Renderer protocol)."""

    def __init__(
        self,
        spec: ModelSpec,
        vace_spec: ModelSpec | None,
        model_dir: Path,
        cache: PipelineCache = PIPELINES,
    ):
        if spec.family != "wan":
            raise ValueError(f"WanRenderer needs a wan model spec, got {spec.family!r}")
        if vace_spec is not None and vace_spec.family != "wan_vace":
            raise ValueError(f"The VACE model spec must be wan_vace, got {vace_spec.family!r}")
        self.spec = spec
        self.vace_spec = vace_spec
        self.model_dir = Path(model_dir)
        self.cache = cache

    def pipelines(self) -> WanPipelines:
        """The resident text-to-video pipeline, loaded on first use."""
        return self.cache.get(self.spec, lambda spec: load_wan_pipelines(spec, self.model_dir))

    def vace_pipeline(self) -> VaceView:
        """The VACE pipeline sharing text encoder, tokenizer and VAE with the resident one.

        Raises:
            ReferenceModeUnsupported: No VACE model is configured.
            ModelLoadError: The VACE transformer does not fit the text-to-video model.
        """
        if self.vace_spec is None:
            raise ReferenceModeUnsupported(
                "WAN reference frames need a VACE model and none is configured; "
                "send video_reference_mode 'none' or configure the WAN VACE source"
            )
        vace_spec = self.vace_spec
        entry = self.pipelines()
        loaded = self.cache.get(vace_spec, lambda spec: load_vace_transformer(spec, self.model_dir))
        with entry.lock:
            if vace_spec not in entry.vace:
                entry.vace[vace_spec] = self._build_vace(entry, loaded)
            return entry.vace[vace_spec]

    @staticmethod
    def _build_vace(entry: WanPipelines, loaded: VaceTransformer) -> VaceView:
        from diffusers import WanVACEPipeline

        config = loaded.transformer.config
        t2v = entry.t2v
        latent_channels = t2v.vae.config.z_dim
        # WanVACEPipeline folds the mask by 2 ** (VAE levels - 1), whatever the VAE's own factor.
        fold = 2 ** len(t2v.vae.temperal_downsample)
        needed = {
            "text_dim": t2v.text_encoder.config.d_model,
            "in_channels": latent_channels,
            "patch_size": tuple(t2v.transformer.config.patch_size),
            "vace_in_channels": 2 * latent_channels + fold**2,
        }
        found = {name: config[name] for name in needed}
        found["patch_size"] = tuple(found["patch_size"])
        if found != needed or fold != t2v.vae_scale_factor_spatial:
            raise ModelLoadError(
                f"The VACE transformer {loaded.source} ({found}) does not fit WAN "
                f"{entry.source} ({needed}, VAE spatial factor {t2v.vae_scale_factor_spatial})"
            )
        logger.info("Built the WAN VACE pipeline from %s and %s.", entry.source, loaded.source)
        pipeline = _shared_view(WanVACEPipeline, entry.t2v, transformer=loaded.transformer)
        return VaceView(pipeline=pipeline, source=loaded.source)

    def render(
        self,
        plan: RenderPlan,
        references: dict[ReferenceRole, Image.Image],
        on_step: StepCallback | None = None,
    ) -> RenderOutput:
        """Render the plan's video (or single frame) with its one seed.

        Raises:
            InvalidPayload: The plan is not a WAN plan, or its sizes, frame count, solver or
                references are invalid.
            ReferenceModeUnsupported: References are requested but no VACE model is configured.
            OutOfMemory: The device ran out of memory; the renderer stays usable.
            JobCancelled: Raised by ``on_step``; passed through unchanged.
        """
        num_frames = self._check_plan(plan)
        mode = plan.reference_mode
        conditioning: dict[str, Any] = {}
        if mode != "none":
            if self.vace_spec is None:
                raise ReferenceModeUnsupported(
                    f"WAN video_reference_mode {mode!r} needs a VACE model and none is "
                    "configured; send video_reference_mode 'none' or configure the WAN VACE source"
                )
            conditioning = conditioning_inputs(
                mode, references, num_frames, plan.width, plan.height
            )
        entry = self.pipelines()
        multiple = size_multiple(entry.t2v)
        if plan.width % multiple or plan.height % multiple:
            raise InvalidPayload(
                f"WAN sizes must be multiples of {multiple} for {entry.source}, "
                f"got {plan.width}x{plan.height}"
            )
        vace = self.vace_pipeline() if conditioning else None
        base = vace.pipeline if vace is not None else entry.t2v
        solver = plan.sample_solver or DEFAULT_SOLVER
        shift = plan.sample_shift if plan.sample_shift is not None else WAN_SAMPLE_SHIFT
        scheduler = make_scheduler(solver, shift, base.scheduler.config.num_train_timesteps)
        pipe = _shared_view(type(base), base, scheduler=scheduler)
        seed = plan.seeds[0]
        arguments: dict[str, Any] = {
            "prompt": plan.prompt,
            "negative_prompt": plan.negative_prompt or "",
            "height": plan.height,
            "width": plan.width,
            "num_frames": num_frames,
            "num_inference_steps": plan.steps,
            "guidance_scale": plan.guidance_scale,
            "generator": torch.Generator(entry.device).manual_seed(seed),
            "output_type": "np",
            "callback_on_step_end": step_callback(on_step) if on_step else None,
            **conditioning,
        }
        logger.info(
            "Rendering WAN %s of %s frames at %sx%s for job %s: %s steps, %s shift %s, "
            "reference mode %s, seed %s.",
            plan.mode,
            num_frames,
            plan.width,
            plan.height,
            plan.job_id,
            plan.steps,
            solver,
            shift,
            mode,
            seed,
        )
        try:
            with entry.lock, torch.inference_mode():
                video = pipe(**arguments).frames[0]
        except torch.OutOfMemoryError as exc:
            free_device_memory(exc)
            logger.warning("WAN ran out of device memory on job %s.", plan.job_id)
            raise OutOfMemory(
                f"Out of device memory rendering {num_frames} frames of {plan.width}x{plan.height}"
            ) from exc
        frames = to_uint8(np.asarray(video))
        details = {
            "model": entry.source,
            "vace_model": vace.source if vace is not None else None,
            "pipeline": "vace" if vace is not None else "t2v",
            "scheduler": type(scheduler).__name__,
            "sample_solver": solver,
            "sample_shift": shift,
            "steps": plan.steps,
            "guidance_scale": plan.guidance_scale,
            "frame_num": num_frames,
            "fps": plan.fps,
            "reference_mode": mode,
            "seed": seed,
            "negative_prompt_used": bool(plan.negative_prompt) and plan.guidance_scale > 1.0,
            "dtype": str(entry.dtype).removeprefix("torch."),
            "vae_dtype": str(entry.t2v.vae.dtype).removeprefix("torch."),
            "device": entry.device,
        }
        output = frames[0] if plan.mode == "frame" else frames
        return RenderOutput(frames=[output], details=details)

    @staticmethod
    def _check_plan(plan: RenderPlan) -> int:
        """The frame count to render, after refusing what the pipeline would bend silently."""
        if plan.family != "wan" or plan.mode not in ("t2v", "frame"):
            raise InvalidPayload(
                f"Field 'type' is invalid ({plan.job_type!r}): mode {plan.mode!r} is not a WAN mode"
            )
        if plan.width % SIZE_MULTIPLE or plan.height % SIZE_MULTIPLE:
            raise InvalidPayload(
                f"WAN sizes must be multiples of {SIZE_MULTIPLE}, got {plan.width}x{plan.height}"
            )
        if (plan.sample_solver or DEFAULT_SOLVER) not in SOLVERS:
            raise InvalidPayload(
                f"Field 'config.sample_solver' is invalid ({plan.sample_solver!r}): "
                f"use one of {sorted(SOLVERS)}"
            )
        num_frames = 1 if plan.mode == "frame" else plan.num_frames
        if num_frames is None or num_frames < 1 or (num_frames - 1) % TEMPORAL_FACTOR:
            raise InvalidPayload(
                f"WAN frame counts must be 4k+1, got {num_frames} for job type {plan.job_type}"
            )
        if plan.mode == "frame" and plan.reference_mode != "none":
            raise ReferenceModeUnsupported(
                f"Field 'metadata.video_reference_mode' ({plan.reference_mode!r}) is not "
                f"supported for single-frame job type {plan.job_type}"
            )
        return num_frames
