"""The backfill's Prefect tasks: one storage step each, retried only for transient failures.

The copy step works on a whole batch (a Prefect task run per object would cost more than the
copy itself); objects of a batch that hit a transient error get one task each, retried. Each
task runs its synchronous storage calls in worker threads and returns small values (listings,
fingerprints, outcomes), never object bytes. Retry counts and delays are declared here; the
flows set them from the settings with ``with_options``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from genjobs.backfill.plan import BucketInventory, PlannedCopy
from genjobs.backfill.transfer import (
    ContentCheck,
    CopyOrder,
    CopyOutcome,
    Fingerprint,
    Listing,
    backfill_single,
    content_hashes,
    fingerprint,
    list_prefixes,
    run_copy_batch,
)
from genjobs.db.backfilled_objects import BackfilledCopy, forget_copies, record_copies
from genjobs.errors import StorageError
from genjobs.runtime import get_runtime
from genjobs.storage.base import ObjectInfo
from tasks.retries import retry_if_transient

RETRY_OPTIONS: dict[str, Any] = {
    "retries": 4,
    "retry_delay_seconds": exponential_backoff(backoff_factor=1),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_if_transient,
    "cache_policy": NO_CACHE,
}


@task(name="inventory-bucket", task_run_name="inventory-{bucket}", **RETRY_OPTIONS)
async def inventory_bucket(bucket: str) -> BucketInventory:
    """List every object of a legacy bucket; a missing bucket is recorded, not raised."""
    storage = get_runtime().storage
    try:
        objects = await asyncio.to_thread(storage.list, bucket)
    except StorageError as exc:
        if exc.retryable:
            raise
        if exc.status == "404":
            get_run_logger().info("The legacy bucket %s does not exist; skipping it.", bucket)
            return BucketInventory(bucket=bucket, missing=True)
        get_run_logger().warning("Listing the legacy bucket %s failed: %s", bucket, exc)
        return BucketInventory(bucket=bucket, error=f"{exc.code}: {exc.message}")
    get_run_logger().info("The legacy bucket %s holds %d object(s).", bucket, len(objects))
    return BucketInventory(bucket=bucket, objects=tuple(objects))


@task(name="check-target-bucket", task_run_name="check-{bucket}", **RETRY_OPTIONS)
async def check_target_bucket(bucket: str) -> None:
    """Fail before any copy when the target bucket is missing."""
    storage = get_runtime().storage
    await asyncio.to_thread(storage.list, bucket, "genjobs-backfill-probe/")


@task(name="probe-targets", task_run_name="probe-{bucket}", **RETRY_OPTIONS)
async def probe_targets(bucket: str, prefixes: list[str], concurrency: int) -> Listing:
    """What already exists under each job folder of the target bucket.

    Folders that fail transiently come back in ``failed``; :func:`probe_target` retries them.
    """
    storage = get_runtime().storage
    return await asyncio.to_thread(list_prefixes, storage, bucket, prefixes, concurrency)


@task(name="probe-target", task_run_name="probe-{prefix}", **RETRY_OPTIONS)
async def probe_target(bucket: str, prefix: str) -> dict[str, ObjectInfo]:
    """What already exists under one folder of the target bucket; retried when transient."""
    listing = await asyncio.to_thread(get_runtime().storage.list, bucket, prefix)
    return {info.path: info for info in listing}


@task(name="fingerprint-sources", **RETRY_OPTIONS)
async def fingerprint_sources(items: list[PlannedCopy]) -> list[Fingerprint | None]:
    """Size and checksums of each source (None for one that no longer exists)."""
    storage = get_runtime().storage

    def one(item: PlannedCopy) -> Fingerprint | None:
        try:
            return fingerprint(storage.get(item.source.bucket, item.source.path))
        except StorageError as exc:
            if exc.status == "404" and not exc.retryable:
                return None
            raise

    return list(await asyncio.gather(*(asyncio.to_thread(one, item) for item in items)))


@task(name="copy-batch", task_run_name="copy-batch-{number}", **RETRY_OPTIONS)
async def copy_batch(
    number: int,
    orders: list[CopyOrder],
    target_bucket: str,
    concurrency: int,
    max_objects_per_second: float | None = None,
) -> list[CopyOutcome]:
    """Copy, verify and thumbnail a batch of sources on ``concurrency`` threads.

    Each object's outcome comes back, transient failures included (``transient=True``): the
    flow hands those to :func:`copy_object`, which retries them one by one.
    """
    outcomes = await asyncio.to_thread(
        run_copy_batch,
        get_runtime().storage,
        orders,
        target_bucket=target_bucket,
        concurrency=concurrency,
        max_objects_per_second=max_objects_per_second,
    )
    transient = sum(1 for outcome in outcomes if outcome.transient)
    if transient:
        get_run_logger().warning(
            "%d of %d object(s) of batch %d hit transient storage errors; retrying each alone.",
            transient,
            len(orders),
            number,
        )
    return outcomes


@task(name="copy-object", task_run_name="copy-{order.item.key}", **RETRY_OPTIONS)
async def copy_object(order: CopyOrder) -> CopyOutcome:
    """Copy, verify and thumbnail one source; transient failures raise, so the task retries."""
    return await asyncio.to_thread(backfill_single, get_runtime().storage, order)


@task(name="remove-objects", task_run_name="remove-{bucket}", **RETRY_OPTIONS)
async def remove_objects(bucket: str, paths: list[str]) -> list[str]:
    """Delete objects; returns those that existed and were removed."""
    removed = await asyncio.to_thread(get_runtime().storage.remove, bucket, paths)
    get_run_logger().info("Removed %d of %d object(s) from %s.", len(removed), len(paths), bucket)
    return removed


@task(name="record-backfilled-copies", **RETRY_OPTIONS)
async def record_backfilled_copies(dsn: str, copies: list[BackfilledCopy]) -> int:
    """Write the verified copies into ``public.backfilled_objects``; returns how many."""
    return await asyncio.to_thread(record_copies, dsn, copies)


@task(name="forget-backfilled-copies", **RETRY_OPTIONS)
async def forget_backfilled_copies(dsn: str, copies: list[tuple[str, str, str, str]]) -> None:
    """Delete the ``backfilled_objects`` rows of copies a rollback removed."""
    await asyncio.to_thread(forget_copies, dsn, copies)


@task(name="hash-contents", **RETRY_OPTIONS)
async def hash_contents(checks: list[ContentCheck], concurrency: int) -> list[str | None]:
    """The SHA-256 of each object (or of the thumbnail it makes); None for one that is gone."""
    return await asyncio.to_thread(content_hashes, get_runtime().storage, checks, concurrency)
