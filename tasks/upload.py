"""Upload a job's assets and their thumbnails to the contract paths; refuse a job whose folder
already holds objects; undo what a failed run stored.

One ``upload`` task run stores every asset of the job: each original, then its thumbnail, the
assets in parallel. An asset whose upload failed transiently (5xx, timeout, dropped connection)
is then stored again by a ``reupload`` task run of its own, which Prefect retries with backoff
(the storage policy of tasks/retries.py); a failure no retry can fix fails the job. A job
whose uploads all succeed at once, the common case, costs one task run, not one per asset.
Uploads upsert, so storing an asset again is harmless.

Before it puts an asset, the upload records the original and its thumbnail (path, sha256, size
of the bytes sent) in the run's upload journal (genjobs/storage/provenance.py); the undo of a
failed run removes only what that journal names with the bytes it names.

:func:`upload_job_assets` returns or raises only once every upload has settled: the undo of a
failed job must not race an upload still in flight (it would leave an orphaned object).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from genjobs.assets import EncodedAsset, UploadedAsset
from genjobs.errors import ErrorCode, JobAssetsExist, StorageError, is_transient
from genjobs.settings import Settings
from genjobs.storage.base import (
    MIME_BY_EXTENSION,
    StorageBackend,
    asset_path,
    job_prefix,
    thumbnail_path,
)
from genjobs.storage.provenance import UploadJournal, Write, undo_writes
from tasks.naming import run_name
from tasks.retries import retry_if_transient, storage_policy, with_retries
from tasks.run_logger import run_logger


class UploadAttempt(BaseModel):
    """What the ``upload`` task stored, and which assets failed transiently."""

    stored: list[UploadedAsset]
    again: list[EncodedAsset]


async def store_asset(
    asset: EncodedAsset,
    user_id: str,
    job_id: str,
    journal: UploadJournal,
    storage: StorageBackend,
    bucket: str,
) -> UploadedAsset:
    """Record the original and its thumbnail in the journal, then put the original (upsert,
    exact content type), then the thumbnail, into ``bucket`` of ``storage``.

    A thumbnail refused for good leaves ``thumbnail_path`` empty (contract 5.4); a transient
    failure of either raises, so the asset is stored again, original included.
    """
    logger = get_run_logger()
    path = asset_path(user_id, job_id, asset.index, asset.extension)
    data = Path(asset.file).read_bytes()
    thumb_path: str | None = None
    thumb_data = b""
    if asset.thumbnail_file is not None:
        thumb_path = thumbnail_path(user_id, job_id, asset.index)
        thumb_data = Path(asset.thumbnail_file).read_bytes()
    writes = [Write.of(bucket, path, data)]
    if thumb_path is not None:
        writes.append(Write.of(bucket, thumb_path, thumb_data))
    await asyncio.to_thread(journal.record, writes)
    await asyncio.to_thread(storage.put, bucket, path, data, asset.content_type)
    logger.info("Stored %s (%d bytes, %s).", path, len(data), asset.content_type)
    if thumb_path is not None:
        try:
            await asyncio.to_thread(
                storage.put, bucket, thumb_path, thumb_data, MIME_BY_EXTENSION["webp"]
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
async def upload_assets(
    assets: list[EncodedAsset],
    user_id: str,
    job_id: str,
    journal: UploadJournal,
    storage: StorageBackend,
    bucket: str,
) -> UploadAttempt:
    """Store every asset at once; report the ones that failed transiently, raise any other
    failure once every upload has settled."""
    settled = await asyncio.gather(
        *(store_asset(asset, user_id, job_id, journal, storage, bucket) for asset in assets),
        return_exceptions=True,
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
    retry_condition_fn=retry_if_transient,  # how often: tasks/retries.py
)
async def reupload_asset(
    asset: EncodedAsset,
    user_id: str,
    job_id: str,
    journal: UploadJournal,
    storage: StorageBackend,
    bucket: str,
) -> UploadedAsset:
    """Store one asset again after a transient failure; Prefect retries transient failures."""
    return await store_asset(asset, user_id, job_id, journal, storage, bucket)


async def upload_job_assets(
    assets: list[EncodedAsset],
    user_id: str,
    job_id: str,
    journal: UploadJournal,
    storage: StorageBackend,
    settings: Settings,
) -> list[UploadedAsset]:
    """Store every asset of a job in ``storage`` (the settings' bucket): all at once, then each
    transient failure on its own with retries (the settings' storage policy), every put
    recorded in ``journal`` first. Returns the stored assets in index order; raises the first
    failure that is left, once every upload has settled."""
    bucket = settings.bucket
    attempt = await upload_assets(assets, user_id, job_id, journal, storage, bucket)
    if not attempt.again:
        return attempt.stored
    reupload = with_retries(reupload_asset, storage_policy(settings))
    settled = await asyncio.gather(
        *(reupload(asset, user_id, job_id, journal, storage, bucket) for asset in attempt.again),
        return_exceptions=True,
    )
    failures = [result for result in settled if isinstance(result, BaseException)]
    if failures:
        raise failures[0]
    stored = attempt.stored + [result for result in settled if isinstance(result, UploadedAsset)]
    return sorted(stored, key=lambda uploaded: uploaded.encoded.index)


@task(
    name="check-job-folder",
    cache_policy=NO_CACHE,
    task_run_name=run_name("check"),
    retry_condition_fn=retry_if_transient,
)
async def refuse_stored_job(
    user_id: str, job_id: str, storage: StorageBackend, bucket: str
) -> None:
    """Refuse a run of a job whose folder already holds objects (a re-run of a job an earlier
    run stored): it would overwrite them and, failing, could remove them.

    A missing bucket holds none of the job's objects: the upload names it. Any other storage
    error refuses the run with that error (it cannot tell, so it touches nothing).

    Raises:
        JobAssetsExist: The folder holds objects; nothing was rendered, stored or removed.
    """
    folder = job_prefix(user_id, job_id)
    try:
        found = await asyncio.to_thread(storage.list, bucket, folder)
    except StorageError as exc:
        if exc.code != ErrorCode.BUCKET_NOT_FOUND:
            raise
        found = []
    if found:
        raise JobAssetsExist(
            f"Job {job_id} already has {len(found)} object(s) in {bucket}/{folder}, stored by "
            "another run of it; this run rendered, stored and removed nothing"
        )


async def check_job_folder(
    user_id: str, job_id: str, storage: StorageBackend, settings: Settings
) -> None:
    """:func:`refuse_stored_job` in the settings' bucket, transient listing failures retried as
    uploads are."""
    check = with_retries(refuse_stored_job, storage_policy(settings))
    await check(user_id, job_id, storage, settings.bucket)


@task(name="undo-uploads", task_run_name=run_name("undo"), cache_policy=NO_CACHE)
async def undo_uploads(job_id: str, journal: UploadJournal, storage: StorageBackend) -> list[str]:
    """Remove what this run stored whose bytes are still the ones it wrote (storage errors keep
    the objects: see :func:`~genjobs.storage.provenance.undo_writes`); log what is kept and
    why; then discard the journal."""
    logger = run_logger(__name__)
    try:
        report = await asyncio.to_thread(undo_writes, storage, journal.writes)
    finally:
        journal.discard()
    for path, reason in report.kept.items():
        logger.warning("Kept %s of job %s: %s.", path, job_id, reason)
    logger.info("Removed %d object(s) that this run of job %s stored.", len(report.removed), job_id)
    return report.removed
