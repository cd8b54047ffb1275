"""Backfill: copy the legacy buckets' objects onto the contract layout, and roll that back.

``backfill_legacy_buckets`` lists the eleven legacy buckets (contract section 7), maps every
object onto ``{user_id}/{job_id}/{index}.{ext}`` in the target bucket and, unless it is a dry
run (the default), copies in batches with bounded concurrency: each copy is read back and
checked (size and SHA-256) before it counts, its missing ``{index}.thumb.webp`` is made, and
every step lands in the manifest (JSON lines, see :mod:`genjobs.backfill.manifest`), which is
also the checkpoint a later or resumed run starts from. Nothing pre-existing is overwritten;
sources are removed only on request and only once their copy is verified.

``rollback_backfill`` removes exactly what the manifest says the backfill created.

Neither imports torch: they run on CPU workers.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    aupdate_progress_artifact,
)
from prefect.runtime import flow_run as current_flow_run

from genjobs.backfill.jobs_lookup import load_video_jobs
from genjobs.backfill.legacy_paths import LEGACY_BUCKETS, VideoJobLookup
from genjobs.backfill.manifest import (
    EntryState,
    Manifest,
    ManifestRecord,
    ManifestWriter,
    Outcome,
    load_manifest,
)
from genjobs.backfill.plan import BackfillPlan, BucketInventory, PlannedCopy, batched, build_plan
from genjobs.backfill.report import (
    MAX_ROWS,
    BackfillSummary,
    RollbackSummary,
    plan_markdown,
    rollback_markdown,
    run_markdown,
)
from genjobs.backfill.steps import (
    check_target_bucket,
    copy_batch,
    copy_object,
    fingerprint_sources,
    inventory_bucket,
    probe_targets,
    remove_objects,
)
from genjobs.backfill.transfer import CopyOrder, CopyOutcome, Fingerprint, job_prefix_of
from genjobs.errors import JobError
from genjobs.runtime import get_runtime
from genjobs.settings import Settings
from genjobs.storage.base import ObjectInfo, copies_across_buckets_server_side

DEFAULT_TARGET_BUCKET = "workspace-temp"
REMOVE_CHUNK = 100
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")


class BackfillIncomplete(JobError):
    """Some sources still failed after their retries; a later run picks them up."""

    code = "BACKFILL_INCOMPLETE"
    retryable = True


def default_manifest_path(settings: Settings, target_bucket: str) -> Path:
    """``{home}/backfill/{target_bucket}.manifest.jsonl``: one checkpoint per target bucket."""
    return settings.home / "backfill" / f"{target_bucket}.manifest.jsonl"


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _retrying(task_obj: Any, settings: Settings) -> Any:
    """The task with the settings' retry count and exponential delays."""
    retries = settings.upload_retries
    base = settings.upload_retry_base_seconds
    return task_obj.with_options(
        retries=retries, retry_delay_seconds=[base * 2**attempt for attempt in range(retries)]
    )


def _record(item: PlannedCopy, outcome: Outcome, **fields: Any) -> ManifestRecord:
    return ManifestRecord(
        outcome=outcome,
        source_bucket=item.source.bucket,
        source_path=item.source.path,
        target_bucket=item.target_bucket,
        target_path=fields.pop("target_path", item.target_path),
        **fields,
    )


def _fingerprint_fields(printed: Fingerprint | None) -> dict[str, Any]:
    if printed is None:
        return {}
    return {"size": printed.size, "sha256": printed.sha256, "md5": printed.md5}


def _verified_earlier(
    state: EntryState | None,
    item: PlannedCopy,
    target: ObjectInfo | None,
    thumbnail: ObjectInfo | None,
) -> bool:
    """The manifest says this source was verified and the target is still there, unchanged."""
    if state is None or not state.verified or target is None:
        return False
    if (state.target_bucket, state.target_path) != (item.target_bucket, item.target_path):
        return False
    if target.size != state.size:
        return False
    if target.etag and state.md5 and _MD5_HEX.match(target.etag) and target.etag != state.md5:
        return False
    return thumbnail is not None or state.thumbnail_path is None


