"""Assemble the completed callback payload; publish the asset artifacts.

Two artifacts per completed job: a table of the assets (path, bytes, MIME type, seed, size,
duration) and, where the storage signs URLs (Supabase), the same table in markdown with a
preview of each thumbnail. A preview is a signed link to the 256 px WEBP that expires after
``artifact_preview_seconds`` (0 turns previews off); it opens that one object and nothing else.
The flow publishes them (:func:`publish_asset_artifacts`) while the callback is delivered, so
the backend hears of the job without waiting for the API's artifact writes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from genjobs.assets import UploadedAsset
from genjobs.callback.payload import CallbackPayload
from genjobs.errors import ErrorCode, JobError, StorageError
from genjobs.jobs.plan import RenderPlan
from genjobs.metadata import completed_payload
from genjobs.settings import Settings
from genjobs.storage.base import StorageBackend
from tasks.naming import run_name
from tasks.run_logger import run_logger


@task(name="assemble-metadata", task_run_name=run_name("metadata"), cache_policy=NO_CACHE)
async def assemble_metadata(
    plan: RenderPlan, details: dict[str, Any], uploaded: list[UploadedAsset], generation_time: float
) -> CallbackPayload:
    """Never ``completed`` with fewer stored originals than rendered (contract 5.4)."""
    if len(uploaded) != plan.num_images or not uploaded:
        raise JobError(
            f"Only {len(uploaded)} of {plan.num_images} assets were stored",
            code=ErrorCode.UPLOAD_ERROR,
        )
    payload = completed_payload(plan, details, uploaded, generation_time, flow_run.get_id())
    get_run_logger().info(
        "Assembled metadata for %d asset(s) of job %s.", len(payload.assets), plan.job_id
    )
    return payload


async def publish_asset_artifacts(
    plan: RenderPlan, payload: CallbackPayload, storage: StorageBackend, settings: Settings
) -> None:
    """The asset table, and the preview table where ``storage`` signs links, on the run
    (links last the settings' ``artifact_preview_seconds``, in their bucket).

    An artifact is observability: an API error here is logged, and the job still completes.
    """
    rows = [
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
    ]
    description = f"Assets of job {plan.job_id} ({plan.job_type})"
    try:
        _, previews = await asyncio.gather(  # the API writes the table while links are signed
            acreate_table_artifact(
                key=f"assets-{plan.job_id}", table=rows, description=description
            ),
            _preview_links([a.thumbnail_url for a in payload.assets], storage, settings),
        )
        if any(previews):
            await acreate_markdown_artifact(
                key=f"asset-previews-{plan.job_id}",
                markdown=preview_markdown(rows, previews),
                description=description,
            )
    except Exception as exc:
        run_logger(__name__).warning(
            "The asset artifacts of job %s were not published: %s", plan.job_id, exc
        )


async def _preview_links(
    thumbnails: list[str | None], storage: StorageBackend, settings: Settings
) -> list[str | None]:
    """A signed, expiring URL per thumbnail, where the storage signs URLs; else None each."""
    seconds = settings.artifact_preview_seconds
    if not seconds:
        return [None] * len(thumbnails)
    sign = storage.signed_url

    async def link(path: str | None) -> str | None:
        if path is None:
            return None
        try:
            url = await asyncio.to_thread(sign, settings.bucket, path, seconds)
        except StorageError as exc:  # a preview never fails a job
            get_run_logger().warning("No preview link for %s: %s", path, exc)
            return None
        return url

    return list(await asyncio.gather(*(link(path) for path in thumbnails)))


def preview_markdown(rows: list[dict[str, Any]], previews: list[str | None]) -> str:
    """The asset table in markdown, a thumbnail image in its first column."""
    lines = [
        "| # | Preview | Path | Bytes | MIME | Seed | Size | Duration |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index, (row, preview) in enumerate(zip(rows, previews, strict=True)):
        image = f"![asset {index}]({preview})" if preview else "none"
        duration = f"{row['duration_s']:.2f} s" if row["duration_s"] is not None else ""
        lines.append(
            f"| {index} | {image} | `{row['path']}` | {row['bytes']} | {row['mime']} | "
            f"{row['seed']} | {row['width']}x{row['height']} | {duration} |"
        )
    return "\n".join(lines)
