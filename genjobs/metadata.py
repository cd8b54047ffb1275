"""Assemble the ``completed`` callback payload from what was really rendered and stored.

A pure function of its inputs: effective values from the plan, facts read back from the
encoded files, paths from the store. Job-level metadata holds batch-wide values only and never
``seed`` (the backend spreads it over every asset's settings, contract section 5.3).
"""

from __future__ import annotations

from typing import Any

from genjobs.assets import UploadedAsset
from genjobs.callback.payload import CallbackAsset, CallbackPayload
from genjobs.jobs.plan import RenderPlan


def asset_metadata(
    plan: RenderPlan, details: dict[str, Any], asset: UploadedAsset
) -> dict[str, Any]:
    encoded = asset.encoded
    seed = plan.seeds[encoded.index]
    meta: dict[str, Any] = {
        "seed": seed,
        "generation_seed": seed,
        "asset_index": encoded.index,
        "temp_storage_path": asset.path,
        "file_size_bytes": encoded.size,
        "mime_type": encoded.content_type,
        "duration_seconds": encoded.duration_seconds,
        "width": encoded.width,
        "height": encoded.height,
        "format": encoded.extension,
        "steps": plan.steps,
        "num_inference_steps": plan.steps,
        "guidance_scale": plan.guidance_scale,
    }
    if plan.family == "sdxl":
        meta.update(
            {
                "pipeline": "img2img" if plan.mode in ("img2img", "copy") else "txt2img",
                "denoise_strength": plan.strength,
                "denoising_steps": plan.denoising_steps,
                "resize_policy": details.get("resize_policy"),
                "negative_prompt_used": details.get(
                    "negative_prompt_used", bool(plan.negative_prompt)
                ),
            }
        )
    else:
        meta.update(
            {
                "fps": encoded.fps if encoded.fps is not None else plan.fps,
                "frame_num": encoded.frame_count if encoded.frame_count is not None else 1,
                "sample_solver": plan.sample_solver,
                "sample_shift": plan.sample_shift,
                "reference_mode": plan.reference_mode,
            }
        )
    return meta


def job_metadata(
    plan: RenderPlan, details: dict[str, Any], generation_time: float, flow_run_id: str | None
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "job_type": plan.job_type,
        "generation_time": round(generation_time, 3),
        "num_images": plan.num_images,
        "num_images_requested": plan.num_images_requested,
        "base_seed": plan.base_seed,
        "seed_source": plan.seed_source,
        "reference_mode": plan.reference_mode,
        "exact_copy_mode": plan.mode == "copy",
        "model": details.get("model"),
        "scheduler": details.get("scheduler"),
        "flow_run_id": flow_run_id,
    }
    if plan.output == "video":
        meta["frame_num"] = plan.num_frames
    return meta


def completed_payload(
    plan: RenderPlan,
    details: dict[str, Any],
    uploaded: list[UploadedAsset],
    generation_time: float,
    flow_run_id: str | None,
) -> CallbackPayload:
    """The ``completed`` payload; assets in index order."""
    ordered = sorted(uploaded, key=lambda a: a.encoded.index)
    assets = [
        CallbackAsset(
            type="video" if a.encoded.kind == "video" else "image",
            url=a.path,
            thumbnail_url=a.thumbnail_path,
            metadata=asset_metadata(plan, details, a),
        )
        for a in ordered
    ]
    return CallbackPayload(
        job_id=plan.job_id,
        status="completed",
        error_message=None,
        assets=assets,
        metadata=job_metadata(plan, details, generation_time, flow_run_id),
    )