@dataclass
class _Run:
    """What one backfill run shares between its batches."""

    plan: BackfillPlan
    writer: ManifestWriter
    copy_task: Any
    retry_task: Any
    remove_task: Any
    concurrency: int
    max_objects_per_second: float | None
    cross_bucket_server_copy: bool
    records: list[ManifestRecord] = field(default_factory=list)
    verified_earlier: int = 0
    created_objects: int = 0
    bytes_copied: int = 0
    sources_removed: int = 0

    @property
    def manifest(self) -> Manifest:
        return self.writer.manifest

    def append(self, record: ManifestRecord) -> ManifestRecord:
        written = self.writer.append(record)
        if record.outcome != "started":
            self.records.append(written)
        return written

    def server_copy_for(self, item: PlannedCopy) -> bool:
        """Let the server copy when it can, and when it would keep the right content type."""
        same_bucket = item.source.bucket == item.target_bucket
        if not (same_bucket or self.cross_bucket_server_copy):
            return False
        return item.listed_content_type == item.source.content_type


def _order(run: _Run, item: PlannedCopy, found: dict[str, ObjectInfo]) -> CopyOrder | None:
    """The copy order for one source, its ``started`` record written; None if verified before."""
    state = run.manifest.state(item.key)
    target = found.get(item.target_path)
    thumbnail = found.get(item.thumbnail_path)
    if _verified_earlier(state, item, target, thumbnail):
        run.verified_earlier += 1
        return None
    order = CopyOrder(
        item=item,
        target_preexisting=target is not None and not (state is not None and state.owns_target),
        thumbnail_preexisting=thumbnail is not None
        and not (state is not None and state.owns_thumbnail),
        server_copy=run.server_copy_for(item),
    )
    run.append(
        _record(
            item,
            "started",
            thumbnail_path=item.thumbnail_path,
            target_preexisting=order.target_preexisting,
            thumbnail_preexisting=order.thumbnail_preexisting,
        )
    )
    return order


def _record_outcome(run: _Run, item: PlannedCopy, outcome: CopyOutcome) -> None:
    if outcome.server_copy_refused:
        run.cross_bucket_server_copy = False
    if outcome.written:
        run.created_objects += 1
        run.bytes_copied += outcome.fingerprint.size if outcome.fingerprint else 0
    run.created_objects += int(outcome.thumbnail_written)
    verified = outcome.outcome in ("copied", "already_present")
    run.append(
        _record(
            item,
            outcome.outcome,
            thumbnail_path=outcome.thumbnail_path if verified else None,
            content_type=item.source.content_type if verified else None,
            method=outcome.method,
            created_target=outcome.created_target,
            created_thumbnail=outcome.created_thumbnail,
            detail=outcome.detail,
            **_fingerprint_fields(outcome.fingerprint),
        )
    )


async def _copy_batch(run: _Run, number: int, batch: list[PlannedCopy], probe: Any) -> None:
    """Probe the batch's targets, record what starts, copy, and record every outcome."""
    prefixes = sorted({job_prefix_of(item) for item in batch})
    found = await probe(run.plan.target_bucket, prefixes, run.concurrency)
    orders = [order for item in batch if (order := _order(run, item, found)) is not None]
    if not orders:
        return
    try:
        outcomes = await run.copy_task(
            number, orders, run.plan.target_bucket, run.concurrency, run.max_objects_per_second
        )
    except Exception as exc:
        get_run_logger().error("Batch %d failed as a whole: %s", number, exc)
        outcomes = [
            CopyOutcome(key=o.item.key, outcome="failed", detail=f"batch: {exc}") for o in orders
        ]
    retried = await _retry_transient(run, orders, outcomes)
    for order, outcome in zip(orders, retried, strict=True):
        _record_outcome(run, order.item, outcome)


async def _retry_transient(
    run: _Run, orders: list[CopyOrder], outcomes: list[CopyOutcome]
) -> list[CopyOutcome]:
    """Run each transiently failed object again as its own retried task."""
    semaphore = asyncio.Semaphore(run.concurrency)

    async def again(order: CopyOrder, outcome: CopyOutcome) -> CopyOutcome:
        if not outcome.transient:
            return outcome
        async with semaphore:
            try:
                result: CopyOutcome = await run.retry_task(order)
                return result
            except Exception as exc:
                return CopyOutcome(key=order.item.key, outcome="failed", detail=str(exc))

    return list(await asyncio.gather(*(again(o, r) for o, r in zip(orders, outcomes, strict=True))))


