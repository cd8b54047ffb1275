"""Cleanup: remove the workspace-temp objects this system provably no longer needs.

``cleanup_workspace`` lists the ``workspace-temp`` bucket (no other) and judges every object
against the project database (``Settings.database_dsn``, env ``GENJOBS_DATABASE_DSN``). An
object goes only when it sits at the contract layout ``{user_id}/{job_id}/{i}.{png|mp4}`` or
``{i}.thumb.webp`` and either

* a ``workspace_assets`` row names it (original or thumbnail), with the path's user and job,
  and every row naming it expired; the rows are deleted too, before their objects; or
* no row names it, its ``jobs`` row is ``failed`` or ``cancelled`` for the path's user, and the
  object is older than ``ttl_days`` (the orphan of a run that never reported an asset).

It never removes objects in other layouts (other producers write there), objects a backend
reference names (``character_scenes.image_url``, ``conversations.last_scene_image``,
``jobs.metadata->>'reference_image_url'``), objects recorded in ``backfilled_objects`` or
objects with an unexpired row. Every object is judged before anything is removed, so a missing
table or a failing query removes nothing. Without a database it removes nothing: a real run
fails naming the setting, a dry run lists the objects old enough to be candidates and says
that nothing can be decided.

Dry run by default: the return value and the ``workspace-cleanup`` artifact list every object
that would go with its reason, and count what stays by reason.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from pydantic import BaseModel, Field

from blocks.connections import aload_connections
from flows.entry_settings import entry_settings
from genjobs.backfill.report import table
from genjobs.db.sql import DSN_SETTING
from genjobs.db.workspace_evidence import Evidence
from genjobs.errors import CleanupRefused
from genjobs.settings import Settings
from genjobs.storage.base import ObjectInfo, StorageBackend
from tasks.backfill import remove_objects
from tasks.cleanup import (
    check_tables_task,
    delete_expired_rows_task,
    list_bucket,
    read_evidence_task,
)
from tasks.retries import database_policy, storage_policy, with_retries

BUCKET = "workspace-temp"
ORPHAN_STATUSES = frozenset({"failed", "cancelled"})

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CONTRACT_PATH = re.compile(
    rf"^(?P<user>{_UUID})/(?P<job>{_UUID})/(?P<index>0|[1-9][0-9]*)\.(?:png|mp4|thumb\.webp)$"
)
"""``{user_id}/{job_id}/{i}.png``, ``{i}.mp4`` or ``{i}.thumb.webp`` (contract section 4.1)."""

KEEP_OTHER_LAYOUT = "not at the contract layout (another producer's file)"
KEEP_BACKFILLED = "a recorded backfill copy"
KEEP_LIVE_ROW = "an unexpired workspace_assets row"
KEEP_ROW_MISMATCH = "a workspace_assets row of another user or job names it"
KEEP_ROW_SIBLING = "its expired row's other object is still needed"
KEEP_NO_JOB = "no workspace_assets row and no jobs row"
KEEP_JOB_OWNER = "its jobs row belongs to another user"
KEEP_YOUNG = "younger than ttl_days"
KEEP_UNDATED = "no created_at in the listing"
UNDECIDED = "older than ttl_days; undecided without the database"


class CleanupCandidate(BaseModel):
    """One object the cleanup removes (or would), and why."""

    path: str
    size: int
    reason: str
    with_rows: bool = False
    """Its expired ``workspace_assets`` rows go first; it goes only if they did."""


class CleanupSummary(BaseModel):
    """What a cleanup run returns."""

    dry_run: bool
    bucket: str = BUCKET
    ttl_days: float
    now: datetime
    cutoff: datetime
    database: bool
    decided: bool
    listed: int = 0
    candidates: list[CleanupCandidate] = Field(default_factory=list)
    kept: dict[str, int] = Field(default_factory=dict)
    removed: int = 0
    bytes_freed: int = 0
    rows_deleted: int = 0
    note: str | None = None


@dataclass(frozen=True)
class Verdict:
    remove: bool
    reason: str
    with_rows: bool = False


def _keep(reason: str) -> Verdict:
    return Verdict(False, reason)


def judge(info: ObjectInfo, evidence: Evidence, now: datetime, cutoff: datetime) -> Verdict:
    """Whether one object may go, and why (see the module docstring)."""
    match = CONTRACT_PATH.match(info.path)
    if match is None:
        return _keep(KEEP_OTHER_LAYOUT)
    user, job = match["user"], match["job"]
    path = info.path
    if path in evidence.references:
        return _keep("referenced by " + ", ".join(sorted(set(evidence.references[path]))))
    if path in evidence.backfilled:
        return _keep(KEEP_BACKFILLED)
    rows = evidence.rows.get(path, [])
    if rows:
        if any((row.user_id, row.job_id) != (user, job) for row in rows):
            return _keep(KEEP_ROW_MISMATCH)
        if any(row.expires_at is None or row.expires_at >= now for row in rows):
            return _keep(KEEP_LIVE_ROW)
        siblings = {
            p
            for row in rows
            for p in (row.temp_storage_path, row.thumbnail_path)
            if p and p != path
        }
        if any(p in evidence.references or p in evidence.backfilled for p in siblings):
            return _keep(KEEP_ROW_SIBLING)
        latest = max(row.expires_at for row in rows if row.expires_at is not None)
        return Verdict(
            True, f"its workspace_assets row expired at {latest:%Y-%m-%d %H:%M} UTC", True
        )
    job_row = evidence.jobs.get(job)
    if job_row is None:
        return _keep(KEEP_NO_JOB)
    if job_row.status not in ORPHAN_STATUSES:
        return _keep(f"no workspace_assets row; its job is {job_row.status}")
    if job_row.user_id != user:
        return _keep(KEEP_JOB_OWNER)
    if info.created_at is None:
        return _keep(KEEP_UNDATED)
    if info.created_at >= cutoff:
        return _keep(KEEP_YOUNG)
    return Verdict(True, f"no workspace_assets row; its job {job_row.status}")


def _undecided(info: ObjectInfo, cutoff: datetime) -> str | None:
    """Without the database: None for an object old enough to be a candidate, else why not."""
    if CONTRACT_PATH.match(info.path) is None:
        return KEEP_OTHER_LAYOUT
    if info.created_at is None:
        return KEEP_UNDATED
    return KEEP_YOUNG if info.created_at >= cutoff else None


def cleanup_markdown(summary: CleanupSummary) -> str:
    mode = "dry run, nothing removed" if summary.dry_run else "run"
    going = "would go" if summary.dry_run else "removed"
    rows: list[tuple[str, object]] = [
        ("now", f"{summary.now:%Y-%m-%d %H:%M} UTC"),
        (
            "ttl_days",
            f"{summary.ttl_days:g} (orphans created before {summary.cutoff:%Y-%m-%d %H:%M} UTC)",
        ),
        ("objects listed", summary.listed),
        (
            f"objects that {going}" if summary.dry_run else "objects removed",
            len(summary.candidates) if summary.dry_run else summary.removed,
        ),
        ("bytes freed" + (" (expected)" if summary.dry_run else ""), summary.bytes_freed),
        ("expired rows deleted", summary.rows_deleted if not summary.dry_run else "none (dry run)"),
        ("database", "configured" if summary.database else "not configured"),
    ]
    parts = [f"# Workspace cleanup of `{summary.bucket}` ({mode})"]
    if summary.note:
        parts.append(f"**{summary.note}**")
    parts += [
        table(("", "value"), rows),
        "## Objects that " + ("would go" if summary.dry_run else "went"),
        table(
            ("object", "bytes", "reason"),
            ((c.path, c.size, c.reason) for c in summary.candidates),
            limit=max(1, len(summary.candidates)),
        ),
        "## Kept, by reason",
        table(("reason", "objects"), sorted(summary.kept.items())),
    ]
    return "\n\n".join(parts) + "\n"


def _aware(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@flow(name="cleanup-workspace", flow_run_name="cleanup-workspace-temp")
async def cleanup_workspace(
    dry_run: bool = True,
    ttl_days: float = 7.0,
    batch_size: int = 100,
    now: datetime | None = None,
) -> CleanupSummary:
    """Remove the workspace-temp objects nothing needs any more (dry run by default).

    Args:
        dry_run: Only list what would go, with the reasons; remove nothing.
        ttl_days: Age (from the listing's ``created_at``) after which the objects of a failed
            or cancelled job with no ``workspace_assets`` row go.
        batch_size: Objects per database query and per removal request.
        now: The moment rows' ``expires_at`` and ``ttl_days`` are measured from (default: the
            current time; UTC when naive). Never later than the current time: an earlier
            moment only keeps more.
    """
    if ttl_days <= 0:
        raise ValueError(f"ttl_days must be positive, got {ttl_days}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    moment = _aware(now)
    if moment > datetime.now(UTC):
        raise ValueError(f"now must not be later than the current time, got {moment.isoformat()}")
    logger = get_run_logger()
    connections = await aload_connections(entry_settings(), renders=False)
    settings, storage = connections.settings, connections.storage
    dsn = settings.database_dsn.get_secret_value() if settings.database_dsn else None
    cutoff = moment - timedelta(days=ttl_days)
    summary = CleanupSummary(
        dry_run=dry_run,
        ttl_days=ttl_days,
        now=moment,
        cutoff=cutoff,
        database=dsn is not None,
        decided=dsn is not None,
    )
    if dsn is None and not dry_run:
        raise CleanupRefused(
            f"The cleanup removes nothing without the project database: set {DSN_SETTING} "
            "for the worker, then run it again (a dry run lists candidates without it)"
        )
    if dsn is not None:
        await with_retries(check_tables_task, database_policy(settings))(dsn)
    objects = await with_retries(list_bucket, storage_policy(settings))(storage, BUCKET)
    summary.listed = len(objects)
    kept: Counter[str] = Counter()
    if dsn is None:
        summary.note = (
            f"No database is configured ({DSN_SETTING}): nothing can be decided. The "
            "objects listed are only those at the contract layout older than ttl_days; a real "
            "run refuses to remove anything."
        )
        for info in objects:
            reason = _undecided(info, cutoff)
            if reason is None:
                summary.candidates.append(
                    CleanupCandidate(path=info.path, size=info.size, reason=UNDECIDED)
                )
            else:
                kept[reason] += 1
        logger.warning("%s", summary.note)
    else:
        read = with_retries(read_evidence_task, database_policy(settings))
        by_path = {info.path: info for info in objects}
        for start in range(0, len(objects), batch_size):
            batch = objects[start : start + batch_size]
            contract = [i for i in batch if CONTRACT_PATH.match(i.path)]
            job_ids = sorted({m["job"] for i in contract if (m := CONTRACT_PATH.match(i.path))})
            evidence = (
                await read(dsn, BUCKET, [i.path for i in contract], job_ids)
                if contract
                else Evidence()
            )
            for info in batch:
                verdict = judge(info, evidence, moment, cutoff)
                if verdict.remove:
                    summary.candidates.append(
                        CleanupCandidate(
                            path=info.path,
                            size=info.size,
                            reason=verdict.reason,
                            with_rows=verdict.with_rows,
                        )
                    )
                else:
                    kept[verdict.reason] += 1
        if not dry_run:
            await _remove(summary, by_path, dsn, batch_size, storage, settings)
    summary.kept = dict(kept)
    if dry_run:
        summary.bytes_freed = sum(c.size for c in summary.candidates)
    logger.info(
        "Cleanup of %s%s: %d of %d object(s) %s (%d bytes), %d expired row(s) deleted; kept: %s.",
        BUCKET,
        " (dry run)" if dry_run else "",
        len(summary.candidates) if dry_run else summary.removed,
        summary.listed,
        "would go" if dry_run else "removed",
        summary.bytes_freed,
        summary.rows_deleted,
        ", ".join(f"{count} {reason}" for reason, count in sorted(kept.items())) or "nothing",
    )
    await acreate_markdown_artifact(
        cleanup_markdown(summary), key="workspace-cleanup", description="Workspace cleanup report"
    )
    return summary


async def _remove(
    summary: CleanupSummary,
    by_path: dict[str, ObjectInfo],
    dsn: str,
    batch_size: int,
    storage: StorageBackend,
    settings: Settings,
) -> None:
    """Delete the candidates' expired rows, then the objects, batch by batch.

    An object judged by its rows goes only once those rows were deleted here (a row that
    changed meanwhile is not deleted, and keeps its objects).
    """
    remove = with_retries(remove_objects, storage_policy(settings))
    delete_rows = with_retries(delete_expired_rows_task, database_policy(settings))
    rows_gone: set[str] = set()
    for start in range(0, len(summary.candidates), batch_size):
        batch = summary.candidates[start : start + batch_size]
        deleted = await delete_rows(dsn, [c.path for c in batch if c.with_rows], summary.now)
        summary.rows_deleted += len(deleted)
        rows_gone |= {path for row in deleted for path in row if path}
        paths = [c.path for c in batch if not c.with_rows or c.path in rows_gone]
        if len(paths) < len(batch):
            get_run_logger().warning(
                "Kept %d object(s) whose rows changed after they were judged.",
                len(batch) - len(paths),
            )
        removed = set(await remove(storage, BUCKET, paths)) if paths else set()
        summary.removed += len(removed)
        summary.bytes_freed += sum(by_path[p].size for p in paths if p in removed)


__all__ = ["CleanupCandidate", "CleanupSummary", "cleanup_workspace"]
