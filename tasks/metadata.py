"""Assemble the completed callback payload and publish the asset table artifact."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from genjobs.assets import UploadedAsset
from genjobs.callback.payload import CallbackPayload
from genjobs.errors import JobError
from genjobs.jobs.plan import RenderPlan
from genjobs.metadata import completed_payload
from tasks.naming import run_name


@task(name="assemble-metadata", task_run_name=run_name("metadata"), cache_policy=NO_CACHE)
async def assemble_metadata(
    plan: RenderPlan, details: dict[str, Any], uploaded: list[UploadedAsset], generation_time: float
) -> CallbackPayload:
    """Never ``completed`` with fewer stored originals than rendered (contract 5.4)."""
    if len(uploaded) != plan.num_images or not uploaded:
        raise JobError(
            f"Only {len(uploaded)} of {plan.num_images} assets were stored", code="UPLOAD_ERROR"
        )
    payload = completed_payload(plan, details, uploaded, generation_time, flow_run.get_id())
    await acreate_table_artifact(
        key=f"assets-{plan.job_id}",
        table=[
            {
                "path": a.url,
                "thumbnail": a.thumbnail_url,
                "bytes": a.metadata["file_size_bytes"],
                "mime": a.metadata["mime_type"],
                "seed": a.metadata["seed"],
                "width": a.metadata["width"],
                "height": a.metadata["height"],
                "duration_s": a.metadata["duration_seconds"],
            }
            for a in payload.assets
        ],
        description=f"Assets of job {plan.job_id} ({plan.job_type})",
    )
    get_run_logger().info(
        "Assembled metadata for %d asset(s) of job %s.", len(payload.assets), plan.job_id
    )
    return payload
