"""The workspace cleanup's Prefect tasks: the listing of the bucket and its database steps.

Each takes the storage backend or the database DSN it uses as an argument and runs its
synchronous calls in a worker thread; the removal of objects is the backfill's
``remove-objects`` task (tasks/backfill.py). The decorators name only what is retried; the
flow applies the storage or database policy of tasks/retries.py.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from prefect import task

from genjobs.db.workspace_evidence import (
    Evidence,
    check_tables,
    delete_expired_rows,
    read_evidence,
)
from genjobs.storage.base import ObjectInfo, StorageBackend
from tasks.backfill import STEP_OPTIONS


@task(name="list-bucket", task_run_name="list-{bucket}", **STEP_OPTIONS)
async def list_bucket(storage: StorageBackend, bucket: str) -> list[ObjectInfo]:
    """Every object of the bucket with its size and ``created_at``."""
    return await asyncio.to_thread(storage.list, bucket)


@task(name="check-tables", **STEP_OPTIONS)
async def check_tables_task(dsn: str) -> None:
    """Fail unless every table whose rows can keep an object exists."""
    await asyncio.to_thread(check_tables, dsn)


@task(name="read-evidence", **STEP_OPTIONS)
async def read_evidence_task(
    dsn: str, bucket: str, paths: list[str], job_ids: list[str]
) -> Evidence:
    """The rows, jobs, references and backfill records of a batch of the bucket's objects."""
    return await asyncio.to_thread(read_evidence, dsn, bucket, paths, job_ids)


@task(name="delete-expired-rows", **STEP_OPTIONS)
async def delete_expired_rows_task(
    dsn: str, paths: list[str], now: datetime
) -> list[tuple[str, str | None]]:
    """Delete the expired ``workspace_assets`` rows of these objects; returns their paths."""
    return await asyncio.to_thread(delete_expired_rows, dsn, paths, now)
