"""The backfill's Prefect tasks: one storage or database step each, retried only for transient
failures.

The copy step works on a whole batch (a Prefect task run per object would cost more than the
copy itself); objects of a batch that hit a transient error get one task each, retried. Each
task takes the storage backend (or the database DSN) it uses as an argument, runs its
synchronous calls in worker threads and returns small values (listings, fingerprints,
outcomes), never object bytes. The decorators name only what is retried; how often is the
policy of tasks/retries.py the caller applies (storage or database).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

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
from genjobs.storage.base import ObjectInfo, StorageBackend
from tasks.retries import retry_if_transient

STEP_OPTIONS: dict[str, Any] = {"retry_condition_fn": retry_if_transient, "cache_policy": NO_CACHE}
"""What every backfill and cleanup task declares: retried on transient failures only, never
cached (their arguments include the storage backend)."""


@task(name="inventory-bucket", task_run_name="inventory-{bucket}", **STEP_OPTIONS)
async def inventory_bucket(storage: StorageBackend, bucket: str) -> BucketInventory:
    """List every object of a legacy bucket; a missing bucket is recorded, not raised."""
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


@task(name="check-target-bucket", task_run_name="check-{bucket}", **STEP_OPTIONS)
async def check_target_bucket(storage: StorageBackend, bucket: str) -> None:
    """Fail before any copy when the target bucket is missing."""
    await asyncio.to_thread(storage.list, bucket, "genjobs-backfill-probe/")


@task(name="probe-targets", task_run_name="probe-{bucket}", **STEP_OPTIONS)
async def probe_targets(
    storage: StorageBackend, bucket: str, prefixes: list[str], concurrency: int
) -> Listing:
    """What already exists under each job folder of the target bucket.

    Folders that fail transiently come back in ``failed``; :func:`probe_target` retries them.
    """
    return await asyncio.to_thread(list_prefixes, storage, bucket, prefixes, concurrency)


@task(name="probe-target", task_run_name="probe-{prefix}", **STEP_OPTIONS)
async def probe_target(storage: StorageBackend, bucket: str, prefix: str) -> dict[str, ObjectInfo]:
    """What already exists under one folder of the target bucket; retried when transient."""
    listing = await asyncio.to_thread(storage.list, bucket, prefix)
    return {info.path: info for info in listing}


@task(name="fingerprint-sources", **STEP_OPTIONS)
async def fingerprint_sources(
    storage: StorageBackend, items: list[PlannedCopy]
) -> list[Fingerprint | None]:
    """Size and checksums of each source (None for one that no longer exists)."""

    def one(item: PlannedCopy) -> Fingerprint | None:
        try:
            return fingerprint(storage.get(item.source.bucket, item.source.path))
        except StorageError as exc:
            if exc.status == "404" and not exc.retryable:
                return None
            raise

    return list(await asyncio.gather(*(asyncio.to_thread(one, item) for item in items)))


@task(name="copy-batch", task_run_name="copy-batch-{number}", **STEP_OPTIONS)
async def copy_batch(
    storage: StorageBackend,
    number: int,
    orders: list[CopyOrder],
    target_bucket: str,
    concurrency: int,
    max_objects_per_second: float | None = None,
) -> list[CopyOutcome]:
    """Copy, verify and thumbnail a batch of sources on ``concurrency`` threads.

    Each object's outcome comes back, transient failures included (``transient=True``): the
    caller hands those to :func:`copy_object`, which retries them one by one.
    """
    outcomes = await asyncio.to_thread(
        run_copy_batch,
        storage,
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


@task(name="copy-object", task_run_name="copy-{order.item.key}", **STEP_OPTIONS)
async def copy_object(storage: StorageBackend, order: CopyOrder) -> CopyOutcome:
    """Copy, verify and thumbnail one source; transient failures raise, so the task retries."""
    return await asyncio.to_thread(backfill_single, storage, order)


@task(name="remove-objects", task_run_name="remove-{bucket}", **STEP_OPTIONS)
async def remove_objects(storage: StorageBackend, bucket: str, paths: list[str]) -> list[str]:
    """Delete objects; returns those that existed and were removed."""
    removed = await asyncio.to_thread(storage.remove, bucket, paths)
    get_run_logger().info("Removed %d of %d object(s) from %s.", len(removed), len(paths), bucket)
    return removed


@task(name="record-backfilled-copies", **STEP_OPTIONS)
async def record_backfilled_copies(dsn: str, copies: list[BackfilledCopy]) -> int:
    """Write the verified copies into ``public.backfilled_objects``; returns how many."""
    return await asyncio.to_thread(record_copies, dsn, copies)


@task(name="forget-backfilled-copies", **STEP_OPTIONS)
async def forget_backfilled_copies(dsn: str, copies: list[tuple[str, str, str, str]]) -> None:
    """Delete the ``backfilled_objects`` rows of copies a rollback removed."""
    await asyncio.to_thread(forget_copies, dsn, copies)


@task(name="hash-contents", **STEP_OPTIONS)
async def hash_contents(
    storage: StorageBackend, checks: list[ContentCheck], concurrency: int
) -> list[str | None]:
    """The SHA-256 of each object (or of the thumbnail it makes); None for one that is gone."""
    return await asyncio.to_thread(content_hashes, storage, checks, concurrency)