async def _remove_sources(run: _Run, items: list[PlannedCopy]) -> None:
    """Delete verified sources (never anything else), recording each removal."""
    by_bucket: dict[str, list[PlannedCopy]] = defaultdict(list)
    for item in items:
        state = run.manifest.state(item.key)
        if state is not None and state.verified and not state.source_removed:
            by_bucket[item.source.bucket].append(item)
    for bucket, bucket_items in by_bucket.items():
        try:
            removed = set(await run.remove_task(bucket, [i.source.path for i in bucket_items]))
        except Exception as exc:
            get_run_logger().warning(
                "Sources in %s were not removed (%s); a later run with "
                "delete_sources removes them.",
                bucket,
                exc,
            )
            continue
        for item in bucket_items:
            if item.source.path in removed:
                run.append(_record(item, "source_removed"))
                run.sources_removed += 1


async def _resolve_collisions(
    run: _Run, fingerprint_task: Any
) -> tuple[list[PlannedCopy], list[tuple[PlannedCopy, PlannedCopy, Fingerprint | None]]]:
    """Compare the bytes of sources that map onto one asset.

    Returns:
        The one source to copy per group of identical sources, and the others as
        ``(duplicate, primary, fingerprint)``. Groups whose sources differ are recorded as
        ``collision`` and copy nothing.
    """
    primaries: list[PlannedCopy] = []
    duplicates: list[tuple[PlannedCopy, PlannedCopy, Fingerprint | None]] = []
    open_groups: list[list[PlannedCopy]] = []
    for group in run.plan.collision_groups:
        states = [run.manifest.state(item.key) for item in group]
        if all(s is not None and s.verified for s in states):
            primary = next(
                (
                    i
                    for i, s in zip(group, states, strict=True)
                    if s is not None and s.outcome != "duplicate"
                ),
                group[0],
            )
            primaries.append(primary)
            duplicates += [(item, primary, None) for item in group if item is not primary]
        else:
            open_groups.append(group)
    flat = [item for group in open_groups for item in group]
    all_prints: list[Fingerprint | None] = await fingerprint_task(flat) if flat else []
    offset = 0
    for group in open_groups:
        prints = all_prints[offset : offset + len(group)]
        offset += len(group)
        shas = {p.sha256 if p is not None else None for p in prints}
        exts = {item.source.ext for item in group}
        if None not in shas and len(shas) == 1 and len(exts) == 1:
            primaries.append(group[0])
            duplicates += [
                (item, group[0], printed)
                for item, printed in zip(group[1:], prints[1:], strict=True)
            ]
            continue
        for item, printed in zip(group, prints, strict=True):
            others = ", ".join(
                f"{o.key} ({p.size if p else 'gone'} B)"
                for o, p in zip(group, prints, strict=True)
                if o is not item
            )
            run.append(
                _record(
                    item,
                    "collision",
                    size=printed.size if printed else None,
                    sha256=printed.sha256 if printed else None,
                    detail=f"maps onto the same asset as {others}; not copied",
                )
            )
    return primaries, duplicates


def _record_duplicates(
    run: _Run, duplicates: list[tuple[PlannedCopy, PlannedCopy, Fingerprint | None]]
) -> list[PlannedCopy]:
    """Record sources identical to a copied one; returns those now verified."""
    verified: list[PlannedCopy] = []
    for item, primary, printed in duplicates:
        primary_state = run.manifest.state(primary.key)
        state = run.manifest.state(item.key)
        if primary_state is None or not primary_state.verified:
            if printed is not None:
                run.append(
                    _record(
                        item,
                        "failed",
                        target_path=primary.target_path,
                        detail=f"its identical source {primary.key} was not copied",
                    )
                )
            continue
        if printed is not None or state is None or state.outcome != "duplicate":
            run.append(
                _record(
                    item,
                    "duplicate",
                    target_path=primary.target_path,
                    thumbnail_path=primary_state.thumbnail_path,
                    size=printed.size if printed else primary_state.size,
                    sha256=printed.sha256 if printed else primary_state.sha256,
                    md5=printed.md5 if printed else primary_state.md5,
                    detail=f"the same bytes as {primary.key}, which was copied",
                )
            )
        verified.append(item)
    return verified


