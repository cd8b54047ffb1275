"""Scratch databases on the test PostgreSQL, for the storage server's instances, the tests and
the benchmarks: created under a unique name, dropped (with its connections) when done."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager


def create_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` on ``admin_dsn``'s server; returns its DSN (conninfo form)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return make_conninfo(admin_dsn, dbname=name)


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database ``name`` if it exists, ending its connections."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


@contextmanager
def scratch_database(admin_dsn: str, prefix: str) -> Iterator[str]:
    """A new empty database named ``{prefix}_{random}`` while the block runs; its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    dsn = create_database(admin_dsn, name)
    try:
        yield dsn
    finally:
        drop_database(admin_dsn, name)
