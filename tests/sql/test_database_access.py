"""Every query goes through genjobs.db and fails the one way: DatabaseError with its code and
whether a retry could help. Against a real PostgreSQL (GENJOBS_TEST_PG_DSN) and a closed port.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from genjobs.db.migrations import apply_migrations
from genjobs.db.sql import run_sql
from genjobs.db.video_jobs import load_video_jobs
from genjobs.errors import DatabaseError

from .conftest import REQUIRES_POSTGRES, MigratedDatabase

Test = TypeVar("Test", bound=Callable[..., None])


def needs_postgres(test: Test) -> Test:
    """Mark a test as needing the PostgreSQL server (skipped without one)."""
    for mark in REQUIRES_POSTGRES:
        test = mark(test)
    return test


@pytest.fixture
def closed_dsn() -> str:
    """A DSN whose port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


@pytest.fixture
def video_jobs(migrated_db: MigratedDatabase) -> Iterator[dict[str, tuple[str, str]]]:
    """Two committed jobs with a legacy video_id and one without; removed afterwards."""
    user = uuid.uuid4()
    expected: dict[str, tuple[str, str]] = {}
    run_sql(migrated_db.dsn, "insert into auth.users (id) values (%s)", (user,))
    try:
        for video_id in (uuid.uuid4(), uuid.uuid4(), None):
            job = run_sql(
                migrated_db.dsn,
                "insert into public.jobs (user_id, job_type, status, video_id)"
                " values (%s, 'video_fast', 'completed', %s) returning id",
                (user, video_id),
            )[0][0]
            if video_id is not None:
                expected[str(video_id)] = (str(user), str(job))
        yield expected
    finally:
        run_sql(migrated_db.dsn, "delete from public.jobs where user_id = %s", (user,))
        run_sql(migrated_db.dsn, "delete from auth.users where id = %s", (user,))


def test_unreachable_database_is_a_retryable_database_error(closed_dsn: str) -> None:
    for call in (
        lambda: load_video_jobs(closed_dsn),
        lambda: run_sql(closed_dsn, "select 1"),
        lambda: apply_migrations(closed_dsn),
    ):
        with pytest.raises(DatabaseError, match="The database is unavailable") as caught:
            call()
        assert (caught.value.code, caught.value.retryable) == ("DATABASE_ERROR", True)


@needs_postgres
def test_video_jobs_maps_each_video_id_to_its_user_and_job(
    migrated_db: MigratedDatabase, video_jobs: dict[str, tuple[str, str]]
) -> None:
    found = load_video_jobs(migrated_db.dsn)
    assert {key: found[key] for key in video_jobs} == video_jobs
    assert len(video_jobs) == 2


@needs_postgres
def test_refused_statement_is_a_final_database_error(migrated_db: MigratedDatabase) -> None:
    with pytest.raises(DatabaseError, match="refused the statement") as caught:
        run_sql(migrated_db.dsn, "select * from public.no_such_table")
    assert (caught.value.code, caught.value.retryable) == ("DATABASE_ERROR", False)


@needs_postgres
def test_failed_migration_names_its_file_and_rolls_it_back(
    migrated_db: MigratedDatabase, tmp_path: Path
) -> None:
    table = f"migration_probe_{uuid.uuid4().hex[:8]}"
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001_good.sql").write_text(f"create table public.{table} (x int);")
    (tmp_path / "migrations" / "002_bad.sql").write_text(
        f"insert into public.{table} values (1); select * from public.no_such_table;"
    )
    try:
        with pytest.raises(DatabaseError, match=r"refused 002_bad\.sql") as caught:
            apply_migrations(migrated_db.dsn, supabase_dir=tmp_path)
        assert (caught.value.code, caught.value.retryable) == ("DATABASE_ERROR", False)
        assert run_sql(migrated_db.dsn, f"select count(*) from public.{table}") == [(0,)]
    finally:
        run_sql(migrated_db.dsn, f"drop table if exists public.{table}")