def _record_unmappable(run: _Run) -> None:
    for entry in run.plan.unmappable:
        detail = f"{entry.reason}: {entry.detail}"
        state = run.manifest.state(f"{entry.bucket}/{entry.path}")
        if state is not None and state.outcome == "unmappable" and state.detail == detail:
            continue
        run.append(
            ManifestRecord(
                outcome="unmappable",
                source_bucket=entry.bucket,
                source_path=entry.path,
                detail=detail,
            )
        )


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


async def _inventory(bucket_names: list[str], settings: Settings) -> list[BucketInventory]:
    task_obj = _retrying(inventory_bucket, settings)

    async def one(bucket: str) -> BucketInventory:
        try:
            inventory: BucketInventory = await task_obj(bucket)
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
        delete_sources: Remove each source once its copy is verified.
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
    runtime = get_runtime()
    settings = runtime.settings
    manifest_file = (
        Path(manifest_path) if manifest_path else default_manifest_path(settings, target_bucket)
    )
    manifest = load_manifest(manifest_file)
    lookup = await asyncio.to_thread(_video_lookup, settings)
    inventories = await _inventory(list(buckets or LEGACY_BUCKETS), settings)
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

    await _retrying(check_target_bucket, settings)(target_bucket)
    with ManifestWriter(manifest, run_id=_flow_run_id()) as writer:
        run = _Run(
            plan=plan,
            writer=writer,
            copy_task=_retrying(copy_batch, settings),
            retry_task=_retrying(copy_object, settings),
            remove_task=_retrying(remove_objects, settings),
            concurrency=concurrency,
            max_objects_per_second=max_objects_per_second,
            cross_bucket_server_copy=copies_across_buckets_server_side(runtime.storage),
        )
        _record_unmappable(run)
        primaries, duplicates = await _resolve_collisions(
            run, _retrying(fingerprint_sources, settings)
        )
        work = plan.copies + primaries
        probe = _retrying(probe_targets, settings)
        progress = await acreate_progress_artifact(
            0.0, key="backfill-progress", description="Legacy backfill progress"
        )
        for number, batch in enumerate(batched(work, batch_size), start=1) if work else ():
            await _copy_batch(run, number, batch, probe)
            writer.sync()
            if delete_sources:
                await _remove_sources(run, batch)
            done = min(number * batch_size, len(work))
            await aupdate_progress_artifact(progress, 100.0 * done / len(work))
            logger.info("Batch %d done: %d of %d source(s) handled.", number, done, len(work))
        verified_duplicates = _record_duplicates(run, duplicates)
        if delete_sources:
            await _remove_sources(run, verified_duplicates)

    summary.outcomes = dict(
        Counter(r.outcome for r in run.records if r.outcome not in ("unmappable", "source_removed"))
    )
    summary.verified_earlier = run.verified_earlier
    summary.created_objects = run.created_objects
    summary.bytes_copied = run.bytes_copied
    summary.sources_removed = run.sources_removed
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


def _rollback_candidates(
    manifest: Manifest,
) -> tuple[dict[str, list[tuple[EntryState, list[str]]]], dict[str, str]]:
    """Per target bucket, each source's objects the backfill owns; and what stays, with why."""
    owned: dict[str, list[tuple[EntryState, list[str]]]] = defaultdict(list)
    kept: dict[str, str] = {}
    for state in manifest.states.values():
        if state.target_bucket is None:
            continue
        paths = []
        if state.owns_target and state.target_path:
            paths.append(state.target_path)
        if state.owns_thumbnail and state.thumbnail_path:
            paths.append(state.thumbnail_path)
        if not paths:
            continue
        if state.source_removed:
            for path in paths:
                kept[f"{state.target_bucket}/{path}"] = (
                    f"its source {state.key} was removed, so this is the only copy"
                )
            continue
        owned[state.target_bucket].append((state, paths))
    return owned, kept


