"""``public.backfilled_objects``: the backfill's record of each verified copy.

The backfill writes one row per source whose copy it verified, before it removes any source;
the workspace cleanup never removes a path recorded here; a rollback forgets the rows of the
copies it removed.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

from genjobs.db.sql import run_statements

_UPSERT_SQL = """
    insert into public.backfilled_objects (source_bucket, source_path, target_bucket,
        target_path, thumbnail_path, sha256, size_bytes)
    values (%s, %s, %s, %s, %s, %s, %s)
    on conflict (source_bucket, source_path) do update set
        target_bucket = excluded.target_bucket,
        target_path = excluded.target_path,
        thumbnail_path = excluded.thumbnail_path,
        sha256 = excluded.sha256,
        size_bytes = excluded.size_bytes
"""
_FORGET_SQL = """
    delete from public.backfilled_objects
    where source_bucket = %s and source_path = %s and target_bucket = %s and target_path = %s
"""


@dataclass(frozen=True)
class BackfilledCopy:
    """One verified copy: where it came from, where it lies, and its bytes' size and hash."""

    source_bucket: str
    source_path: str
    target_bucket: str
    target_path: str
    thumbnail_path: str | None
    sha256: str
    size: int


def record_copies(dsn: str, copies: list[BackfilledCopy]) -> int:
    """Write (or refresh) the rows of these copies in one transaction; returns how many."""
    if not copies:
        return 0
    run_statements(dsn, [(_UPSERT_SQL, astuple(copy)) for copy in copies])
    return len(copies)


def forget_copies(dsn: str, copies: list[tuple[str, str, str, str]]) -> None:
    """Delete the rows of ``(source bucket, source path, target bucket, target path)``."""
    if copies:
        run_statements(dsn, [(_FORGET_SQL, copy) for copy in copies])
