"""Cleanup: remove workspace objects older than their time to live, and their expired rows.

``cleanup_workspace`` lists one bucket (``workspace-temp`` by default), picks the objects whose
``created_at`` (from the listing) is older than ``ttl_days`` and removes them in batches. It
never touches another bucket, a younger object or an object it cannot date. Dry run by default:
the ``workspace-cleanup`` artifact then says what would go.

With a database configured (``Settings.database_dsn``, env ``GENJOBS_DATABASE_DSN``) it also
keeps objects an unexpired ``public.workspace_assets`` row still points at (as original or
thumbnail), and deletes the expired rows whose ``temp_storage_path`` it removes. Rows go first,
then their objects: should the removal fail, the next run finds the objects again (their rows
are already gone); the other order could leave rows pointing at objects no run lists again.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from pydantic import BaseModel, Field

from genjobs.backfill.report import table
from genjobs.backfill.steps import RETRY_OPTIONS, remove_objects
from genjobs.errors import JobError
from genjobs.runtime import get_runtime
from genjobs.storage.base import ObjectInfo
from tasks.naming import with_settings_retries

DEFAULT_BUCKET = "workspace-temp"

_LIVE_PATHS_SQL = """
    select temp_storage_path, thumbnail_path from public.workspace_assets
    where expires_at >= now() and (temp_storage_path = any(%s) or thumbnail_path = any(%s))
"""
_DELETE_ROWS_SQL = """
    delete from public.workspace_assets
    where temp_storage_path = any(%s) and expires_at < now()
    returning temp_storage_path
"""
_COUNT_ROWS_SQL = """
    select count(*) from public.workspace_assets
    where temp_storage_path = any(%s) and expires_at < now()
"""


class DatabaseError(JobError):
    """The project database could not be reached or refused a statement."""

    code = "DATABASE_ERROR"


class CleanupSummary(BaseModel):
    """What a cleanup run returns."""

    dry_run: bool
    bucket: str
    ttl_days: float
    cutoff: datetime
    listed: int = 0
    expired: int = 0
    removed: int = 0
    bytes_freed: int = 0
    kept_for_live_rows: list[str] = Field(default_factory=list)
    undated: int = 0
    rows_deleted: int = 0
    database: bool = False


def _run_sql(dsn: str, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """One statement in its own transaction; psycopg errors become :class:`DatabaseError`."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return conn.execute(statement, params).fetchall()
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"The database is unavailable: {exc}", retryable=True) from exc
    except psycopg.Error as exc:
        raise DatabaseError(f"The database refused the statement: {exc}") from exc


@task(name="list-bucket", task_run_name="list-{bucket}", **RETRY_OPTIONS)
async def list_bucket(bucket: str) -> list[ObjectInfo]:
    """Every object of the bucket with its size and ``created_at``."""
    return await asyncio.to_thread(get_runtime().storage.list, bucket)


@task(name="find-live-assets", **RETRY_OPTIONS)
async def find_live_assets(dsn: str, paths: list[str]) -> set[str]:
    """The paths an unexpired ``workspace_assets`` row still uses (original or thumbnail)."""
    rows = await asyncio.to_thread(_run_sql, dsn, _LIVE_PATHS_SQL, (paths, paths))
    wanted = set(paths)
    return {path for row in rows for path in row if path in wanted}


@task(name="delete-expired-rows", **RETRY_OPTIONS)
async def delete_expired_rows(dsn: str, paths: list[str]) -> int:
    """Delete the expired ``workspace_assets`` rows of these objects; returns how many."""
    rows = await asyncio.to_thread(_run_sql, dsn, _DELETE_ROWS_SQL, (paths,))
    return len(rows)


@task(name="count-expired-rows", **RETRY_OPTIONS)
async def count_expired_rows(dsn: str, paths: list[str]) -> int:
    rows = await asyncio.to_thread(_run_sql, dsn, _COUNT_ROWS_SQL, (paths,))
    return int(rows[0][0])


