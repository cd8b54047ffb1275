"""Upload one asset and its thumbnail to the contract path, retrying transient failures only."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from genjobs.assets import EncodedAsset, UploadedAsset
from genjobs.errors import StorageError
from genjobs.runtime import get_runtime
from genjobs.storage.base import MIME_BY_EXTENSION, asset_path, thumbnail_path
from tasks.naming import retry_if_transient, run_name


@task(
    name="upload",
    cache_policy=NO_CACHE,
    task_run_name=run_name("upload"),
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=1),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
)
async def upload_asset(asset: EncodedAsset, user_id: str, job_id: str) -> UploadedAsset:
    """Put the original (upsert, exact content type), then its thumbnail.

    A thumbnail refused for good leaves ``thumbnail_path`` empty (contract 5.4); a transient
    failure of either raises, so the task retries and overwrites what it already stored.
    """
    logger = get_run_logger()
    runtime = get_runtime()
    bucket = runtime.settings.bucket
    path = asset_path(user_id, job_id, asset.index, asset.extension)
    data = Path(asset.file).read_bytes()
    await asyncio.to_thread(runtime.storage.put, bucket, path, data, asset.content_type)
    logger.info("Stored %s (%d bytes, %s).", path, len(data), asset.content_type)
    thumb_path: str | None = None
    if asset.thumbnail_file is not None:
        thumb_path = thumbnail_path(user_id, job_id, asset.index)
        try:
            await asyncio.to_thread(
                runtime.storage.put,
                bucket,
                thumb_path,
                Path(asset.thumbnail_file).read_bytes(),
                MIME_BY_EXTENSION["webp"],
            )
        except StorageError as exc:
            if exc.retryable:
                raise
            logger.warning(
                "The thumbnail %s was refused (%s); the asset keeps no poster.",
                thumb_path,
                exc.code,
            )
            thumb_path = None
    return UploadedAsset(encoded=asset, path=path, thumbnail_path=thumb_path)


@task(
    name="remove-partial-uploads", task_run_name=run_name("remove-uploads"), cache_policy=NO_CACHE
)
async def remove_uploads(job_id: str, paths: list[str]) -> list[str]:
    """Delete what a failed or cancelled job stored, so no object outlives its record."""
    runtime = get_runtime()
    removed = await asyncio.to_thread(runtime.storage.remove, runtime.settings.bucket, paths)
    get_run_logger().info("Removed %d partial upload(s) of job %s.", len(removed), job_id)
    return removed
