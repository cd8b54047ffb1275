"""What a signed-in user can do to workspace_assets and jobs rows, tried as the API would run it.

Needs a server: ``eval "$(bash scripts/start_postgres.sh)"`` sets GENJOBS_TEST_PG_DSN.
"""

from __future__ import annotations

import uuid

import pytest

from .conftest import REQUIRES_POSTGRES
from .test_migrations import Conn, acting_as, ids, insert_asset, insert_job, new_user

pytestmark = REQUIRES_POSTGRES

psycopg = pytest.importorskip("psycopg")
from psycopg import errors  # noqa: E402


def asset_row(conn: Conn, row: uuid.UUID) -> tuple[object, ...]:
    found = conn.execute(
        "select user_id, temp_storage_path, thumbnail_path, expires_at"
        " from public.workspace_assets where id = %s",
        (row,),
    ).fetchone()
    assert found is not None
    return tuple(found)


def job_row(conn: Conn, job: uuid.UUID) -> tuple[object, ...]:
    found = conn.execute(
        "select status, metadata, error_message, completed_at from public.jobs where id = %s",
        (job,),
    ).fetchone()
    assert found is not None
    return tuple(found)


# public.workspace_assets ---------------------------------------------------------------------


def test_a_user_cannot_insert_a_row_naming_another_users_object(conn: Conn) -> None:
    victim, attacker = new_user(conn), new_user(conn)
    job = uuid.uuid4()
    with pytest.raises(errors.InsufficientPrivilege), acting_as(conn, "authenticated", attacker):
        insert_asset(conn, attacker, job_id=job, path=f"{victim}/{uuid.uuid4()}/0.png")
    assert ids(conn, "select id from public.workspace_assets where job_id = %s", (job,)) == set()


def test_a_user_cannot_extend_expires_at_or_repoint_their_row(conn: Conn) -> None:
    user, other = new_user(conn), new_user(conn)
    row = insert_asset(conn, user)
    before = asset_row(conn, row)
    for change in (
        "expires_at = now() + interval '10 years'",
        f"temp_storage_path = '{other}/x/0.png'",
        f"thumbnail_path = '{other}/x/0.thumb.webp'",
    ):
        with pytest.raises(errors.InsufficientPrivilege), acting_as(conn, "authenticated", user):
            conn.execute(f"update public.workspace_assets set {change} where id = %s", (row,))
    with pytest.raises(errors.InsufficientPrivilege), acting_as(conn, "authenticated", user):
        conn.execute(
            "insert into public.workspace_assets (user_id, asset_type, temp_storage_path,"
            " file_size_bytes, mime_type, generation_seed, original_prompt, model_used, job_id,"
            " asset_index) select user_id, asset_type, temp_storage_path, 0, mime_type, 1,"
            " original_prompt, model_used, job_id, asset_index from public.workspace_assets"
            " where id = %s on conflict (job_id, asset_index) do update"
            " set expires_at = now() + interval '10 years'",
            (row,),
        )
    assert asset_row(conn, row) == before


def test_users_read_their_rows_and_the_service_role_keeps_writing(conn: Conn) -> None:
    user = new_user(conn)
    with acting_as(conn, "service_role"):
        row = insert_asset(conn, user)
        conn.execute(
            "update public.workspace_assets set expires_at = now() - interval '1 second'"
            " where id = %s",
            (row,),
        )
    with acting_as(conn, "authenticated", user):
        assert ids(conn, "select id from public.workspace_assets") == {row}
    with acting_as(conn, "service_role"):
        conn.execute("delete from public.workspace_assets where id = %s", (row,))
    assert ids(conn, "select id from public.workspace_assets") == set()


# public.jobs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["queued", "processing"])
def test_a_user_cancels_their_job_and_changes_nothing_else(conn: Conn, status: str) -> None:
    user = new_user(conn)
    job = insert_job(conn, user, status=status)
    with acting_as(conn, "authenticated", user):
        updated = conn.execute(
            "update public.jobs set status = 'cancelled' where id = %s", (job,)
        ).rowcount
    assert updated == 1
    assert job_row(conn, job) == ("cancelled", {}, None, None)


@pytest.mark.parametrize(
    "change",
    [
        'status = \'cancelled\', metadata = \'{"seed": 1, "reference_image_url": "x"}\'',
        "status = 'cancelled', error_message = 'by hand'",
        "status = 'cancelled', completed_at = now()",
        "status = 'cancelled', user_id = '00000000-0000-4000-8000-000000000000'",
        "metadata = '{\"seed\": 1}'",
    ],
)
def test_the_cancelling_update_cannot_rewrite_other_columns(conn: Conn, change: str) -> None:
    user = new_user(conn)
    job = insert_job(conn, user)
    with pytest.raises(errors.InsufficientPrivilege), acting_as(conn, "authenticated", user):
        conn.execute(f"update public.jobs set {change} where id = %s", (job,))
    assert job_row(conn, job) == ("queued", {}, None, None)


def test_the_cancel_rule_holds_under_a_broader_owner_policy(conn: Conn) -> None:
    """A live project may have its own owner rule on jobs; the trigger still holds."""
    user = new_user(conn)
    job = insert_job(conn, user, status="completed")
    conn.execute(
        "create policy test_owner_all on public.jobs for all to authenticated"
        " using (auth.uid() = user_id)"
    )
    for change in ("status = 'cancelled'", "status = 'queued'", "metadata = '{}'"):
        with pytest.raises(errors.InsufficientPrivilege), acting_as(conn, "authenticated", user):
            conn.execute(f"update public.jobs set {change} where id = %s", (job,))
    assert job_row(conn, job)[0] == "completed"


def test_the_service_role_updates_jobs_freely(conn: Conn) -> None:
    user = new_user(conn)
    job = insert_job(conn, user, status="processing")
    with acting_as(conn, "service_role"):
        conn.execute(
            "update public.jobs set status = 'completed', metadata = '{\"base_seed\": 7}',"
            " completed_at = now() where id = %s",
            (job,),
        )
    status, metadata, _, completed_at = job_row(conn, job)
    assert (status, metadata, completed_at is not None) == ("completed", {"base_seed": 7}, True)
