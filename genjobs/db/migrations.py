"""Apply the SQL migrations in ``supabase/migrations`` to a PostgreSQL database.

The migrations are the schema the flows rely on (``public.jobs``, ``public.workspace_assets``,
the ``workspace-temp`` bucket and its row-level security, the cleanup functions). They are
written to be idempotent, so applying all of them again is safe. A Supabase project applies
them with the Supabase CLI; this module serves tests and local development against a plain
PostgreSQL, where ``supabase/test_bootstrap.sql`` first creates the roles and the ``auth`` and
``storage`` pieces a Supabase database ships with.

psycopg (the ``postgres`` extra) is imported only when migrations are applied.

Usage::

    python -m genjobs.db.migrations --bootstrap postgresql://postgres@127.0.0.1:54329/db
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from genjobs.db.sql import database_errors

logger = logging.getLogger(__name__)

SUPABASE_DIR = Path(__file__).resolve().parents[2] / "supabase"
"""The repository's ``supabase`` folder (found from a source checkout or an editable install)."""


def _checked_dir(supabase_dir: Path | None) -> Path:
    folder = SUPABASE_DIR if supabase_dir is None else supabase_dir
    if not (folder / "migrations").is_dir():
        raise FileNotFoundError(
            f"No migrations folder at {folder / 'migrations'}; the SQL ships with a source "
            "checkout or an editable install, not with a wheel"
        )
    return folder


def migration_files(supabase_dir: Path | None = None) -> list[Path]:
    """Lists the migration files in the order they apply (by their timestamped names).

    Args:
        supabase_dir: The ``supabase`` folder; defaults to the repository's.

    Returns:
        The ``*.sql`` files of ``supabase_dir/migrations``, sorted by name.
    """
    return sorted(_checked_dir(supabase_dir).joinpath("migrations").glob("*.sql"))


def bootstrap_file(supabase_dir: Path | None = None) -> Path:
    """Returns the test bootstrap that prepares a plain PostgreSQL for the migrations."""
    return _checked_dir(supabase_dir) / "test_bootstrap.sql"


def apply_migrations(
    conninfo: str, *, bootstrap: bool = False, supabase_dir: Path | None = None
) -> list[str]:
    """Applies the bootstrap (optional) and then every migration, each in its own transaction.

    Args:
        conninfo: A libpq connection string or URL; the role must be able to create schemas,
            roles and publications (``postgres`` on a test server).
        bootstrap: Apply ``test_bootstrap.sql`` first. Only for a plain PostgreSQL, never for
            a Supabase database.
        supabase_dir: The ``supabase`` folder; defaults to the repository's.

    Returns:
        The names of the files applied, in order.

    Raises:
        FileNotFoundError: The SQL files are not where they are expected.
        DatabaseError: The database is unreachable (retryable), or a statement failed and
            that file's transaction is rolled back.
    """
    import psycopg

    files = migration_files(supabase_dir)
    if bootstrap:
        files.insert(0, bootstrap_file(supabase_dir))
    applied: list[str] = []
    with database_errors(), psycopg.connect(conninfo, autocommit=True) as conn:
        for path in files:
            logger.info("Applying %s.", path.name)
            with database_errors(path.name), conn.transaction():
                conn.execute(path.read_bytes())
            applied.append(path.name)
    logger.info("Applied %d SQL files.", len(applied))
    return applied


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: apply the migrations to the database named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("conninfo", help="libpq connection string or postgresql:// URL")
    parser.add_argument(
        "--bootstrap",
        action="store_true",
        help="first create the Supabase roles, auth and storage pieces (plain PostgreSQL only)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    apply_migrations(args.conninfo, bootstrap=args.bootstrap)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
