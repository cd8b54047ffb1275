"""What the project database says about workspace-temp objects, for the cleanup to judge.

For a set of object paths :func:`read_evidence` reads, in one transaction, the
``workspace_assets`` rows naming them (as original or thumbnail), the ``jobs`` rows of their
job folders, and the references the backend keeps (contract section 8) and the backfill's
records, both to them and to their rows' other objects. References hold a path or a signed
URL: a path counts as referenced when it appears anywhere in the column's text, which errs on
the side of keeping.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from genjobs.db.sql import missing_tables, run_statements
from genjobs.errors import DatabaseError

REQUIRED_TABLES = (
    "public.workspace_assets",
    "public.jobs",
    "public.character_scenes",
    "public.conversations",
    "public.backfilled_objects",
)
"""Every table whose rows can keep an object; the cleanup removes nothing while one is missing."""

REFERENCE_COLUMNS = (
    "character_scenes.image_url",
    "conversations.last_scene_image",
    "jobs.metadata->>'reference_image_url'",
)

_ROWS_SQL = """
    select temp_storage_path, thumbnail_path, user_id::text, job_id::text, expires_at
    from public.workspace_assets
    where temp_storage_path = any(%s) or thumbnail_path = any(%s)
"""
_JOBS_SQL = "select id::text, user_id::text, status from public.jobs where id = any(%s::uuid[])"
_WANTED = """
    with named as (
      select a.temp_storage_path, a.thumbnail_path from public.workspace_assets as a
      where a.temp_storage_path = any(%(paths)s) or a.thumbnail_path = any(%(paths)s)
    ), wanted as (
      select unnest(%(paths)s::text[]) as path
      union select temp_storage_path from named
      union select thumbnail_path from named where thumbnail_path is not null
    )
"""
"""The paths asked about and their rows' other objects (a row's objects go together)."""

_REFERENCES_SQL = (
    _WANTED
    + """
    select w.path, 'character_scenes.image_url' from wanted as w
    where exists (
      select 1 from public.character_scenes as c where strpos(c.image_url, w.path) > 0)
    union all
    select w.path, 'conversations.last_scene_image' from wanted as w
    where exists (
      select 1 from public.conversations as c where strpos(c.last_scene_image, w.path) > 0)
    union all
    select w.path, 'jobs.metadata->>''reference_image_url''' from wanted as w
    where exists (
      select 1 from public.jobs as j
      where strpos(j.metadata ->> 'reference_image_url', w.path) > 0)
"""
)
_BACKFILLED_SQL = (
    _WANTED
    + """
    select w.path from wanted as w
    where exists (
      select 1 from public.backfilled_objects as b
      where b.target_bucket = %(bucket)s
        and (b.target_path = w.path or b.thumbnail_path = w.path))
"""
)


@dataclass(frozen=True)
class AssetRow:
    """The parts of a ``workspace_assets`` row the cleanup judges."""

    temp_storage_path: str
    thumbnail_path: str | None
    user_id: str
    job_id: str
    expires_at: datetime | None


@dataclass(frozen=True)
class JobRow:
    user_id: str
    status: str


@dataclass
class Evidence:
    """Per path: the rows naming it, its job, what references it, whether it was backfilled.

    ``references`` and ``backfilled`` also cover the other objects of the rows found.
    """

    rows: dict[str, list[AssetRow]] = field(default_factory=lambda: defaultdict(list))
    jobs: dict[str, JobRow] = field(default_factory=dict)
    references: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    backfilled: set[str] = field(default_factory=set)


def check_tables(dsn: str) -> None:
    """Raise :class:`DatabaseError` naming every required table that is missing."""
    missing = missing_tables(dsn, REQUIRED_TABLES)
    if missing:
        raise DatabaseError(
            f"The cleanup removes nothing: the table(s) {', '.join(missing)} do not exist, so "
            "it cannot tell which objects are still needed"
        )


def read_evidence(dsn: str, bucket: str, paths: list[str], job_ids: list[str]) -> Evidence:
    """Everything the database says about these paths, read in one transaction."""
    rows, jobs, references, backfilled = run_statements(
        dsn,
        [
            (_ROWS_SQL, (paths, paths)),
            (_JOBS_SQL, (job_ids,)),
            (_REFERENCES_SQL, {"paths": paths}),
            (_BACKFILLED_SQL, {"paths": paths, "bucket": bucket}),
        ],
    )
    evidence = Evidence()
    for temp, thumb, user_id, job_id, expires_at in rows:
        row = AssetRow(str(temp), thumb, str(user_id), str(job_id), expires_at)
        evidence.rows[row.temp_storage_path].append(row)
        if row.thumbnail_path:
            evidence.rows[row.thumbnail_path].append(row)
    for job_id, user_id, status in jobs:
        evidence.jobs[str(job_id)] = JobRow(str(user_id), str(status))
    for path, column in references:
        evidence.references[str(path)].append(str(column))
    evidence.backfilled = {str(row[0]) for row in backfilled}
    return evidence


_DELETE_ROWS_SQL = """
    delete from public.workspace_assets
    where expires_at < %s and (temp_storage_path = any(%s) or thumbnail_path = any(%s))
    returning temp_storage_path, thumbnail_path
"""


def delete_expired_rows(dsn: str, paths: list[str], now: datetime) -> list[tuple[str, str | None]]:
    """Delete the rows expired at ``now`` that name one of these paths.

    Returns:
        The ``(temp_storage_path, thumbnail_path)`` of each row deleted.
    """
    rows = run_statements(dsn, [(_DELETE_ROWS_SQL, (now, paths, paths))])[0]
    return [(str(temp), thumb) for temp, thumb in rows]
