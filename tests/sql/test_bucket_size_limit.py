"""The migrations give workspace-temp the object size limit the library validates against
(on the PostgreSQL server the other SQL tests use)."""

from __future__ import annotations

from typing import Any

from genjobs.db.migrations import migration_files
from genjobs.storage.limits import WORKSPACE_TEMP_BUCKET, WORKSPACE_TEMP_FILE_SIZE_LIMIT

from .test_migrations import pytestmark  # noqa: F401  (the same PostgreSQL server, or a skip)

BUCKET_MIGRATION = "20261125000300_workspace_temp_bucket.sql"


def _limit(conn: Any) -> int:
    row = conn.execute(
        "select file_size_limit from storage.buckets where id = %s", (WORKSPACE_TEMP_BUCKET,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_the_migrated_bucket_limit_is_the_library_limit(conn: Any) -> None:
    assert _limit(conn) == WORKSPACE_TEMP_FILE_SIZE_LIMIT


def test_a_smaller_existing_limit_is_raised_to_the_library_limit(conn: Any) -> None:
    conn.execute(
        "update storage.buckets set file_size_limit = 6291456 where id = %s",
        (WORKSPACE_TEMP_BUCKET,),
    )
    (migration,) = [path for path in migration_files() if path.name == BUCKET_MIGRATION]

    conn.execute(migration.read_text())

    assert _limit(conn) == WORKSPACE_TEMP_FILE_SIZE_LIMIT
