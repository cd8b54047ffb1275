"""Upload a job's assets and their thumbnails to the contract paths.

One ``upload`` task run stores every asset of the job: each original, then its thumbnail, the
assets in parallel. An asset whose upload failed transiently (5xx, timeout, dropped connection)
is then stored again by a ``reupload`` task run of its own, which Prefect retries with backoff
(``upload_retries`` times, delays doubling from ``upload_retry_base_seconds``); a failure no
retry can fix fails the job. A job whose uploads all succeed at once, the common case, costs one
task run, not one per asset. Uploads upsert, so storing an asset again is harmless.

:func:`upload_job_assets` returns or raises only once every upload has settled: the removal of a
failed job's partial uploads must not race an upload still in flight (it would leave an orphaned
object).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from pydantic import BaseModel

from genjobs.assets import EncodedAsset, UploadedAsset
from genjobs.errors import StorageError, is_transient
from genjobs.runtime import get_runtime
from genjobs.settings import Settings
from genjobs.storage.base import MIME_BY_EXTENSION, asset_path, thumbnail_path
from tasks.naming import retry_if_transient, run_name, with_settings_retries


class UploadAttempt(BaseModel):
    """What the ``upload`` task stored, and which assets failed transiently."""

    stored: list[UploadedAsset]
    again: list[EncodedAsset]


async def store_asset(asset: EncodedAsset, user_id: str, job_id: str) -> UploadedAsset:
    """Put the original (upsert, exact content type), then its thumbnail.

    A thumbnail refused for good leaves ``thumbnail_path`` empty (contract 5.4); a transient
    failure of either raises, so the asset is stored again, original included.
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


@task(name="upload", cache_policy=NO_CACHE, task_run_name=run_name("upload"))
async def upload_assets(assets: list[EncodedAsset], user_id: str, job_id: str) -> UploadAttempt:
    """Store every asset at once; report the ones that failed transiently, raise any other
    failure once every upload has settled."""
    settled = await asyncio.gather(
        *(store_asset(asset, user_id, job_id) for asset in assets), return_exceptions=True
    )
    attempt = UploadAttempt(stored=[], again=[])
    lasting: list[BaseException] = []
    for asset, result in zip(assets, settled, strict=True):
        if isinstance(result, UploadedAsset):
            attempt.stored.append(result)
        elif is_transient(result):
            attempt.again.append(asset)
            get_run_logger().warning(
                "Asset %d of job %s was not stored (%s); it is stored again by a retried task.",
                asset.index,
                job_id,
                result,
            )
        else:
            lasting.append(result)
    if lasting:
        raise lasting[0]
    return attempt


@task(
    name="reupload",
    cache_policy=NO_CACHE,
    task_run_name=run_name("reupload"),
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=1),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
)
async def reupload_asset(asset: EncodedAsset, user_id: str, job_id: str) -> UploadedAsset:
    """Store one asset again after a transient failure; Prefect retries transient failures."""
    return await store_asset(asset, user_id, job_id)


async def upload_job_assets(
    assets: list[EncodedAsset], user_id: str, job_id: str, settings: Settings
) -> list[UploadedAsset]:
    """Store every asset of a job: all at once, then each transient failure on its own with
    retries. Returns the stored assets in index order; raises the first failure that is left,
    once every upload has settled."""
    attempt = await upload_assets(assets, user_id, job_id)
    if not attempt.again:
        return attempt.stored
    reupload = with_settings_retries(reupload_asset, settings)
    settled = await asyncio.gather(
        *(reupload(asset, user_id, job_id) for asset in attempt.again), return_exceptions=True
    )
    failures = [result for result in settled if isinstance(result, BaseException)]
    if failures:
        raise failures[0]
    stored = attempt.stored + [result for result in settled if isinstance(result, UploadedAsset)]
    return sorted(stored, key=lambda uploaded: uploaded.encoded.index)


@task(
    name="remove-partial-uploads", task_run_name=run_name("remove-uploads"), cache_policy=NO_CACHE
)
async def remove_uploads(job_id: str, paths: list[str]) -> list[str]:
    """Delete what a failed or cancelled job stored, so no object outlives its record."""
    runtime = get_runtime()
    removed = await asyncio.to_thread(runtime.storage.remove, runtime.settings.bucket, paths)
    get_run_logger().info("Removed %d partial upload(s) of job %s.", len(removed), job_id)
    return removed
