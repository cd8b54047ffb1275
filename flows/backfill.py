"""Backfill: copy the legacy buckets' objects onto the contract layout, and roll that back.

``backfill_legacy_buckets`` lists the eleven legacy buckets (contract section 7), maps every
object onto ``{user_id}/{job_id}/{index}.{ext}`` in the target bucket and, unless it is a dry
run (the default), copies in batches with bounded concurrency (the next batch's target folders
are listed while a batch copies): each copy is checked before it
counts (its listed size and MD5 ETag, or, in a run that removes its sources, read back with the
source's size and SHA-256), its missing ``{index}.thumb.webp`` is made, and
every step lands in the manifest (JSON lines, see :mod:`genjobs.backfill.manifest`), which is
also the checkpoint a later or resumed run starts from. Nothing pre-existing is overwritten,
nor a verified copy that someone changed since (a conflict); sources are removed only on
request and only once their copy is verified and recorded.

``rollback_backfill`` removes exactly what the manifest says the backfill created, where it
still holds the bytes the backfill wrote; other bytes there are listed as conflicts and stay.

With the project database configured, each verified copy is recorded in
``public.backfilled_objects`` (the cleanup never removes a recorded copy), and a source is
removed (``delete_sources``) only after its copy's record is written; without one,
``delete_sources`` is refused.

Neither imports torch: they run on CPU workers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    aupdate_progress_artifact,
)
from prefect.runtime import flow_run as current_flow_run

from blocks.connections import aload_connections
from flows.entry_settings import entry_settings
from genjobs.backfill.legacy_paths import LEGACY_BUCKETS, VideoJobLookup
from genjobs.backfill.manifest import ManifestWriter, load_manifest
from genjobs.backfill.plan import BackfillPlan, BucketInventory, batched, build_plan
from genjobs.backfill.report import (
    MAX_ROWS,
    BackfillSummary,
    RollbackSummary,
    plan_markdown,
    rollback_markdown,
    run_markdown,
)
from genjobs.backfill.rollback import RollbackPlan, apply_rollback, plan_rollback
from genjobs.backfill.run_state import BackfillRun
from genjobs.backfill.transfer import ContentCheck
from genjobs.db.sql import DSN_SETTING
from genjobs.db.video_jobs import load_video_jobs
from genjobs.errors import BackfillIncomplete, BackfillRefused
from genjobs.settings import Settings
from genjobs.storage.base import StorageBackend
from tasks.backfill import (
    check_target_bucket,
    forget_backfilled_copies,
    hash_contents,
    inventory_bucket,
    remove_objects,
)
from tasks.backfill_run import BackfillSteps, TargetProber
from tasks.retries import database_policy, storage_policy, with_retries

DEFAULT_TARGET_BUCKET = "workspace-temp"
LIST_CONCURRENCY = 4
"""Folders a rollback lists at the same time."""


def default_manifest_path(settings: Settings, target_bucket: str) -> Path:
    """``{home}/backfill/{target_bucket}.manifest.jsonl``: one checkpoint per target bucket."""
    return settings.home / "backfill" / f"{target_bucket}.manifest.jsonl"


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _summary(plan: BackfillPlan, dry_run: bool, manifest_path: Path) -> BackfillSummary:
    return BackfillSummary(
        dry_run=dry_run,
        target_bucket=plan.target_bucket,
        manifest_path=str(manifest_path),
        listed=plan.listed_objects,
        mapped=len(plan.mapped),
        unmappable=len(plan.unmappable),
        unmappable_by_reason=dict(Counter(u.reason for u in plan.unmappable)),
        folder_entries=plan.folder_entries,
        outside_window=plan.outside_window,
        collision_groups=len(plan.collision_groups),
        missing_buckets=plan.missing_buckets,
        failed_buckets=plan.failed_buckets,
    )


async def _inventory(
    bucket_names: list[str], storage: StorageBackend, settings: Settings
) -> list[BucketInventory]:
    task_obj = with_retries(inventory_bucket, storage_policy(settings))

    async def one(bucket: str) -> BucketInventory:
        try:
            inventory: BucketInventory = await task_obj(storage, bucket)
            return inventory
        except Exception as exc:
            get_run_logger().error("Listing the legacy bucket %s failed for good: %s", bucket, exc)
            return BucketInventory(bucket=bucket, error=str(exc))

    return list(await asyncio.gather(*(one(bucket) for bucket in bucket_names)))


def _video_lookup(settings: Settings) -> VideoJobLookup | None:
    if settings.database_dsn is None:
        return None
    found = load_video_jobs(settings.database_dsn.get_secret_value())
    return found.get


def _log_plan(plan: BackfillPlan, summary: BackfillSummary) -> None:
    logger = get_run_logger()
    logger.info(
        "Backfill plan into %s: %d object(s) listed, %d mappable, %d unmappable, "
        "%d collision group(s), %d outside the window; missing buckets: %s.",
        plan.target_bucket,
        summary.listed,
        summary.mapped,
        summary.unmappable,
        summary.collision_groups,
        summary.outside_window,
        ", ".join(summary.missing_buckets) or "none",
    )
    per_bucket = Counter(item.source.bucket for item in plan.mapped)
    for inventory in plan.inventories:
        logger.info(
            "Plan for %s: %d object(s), %d to map onto %s.",
            inventory.bucket,
            len(inventory.objects),
            per_bucket.get(inventory.bucket, 0),
            plan.target_bucket,
        )
    for item in plan.mapped[:MAX_ROWS]:
        logger.debug("Plan: %s -> %s/%s", item.key, item.target_bucket, item.target_path)


def _flow_run_id() -> str | None:
    run_id = current_flow_run.id
    return str(run_id) if run_id else None


@flow(name="backfill-legacy-buckets", flow_run_name="backfill-{target_bucket}")
async def backfill_legacy_buckets(
    dry_run: bool = True,
    buckets: list[str] | None = None,
    target_bucket: str = DEFAULT_TARGET_BUCKET,
    batch_size: int = 50,
    concurrency: int = 4,
    delete_sources: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
    manifest_path: str | None = None,
    max_objects_per_second: float | None = None,
) -> BackfillSummary:
    """Copy the legacy buckets' objects onto the contract layout (dry run by default).

    Args:
        dry_run: Only list, plan and report (as the ``backfill-plan`` artifact); write nothing.
        buckets: Legacy buckets to visit; default all eleven.
        target_bucket: Where copies go.
        batch_size: Sources per batch; the manifest is synced to disk after each.
        concurrency: Sources copied at the same time within a batch.
        delete_sources: Remove each source once its copy is verified and recorded in
            ``public.backfilled_objects`` (refused without a database).
        since: Only sources created at or after this moment (UTC when naive).
        until: Only sources created before this moment.
        manifest_path: The manifest file; default ``{home}/backfill/{target}.manifest.jsonl``.
        max_objects_per_second: Start at most this many copies per second.
    """
    if batch_size < 1 or concurrency < 1:
        raise ValueError(
            f"batch_size and concurrency must be at least 1, got {batch_size} and {concurrency}"
        )
    since, until = _aware(since), _aware(until)
    if since is not None and until is not None and since >= until:
        raise ValueError(f"since ({since}) must be before until ({until})")
    logger = get_run_logger()
    connections = await aload_connections(entry_settings(), renders=False)
    settings, storage = connections.settings, connections.storage
    dsn = settings.database_dsn.get_secret_value() if settings.database_dsn else None
    if delete_sources and dsn is None:
        raise BackfillRefused(
            "delete_sources needs the project database, where each copy is recorded before its "
            f"source goes (the cleanup never removes a recorded copy): set {DSN_SETTING} "
            "for the worker, or run without delete_sources"
        )
    manifest_file = (
        Path(manifest_path) if manifest_path else default_manifest_path(settings, target_bucket)
    )
    manifest = load_manifest(manifest_file)
    lookup = await asyncio.to_thread(_video_lookup, settings)
    inventories = await _inventory(list(buckets or LEGACY_BUCKETS), storage, settings)
    plan = build_plan(inventories, target_bucket, lookup, since, until)
    summary = _summary(plan, dry_run, manifest_file)
    _log_plan(plan, summary)

    if dry_run:
        verified = {key for key, state in manifest.states.items() if state.verified}
        summary.verified_earlier = sum(1 for item in plan.mapped if item.key in verified)
        await acreate_markdown_artifact(
            plan_markdown(plan, summary, verified, str(manifest_file)),
            key="backfill-plan",
            description="Legacy backfill plan (dry run)",
        )
        logger.info("Dry run: nothing was written.")
        return summary

    await with_retries(check_target_bucket, storage_policy(settings))(storage, target_bucket)
    if dsn is None:
        logger.warning(
            "No database is configured (%s): the copies are not recorded in "
            "public.backfilled_objects, so no source may be removed and the cleanup cannot "
            "tell them from other objects; run again with the database to record them.",
            DSN_SETTING,
        )
    with ManifestWriter(manifest, run_id=_flow_run_id()) as writer:
        run = BackfillRun(
            plan=plan,
            writer=writer,
            cross_bucket_server_copy=storage.server_side_copy_across_buckets,
            # A source is removed only once its copy was read back with the same SHA-256.
            read_back=delete_sources,
        )
        steps = BackfillSteps(run, storage, settings, concurrency, max_objects_per_second, dsn)
        run.record_unmappable()
        primaries, duplicates = await steps.resolve_collisions()
        work = plan.copies + primaries
        progress = await acreate_progress_artifact(
            0.0, key="backfill-progress", description="Legacy backfill progress"
        )
        async with contextlib.aclosing(steps.probed_ahead(batched(work, batch_size))) as batches:
            async for number, batch, probed in batches:
                await steps.copy_batch(number, batch, probed)
                writer.sync()
                recorded = await steps.record_copies(batch)
                if delete_sources:
                    await steps.remove_sources(batch, recorded)
                done = min(number * batch_size, len(work))
                await aupdate_progress_artifact(progress, 99.0 * done / len(work))
                logger.info("Batch %d done: %d of %d source(s) handled.", number, done, len(work))
        verified_duplicates = run.record_duplicates(duplicates)
        recorded = await steps.record_copies(verified_duplicates)
        if delete_sources:
            await steps.remove_sources(verified_duplicates, recorded)
        await aupdate_progress_artifact(progress, 100.0)

    summary.outcomes = dict(
        Counter(r.outcome for r in run.records if r.outcome not in ("unmappable", "source_removed"))
    )
    summary.verified_earlier = run.verified_earlier
    summary.created_objects = run.created_objects
    summary.bytes_copied = run.bytes_copied
    summary.sources_removed = run.sources_removed
    summary.copies_recorded = run.copies_recorded
    await acreate_markdown_artifact(
        run_markdown(plan, summary, run.records),
        key="backfill-report",
        description="Legacy backfill report",
    )
    logger.info(
        "Backfill into %s finished: %s; %d verified earlier, %d object(s) created, "
        "%d source(s) removed.",
        target_bucket,
        summary.outcomes or "nothing to do",
        summary.verified_earlier,
        summary.created_objects,
        summary.sources_removed,
    )
    failed = summary.outcomes.get("failed", 0)
    if failed:
        raise BackfillIncomplete(
            f"{failed} source(s) still failed after their retries; they are "
            f"in the manifest {manifest_file} and a later run retries them"
        )
    return summary


async def _forget_removed_copies(plan: RollbackPlan, removed: set[str], settings: Settings) -> None:
    """Delete the ``backfilled_objects`` rows of the targets the rollback removed."""
    if settings.database_dsn is None:
        return
    copies = [
        (e.state.source_bucket, e.state.source_path, bucket, e.state.target_path)
        for bucket, entries in plan.entries.items()
        for e in entries
        if e.state.target_path and f"{bucket}/{e.state.target_path}" in removed
    ]
    if copies:
        forget = with_retries(forget_backfilled_copies, database_policy(settings))
        await forget(settings.database_dsn.get_secret_value(), copies)


@flow(name="rollback-backfill", flow_run_name="rollback-backfill")
async def rollback_backfill(
    manifest_path: str | None = None, dry_run: bool = True
) -> RollbackSummary:
    """Remove exactly the objects the backfill created, as its manifest records them.

    Each object is compared with what the backfill wrote (MD5 ETag or SHA-256) before it goes.
    Pre-existing targets and thumbnails stay; so do copies whose source was removed (they are
    the only copy now) and objects holding other bytes (someone else wrote there), which are
    listed as conflicts. With a database, the removed copies' ``backfilled_objects`` rows go.

    Args:
        manifest_path: The backfill's manifest; default that of a backfill into
            ``workspace-temp`` (``{home}/backfill/workspace-temp.manifest.jsonl``).
        dry_run: Only report what would be removed.
    """
    logger = get_run_logger()
    connections = await aload_connections(entry_settings(), renders=False)
    settings, storage = connections.settings, connections.storage
    path = (
        Path(manifest_path)
        if manifest_path
        else default_manifest_path(settings, DEFAULT_TARGET_BUCKET)
    )
    if not path.is_file():
        raise FileNotFoundError(f"No backfill manifest at {path}")
    manifest = load_manifest(path)
    hash_task = with_retries(hash_contents, storage_policy(settings))

    async def hasher(checks: list[ContentCheck]) -> list[str | None]:
        hashes: list[str | None] = await hash_task(storage, checks, LIST_CONCURRENCY)
        return hashes

    plan = await plan_rollback(
        manifest, TargetProber.using(storage, settings, LIST_CONCURRENCY), hasher
    )
    summary = RollbackSummary(
        dry_run=dry_run,
        manifest_path=str(path),
        removed=plan.to_remove,
        kept=plan.kept,
        conflicts=plan.conflicts,
    )
    if not dry_run:
        remove_task = with_retries(remove_objects, storage_policy(settings))

        async def remove(bucket: str, paths: list[str]) -> list[str]:
            removed: list[str] = await remove_task(storage, bucket, paths)
            return removed

        with ManifestWriter(manifest, run_id=_flow_run_id()) as writer:
            summary.removed = await apply_rollback(plan, writer, remove)
        await _forget_removed_copies(plan, set(summary.removed), settings)
    logger.info(
        "Rollback%s: %d object(s) %s, %d kept (%d conflict(s)).",
        " dry run" if dry_run else "",
        len(summary.removed),
        "would be removed" if dry_run else "removed",
        len(summary.kept),
        len(summary.conflicts),
    )
    await acreate_markdown_artifact(
        rollback_markdown(summary),
        key="backfill-rollback",
        description="Backfill rollback " + ("plan (dry run)" if dry_run else "report"),
    )
    return summary


__all__ = [
    "backfill_legacy_buckets",
    "default_manifest_path",
    "rollback_backfill",
]
