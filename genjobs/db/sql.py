"""Statements against the project database, one transaction each (psycopg, imported lazily).

Everything that reads or writes the project's PostgreSQL goes through these helpers, so every
psycopg error comes back as :class:`~genjobs.errors.DatabaseError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from genjobs.errors import DatabaseError

CONNECT_TIMEOUT_SECONDS = 10
DSN_SETTING = "GENJOBS_DATABASE_DSN (Settings.database_dsn)"
"""Where the project database is configured, as messages name it."""


@contextmanager
def database_errors(action: str = "the statement") -> Iterator[None]:
    """Translate each psycopg error raised inside into :class:`DatabaseError`.

    An unreachable database (``OperationalError``) is retryable; a refused ``action`` is not.
    """
    import psycopg

    try:
        yield
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"The database is unavailable: {exc}", retryable=True) from exc
    except psycopg.Error as exc:
        raise DatabaseError(f"The database refused {action}: {exc}") from exc


def run_statements(
    dsn: str, statements: Sequence[tuple[str, tuple[Any, ...] | dict[str, Any]]]
) -> list[list[tuple[Any, ...]]]:
    """Run statements in one transaction; returns each one's rows (empty when it has none).

    Raises:
        DatabaseError: The database is unreachable (retryable) or refused a statement; the
            transaction is then rolled back.
    """
    import psycopg

    with (
        database_errors(),
        psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn,
        conn.transaction(),
    ):
        results = []
        for statement, params in statements:
            cursor = conn.execute(statement, params)
            results.append(cursor.fetchall() if cursor.description is not None else [])
        return results


def run_sql(dsn: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement in its own transaction; see :func:`run_statements`."""
    return run_statements(dsn, [(statement, params)])[0]


def missing_tables(dsn: str, tables: Sequence[str]) -> list[str]:
    """The qualified table names (``schema.table``) that do not exist."""
    rows = run_sql(
        dsn, "select t from unnest(%s::text[]) as t where to_regclass(t) is null", (list(tables),)
    )
    return [str(row[0]) for row in rows]
