"""Fixtures for the SQL tests: a fresh database on the server named by GENJOBS_TEST_PG_DSN.

Start a server with ``eval "$(bash scripts/start_postgres.sh)"``. Each test session creates its
own database ``genjobs_sql_<random>``, applies the bootstrap and the migrations twice (they must
be idempotent) and drops the database at the end. Each test runs in one transaction that is
rolled back, so tests never see each other's rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devstack.databases import scratch_database
from genjobs.db.migrations import apply_migrations

DSN_ENV = "GENJOBS_TEST_PG_DSN"

REQUIRES_POSTGRES = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not os.environ.get(DSN_ENV),
        reason=f"{DSN_ENV} is not set; start a PostgreSQL server with"
        ' eval "$(bash scripts/start_postgres.sh)"',
    ),
]
"""The ``pytestmark`` of every SQL test module."""


@dataclass(frozen=True)
class MigratedDatabase:
    """A migrated test database and what the schema looked like after each application."""

    dsn: str
    applied: list[list[str]]
    snapshots: list[dict[str, Any]]


def schema_snapshot(dsn: str) -> dict[str, Any]:
    """Reads the parts of the catalog the migrations define, for comparing two applications."""
    import psycopg

    queries = {
        "columns": """
            select table_schema, table_name, column_name, data_type, is_nullable, column_default
            from information_schema.columns
            where table_schema = 'public' order by 1, 2, 3""",
        "indexes": """
            select schemaname, tablename, indexname, indexdef from pg_indexes
            where schemaname in ('public', 'storage') order by 1, 2, 3""",
        "constraints": """
            select conrelid::regclass::text, conname, pg_get_constraintdef(oid) from pg_constraint
            where connamespace = 'public'::regnamespace order by 1, 2""",
        "policies": """
            select schemaname, tablename, policyname, cmd, roles::text, qual, with_check
            from pg_policies order by 1, 2, 3""",
        "functions": """
            select p.oid::regprocedure::text, pg_get_function_result(p.oid), p.proacl::text
            from pg_proc p where p.pronamespace = 'public'::regnamespace order by 1""",
        "buckets": "select * from storage.buckets order by id",
        "publication": "select * from pg_publication_tables order by 1, 2, 3",
    }
    with psycopg.connect(dsn) as conn:
        return {name: conn.execute(query).fetchall() for name, query in queries.items()}


@pytest.fixture(scope="session")
def migrated_db() -> Iterator[MigratedDatabase]:
    from psycopg.conninfo import conninfo_to_dict

    with scratch_database(os.environ[DSN_ENV], "genjobs_sql") as dsn:
        assert conninfo_to_dict(dsn)["dbname"].startswith("genjobs_sql_")
        applied, snapshots = [], []
        for _ in range(2):
            applied.append(apply_migrations(dsn, bootstrap=True))
            snapshots.append(schema_snapshot(dsn))
        yield MigratedDatabase(dsn=dsn, applied=applied, snapshots=snapshots)


@pytest.fixture
def conn(migrated_db: MigratedDatabase) -> Iterator[Any]:
    """A connection inside one transaction that is always rolled back."""
    import psycopg

    with (
        psycopg.connect(migrated_db.dsn, autocommit=True) as connection,
        connection.transaction(force_rollback=True),
    ):
        yield connection