def cleanup_markdown(summary: CleanupSummary) -> str:
    mode = "dry run, nothing removed" if summary.dry_run else "run"
    rows: list[tuple[str, object]] = [
        ("objects listed", summary.listed),
        (
            f"older than {summary.ttl_days:g} days (before {summary.cutoff:%Y-%m-%d %H:%M} UTC)",
            summary.expired,
        ),
        ("would be removed" if summary.dry_run else "removed", summary.removed),
        ("bytes freed" + (" (expected)" if summary.dry_run else ""), summary.bytes_freed),
        ("kept: an unexpired row uses them", len(summary.kept_for_live_rows)),
        ("kept: no created_at", summary.undated),
        (
            "expired rows deleted" + (" (expected)" if summary.dry_run else ""),
            summary.rows_deleted if summary.database else "no database configured",
        ),
    ]
    return (
        "\n\n".join(
            [
                f"# Workspace cleanup of `{summary.bucket}` ({mode})",
                table(("", "count"), rows),
                "## Kept for unexpired rows",
                table(("object",), ((path,) for path in summary.kept_for_live_rows)),
            ]
        )
        + "\n"
    )


@flow(name="cleanup-workspace", flow_run_name="cleanup-{bucket}")
async def cleanup_workspace(
    dry_run: bool = True,
    ttl_days: float = 7.0,
    bucket: str = DEFAULT_BUCKET,
    batch_size: int = 100,
) -> CleanupSummary:
    """Remove objects older than ``ttl_days`` from one bucket (dry run by default).

    Args:
        dry_run: Only report what would be removed.
        ttl_days: Age (from the object's ``created_at``) after which an object goes.
        bucket: The one bucket to clean.
        batch_size: Objects per removal request (and per row deletion).
    """
    if ttl_days <= 0:
        raise ValueError(f"ttl_days must be positive, got {ttl_days}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    logger = get_run_logger()
    settings = get_runtime().settings
    dsn = settings.database_dsn.get_secret_value() if settings.database_dsn else None
    cutoff = datetime.now(UTC) - timedelta(days=ttl_days)
    summary = CleanupSummary(
        dry_run=dry_run, bucket=bucket, ttl_days=ttl_days, cutoff=cutoff, database=dsn is not None
    )
    objects = await with_settings_retries(list_bucket, settings)(bucket)
    summary.listed = len(objects)
    summary.undated = sum(1 for info in objects if info.created_at is None)
    expired = [info for info in objects if info.created_at is not None and info.created_at < cutoff]
    summary.expired = len(expired)
    remove = with_settings_retries(remove_objects, settings)
    for start in range(0, len(expired), batch_size):
        batch = expired[start : start + batch_size]
        if dsn is not None:
            live = await with_settings_retries(find_live_assets, settings)(
                dsn, [i.path for i in batch]
            )
            summary.kept_for_live_rows += sorted(live)
            batch = [info for info in batch if info.path not in live]
        paths = [info.path for info in batch]
        if not paths:
            continue
        if dry_run:
            summary.removed += len(batch)
            summary.bytes_freed += sum(info.size for info in batch)
            if dsn is not None:
                summary.rows_deleted += await with_settings_retries(count_expired_rows, settings)(
                    dsn, paths
                )
            continue
        if dsn is not None:
            summary.rows_deleted += await with_settings_retries(delete_expired_rows, settings)(
                dsn, paths
            )
        removed = set(await remove(bucket, paths))
        summary.removed += len(removed)
        summary.bytes_freed += sum(info.size for info in batch if info.path in removed)
    logger.info(
        "Cleanup of %s%s: %d of %d object(s) older than %s days %s (%d bytes), %d kept for "
        "unexpired rows, %d undated, %d expired row(s) %s.",
        bucket,
        " (dry run)" if dry_run else "",
        summary.removed,
        summary.listed,
        ttl_days,
        "would go" if dry_run else "removed",
        summary.bytes_freed,
        len(summary.kept_for_live_rows),
        summary.undated,
        summary.rows_deleted,
        "would be deleted" if dry_run else "deleted",
    )
    await acreate_markdown_artifact(
        cleanup_markdown(summary), key="workspace-cleanup", description="Workspace cleanup report"
    )
    return summary


__all__ = ["CleanupSummary", "cleanup_workspace"]