async def _existing(probe: Any, bucket: str, paths: list[str]) -> dict[str, ObjectInfo]:
    prefixes = sorted({path.rsplit("/", 1)[0] + "/" for path in paths})
    found: dict[str, ObjectInfo] = {}
    for start in range(0, len(prefixes), REMOVE_CHUNK):
        found.update(await probe(bucket, prefixes[start : start + REMOVE_CHUNK]))
    return found


def _rollback_record(state: EntryState, outcome: Outcome, detail: str) -> ManifestRecord:
    return ManifestRecord(
        outcome=outcome,
        source_bucket=state.source_bucket,
        source_path=state.source_path,
        target_bucket=state.target_bucket,
        target_path=state.target_path,
        detail=detail,
    )


@dataclass
class _RollbackEntry:
    state: EntryState
    remove: list[str]
    changed: str | None = None


@flow(name="rollback-backfill", flow_run_name="rollback-backfill")
async def rollback_backfill(manifest_path: str, dry_run: bool = True) -> RollbackSummary:
    """Remove exactly the objects the backfill created, as its manifest records them.

    Pre-existing targets and thumbnails stay; so do copies whose source was removed (they are
    the only copy now) and copies whose size changed since (someone else wrote there).

    Args:
        manifest_path: The backfill's manifest.
        dry_run: Only report what would be removed.
    """
    logger = get_run_logger()
    settings = get_runtime().settings
    path = Path(manifest_path)
    if not path.is_file():
        raise FileNotFoundError(f"No backfill manifest at {path}")
    manifest = load_manifest(path)
    owned, kept = _rollback_candidates(manifest)
    summary = RollbackSummary(dry_run=dry_run, manifest_path=str(path), kept=kept)
    probe = _retrying(probe_targets, settings)
    plan: dict[str, list[_RollbackEntry]] = defaultdict(list)
    for bucket, states in owned.items():
        existing = await _existing(probe, bucket, [p for _, paths in states for p in paths])
        for state, paths in states:
            entry = _RollbackEntry(state, [])
            for object_path in paths:
                info = existing.get(object_path)
                if info is None:
                    continue
                recorded = state.size if state.created_target else None
                if object_path == state.target_path and recorded not in (None, info.size):
                    entry.changed = (
                        f"changed since the backfill ({info.size} bytes, {recorded} recorded)"
                    )
                    summary.kept[f"{bucket}/{object_path}"] = entry.changed
                    continue
                entry.remove.append(object_path)
            plan[bucket].append(entry)
    summary.removed = sorted(
        f"{b}/{p}" for b, entries in plan.items() for e in entries for p in e.remove
    )
    if dry_run:
        logger.info(
            "Rollback dry run: %d object(s) would be removed, %d kept.",
            len(summary.removed),
            len(summary.kept),
        )
        await acreate_markdown_artifact(
            rollback_markdown(summary),
            key="backfill-rollback",
            description="Backfill rollback plan (dry run)",
        )
        return summary

    remove = _retrying(remove_objects, settings)
    removed_paths: list[str] = []
    with ManifestWriter(manifest, run_id=_flow_run_id()) as writer:
        for bucket, entries in plan.items():
            for start in range(0, len(entries), REMOVE_CHUNK):
                chunk = entries[start : start + REMOVE_CHUNK]
                wanted = [p for e in chunk for p in e.remove]
                removed = set(await remove(bucket, wanted)) if wanted else set()
                removed_paths += [f"{bucket}/{p}" for p in wanted if p in removed]
                for entry in chunk:
                    gone = ", ".join(p for p in entry.remove if p in removed) or "nothing"
                    if entry.changed:
                        writer.append(
                            _rollback_record(
                                entry.state, "rollback_skipped", f"{entry.changed}; removed {gone}"
                            )
                        )
                    else:
                        writer.append(
                            _rollback_record(entry.state, "rolled_back", f"removed {gone}")
                        )
    summary.removed = sorted(removed_paths)
    logger.info("Rollback removed %d object(s); %d kept.", len(summary.removed), len(summary.kept))
    await acreate_markdown_artifact(
        rollback_markdown(summary), key="backfill-rollback", description="Backfill rollback report"
    )
    return summary


__all__ = [
    "BackfillIncomplete",
    "backfill_legacy_buckets",
    "default_manifest_path",
    "rollback_backfill",
]
