"""The backfilled_objects table: the backfill's record of verified copies, service role only."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.postgres

ROW = (
    "image_fast",
    "u/job_j_1.png",
    "workspace-temp",
    "u/j/0.png",
    "u/j/0.thumb.webp",
    "a" * 64,
    12,
)
INSERT = """insert into public.backfilled_objects (source_bucket, source_path, target_bucket,
    target_path, thumbnail_path, sha256, size_bytes) values (%s, %s, %s, %s, %s, %s, %s)"""


def test_rows_are_hidden_from_users_and_kept_for_the_service_role(conn: Any) -> None:
    conn.execute(INSERT, ROW)
    import psycopg

    for role in ("anon", "authenticated"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute(f"set local role {role}")
            conn.execute("select count(*) from public.backfilled_objects")
    conn.execute("set local role service_role")
    rows = conn.execute("select target_path, copied_at is not null from public.backfilled_objects")
    assert rows.fetchall() == [("u/j/0.png", True)]
    relrowsecurity = conn.execute(
        "select relrowsecurity from pg_class where oid = 'public.backfilled_objects'::regclass"
    ).fetchone()
    assert relrowsecurity == (True,)


def test_a_source_is_recorded_once_with_a_real_hash(conn: Any) -> None:
    import psycopg

    conn.execute(INSERT, ROW)
    with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
        conn.execute(INSERT, ROW)
    with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
        conn.execute(INSERT, (*ROW[:1], "other.png", *ROW[2:5], "not-a-hash", 12))
