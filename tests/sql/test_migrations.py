"""The SQL migrations against a real PostgreSQL: schema, bucket, row-level security, cleanup.

Needs a server: ``eval "$(bash scripts/start_postgres.sh)"`` sets GENJOBS_TEST_PG_DSN.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from genjobs.db.migrations import SUPABASE_DIR, bootstrap_file, migration_files

from .conftest import REQUIRES_POSTGRES, MigratedDatabase

pytestmark = REQUIRES_POSTGRES

psycopg = pytest.importorskip("psycopg")
from psycopg import errors, sql  # noqa: E402

BUCKET = "workspace-temp"
MIME_TYPES = [
    "image/jpeg",
    "image/png",
    "image/webp",
    "video/mp4",
    "video/webm",
    "video/quicktime",
]
JOB_TYPES = [
    "sdxl_image_fast",
    "sdxl_image_high",
    "image_fast",
    "image_high",
    "video_fast",
    "video_high",
    "wan_video_fast",
    "wan_video_high",
    "image7b_fast_enhanced",
    "image7b_high_enhanced",
    "video7b_fast_enhanced",
    "video7b_high_enhanced",
    "rv51_fast",
    "rv51_high",
]
JOB_STATUSES = ["queued", "processing", "completed", "failed", "cancelled"]
UNIQUE_JOB_INDEX = "workspace_assets_job_id_asset_index_unique"
UNIQUE_USER_JOB_INDEX = "workspace_assets_user_id_job_id_asset_index_key"

Conn = Any  # psycopg.Connection, imported lazily


# Helpers ---------------------------------------------------------------------------------


@contextmanager
def acting_as(conn: Conn, role: str, sub: uuid.UUID | str | None = None) -> Iterator[None]:
    """Runs the block as PostgREST / the storage server would for a request with this JWT.

    A savepoint holds the role and the claims; they end with the block (and so does the
    savepoint's work if the block raises).
    """
    claims: dict[str, str] = {"role": role}
    if sub is not None:
        claims["sub"] = str(sub)
    with conn.transaction():
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        conn.execute(
            "select set_config('request.jwt.claims', %s, true),"
            " set_config('request.jwt.claim.sub', %s, true),"
            " set_config('request.jwt.claim.role', %s, true)",
            (json.dumps(claims), claims.get("sub", ""), role),
        )
        yield
        conn.execute("set local role none")
        conn.execute(
            "select set_config('request.jwt.claims', '', true),"
            " set_config('request.jwt.claim.sub', '', true),"
            " set_config('request.jwt.claim.role', '', true)"
        )


def new_user(conn: Conn) -> uuid.UUID:
    user_id = uuid.uuid4()
    conn.execute("insert into auth.users (id) values (%s)", (user_id,))
    return user_id


def insert_asset(
    conn: Conn,
    user_id: uuid.UUID,
    *,
    job_id: uuid.UUID | None = None,
    index: int = 0,
    path: str | None = None,
    expires_in: str | None = None,
) -> uuid.UUID:
    """Inserts a workspace_assets row like job-callback does; returns its id.

    ``expires_in`` is an interval relative to now() ('-1 second' is expired); None keeps the
    column default.
    """
    job_id = job_id or uuid.uuid4()
    path = path or f"{user_id}/{job_id}/{index}.png"
    columns = [
        "user_id",
        "asset_type",
        "temp_storage_path",
        "thumbnail_path",
        "file_size_bytes",
        "mime_type",
        "generation_seed",
        "original_prompt",
        "model_used",
        "job_id",
        "asset_index",
    ]
    values: list[Any] = [
        user_id,
        "image",
        path,
        path.rsplit(".", 1)[0] + ".thumb.webp",
        0,
        "image/png",
        7 + index,
        "a lighthouse at dusk",
        "sdxl",
        job_id,
        index,
    ]
    placeholders: list[sql.Composable] = [sql.Placeholder()] * len(values)
    if expires_in is not None:
        columns.append("expires_at")
        placeholders.append(sql.SQL("now() + {}::interval").format(sql.Placeholder()))
        values.append(expires_in)
    query = sql.SQL("insert into public.workspace_assets ({}) values ({}) returning id").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", ").join(placeholders)
    )
    row = conn.execute(query, values).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def insert_object(conn: Conn, name: str, bucket: str = BUCKET) -> uuid.UUID:
    row = conn.execute(
        "insert into storage.objects (bucket_id, name, metadata) values (%s, %s, %s) returning id",
        (bucket, name, json.dumps({"mimetype": "image/png", "size": 3})),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def insert_job(
    conn: Conn,
    user_id: uuid.UUID,
    *,
    status: str = "queued",
    job_type: str = "sdxl_image_fast",
    age: str = "0 seconds",
) -> uuid.UUID:
    row = conn.execute(
        "insert into public.jobs (user_id, job_type, status, original_prompt, created_at)"
        " values (%s, %s, %s, 'a lighthouse', now() - %s::interval) returning id",
        (user_id, job_type, status, age),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def ids(conn: Conn, query: str, params: Any = None) -> set[uuid.UUID]:
    return {uuid.UUID(str(row[0])) for row in conn.execute(query, params).fetchall()}


def columns_of(conn: Conn, table: str) -> dict[str, tuple[str, bool, str | None]]:
    rows = conn.execute(
        """
        select a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
        from pg_attribute a
        left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped
        """,
        (table,),
    ).fetchall()
    return {name: (type_, notnull, default) for name, type_, notnull, default in rows}


# Applying the SQL ------------------------------------------------------------------------


def test_sql_files_are_found_in_the_repository() -> None:
    names = [path.name for path in migration_files()]
    assert SUPABASE_DIR.name == "supabase"
    assert names == sorted(names)
    assert names[0].startswith("2026") and all(name.endswith(".sql") for name in names)
    assert bootstrap_file().is_file()


def test_migrations_apply_twice_with_the_same_result(migrated_db: MigratedDatabase) -> None:
    expected = ["test_bootstrap.sql", *(path.name for path in migration_files())]
    assert migrated_db.applied == [expected, expected]
    first, second = migrated_db.snapshots
    assert first == second
    assert first["buckets"], "the bucket row is part of the snapshot"


# public.workspace_assets -----------------------------------------------------------------


def test_workspace_assets_columns_types_and_defaults(conn: Conn) -> None:
    assert columns_of(conn, "public.workspace_assets") == {
        "id": ("uuid", True, "gen_random_uuid()"),
        "user_id": ("uuid", True, None),
        "asset_type": ("text", True, None),
        "temp_storage_path": ("text", True, None),
        "file_size_bytes": ("bigint", True, None),
        "mime_type": ("text", True, None),
        "duration_seconds": ("numeric(10,3)", False, None),
        "thumbnail_path": ("text", False, None),
        "generation_seed": ("bigint", True, None),
        "original_prompt": ("text", True, None),
        "model_used": ("text", True, None),
        "generation_settings": ("jsonb", False, "'{}'::jsonb"),
        "width": ("integer", False, None),
        "height": ("integer", False, None),
        "job_id": ("uuid", True, None),
        "asset_index": ("integer", True, "0"),
        "created_at": ("timestamp with time zone", False, "now()"),
        "expires_at": ("timestamp with time zone", False, "(now() + '7 days'::interval)"),
    }


def test_workspace_assets_constraints(conn: Conn) -> None:
    rows = conn.execute(
        "select conname, contype, pg_get_constraintdef(oid) from pg_constraint"
        " where conrelid = 'public.workspace_assets'::regclass"
    ).fetchall()
    assert {name: (kind, definition) for name, kind, definition in rows} == {
        "workspace_assets_pkey": ("p", "PRIMARY KEY (id)"),
        "workspace_assets_asset_type_check": (
            "c",
            "CHECK ((asset_type = ANY (ARRAY['image'::text, 'video'::text])))",
        ),
        UNIQUE_JOB_INDEX: ("u", "UNIQUE (job_id, asset_index)"),
        UNIQUE_USER_JOB_INDEX: ("u", "UNIQUE (user_id, job_id, asset_index)"),
        # The only foreign key: job_id deliberately has none.
        "workspace_assets_user_id_fkey": (
            "f",
            "FOREIGN KEY (user_id) REFERENCES auth.users(id) ON DELETE CASCADE",
        ),
    }


def test_workspace_assets_indexes(conn: Conn) -> None:
    rows = dict(
        conn.execute(
            "select indexname, indexdef from pg_indexes"
            " where schemaname = 'public' and tablename = 'workspace_assets'"
        ).fetchall()
    )
    on = "ON public.workspace_assets USING btree"
    assert rows == {
        "workspace_assets_pkey": f"CREATE UNIQUE INDEX workspace_assets_pkey {on} (id)",
        UNIQUE_JOB_INDEX: f"CREATE UNIQUE INDEX {UNIQUE_JOB_INDEX} {on} (job_id, asset_index)",
        UNIQUE_USER_JOB_INDEX: (
            f"CREATE UNIQUE INDEX {UNIQUE_USER_JOB_INDEX} {on} (user_id, job_id, asset_index)"
        ),
        "idx_workspace_user_created": (
            f"CREATE INDEX idx_workspace_user_created {on} (user_id, created_at DESC)"
        ),
        "idx_workspace_expires": f"CREATE INDEX idx_workspace_expires {on} (expires_at)",
    }


def test_workspace_assets_rls_replica_identity_and_realtime(conn: Conn) -> None:
    rls, identity = conn.execute(
        "select relrowsecurity, relreplident from pg_class"
        " where oid = 'public.workspace_assets'::regclass"
    ).fetchone()
    assert (rls, identity) == (True, "f")
    policies = conn.execute(
        "select policyname, permissive, roles::text, cmd, qual, with_check from pg_policies"
        " where schemaname = 'public' and tablename = 'workspace_assets'"
    ).fetchall()
    assert policies == [
        (
            "workspace_assets_owner_select",
            "PERMISSIVE",
            "{authenticated}",
            "SELECT",
            "(auth.uid() = user_id)",
            None,
        )
    ]
    published = conn.execute(
        "select 1 from pg_publication_tables where pubname = 'supabase_realtime'"
        " and schemaname = 'public' and tablename = 'workspace_assets'"
    ).fetchall()
    assert published == [(1,)]


def test_workspace_assets_defaults_fill_a_callback_row(conn: Conn) -> None:
    user = new_user(conn)
    asset_id = insert_asset(conn, user)
    row = conn.execute(
        "select asset_index, generation_settings, expires_at - created_at, created_at = now()"
        " from public.workspace_assets where id = %s",
        (asset_id,),
    ).fetchone()
    assert row is not None
    index, settings, lifetime, created_now = row
    assert (index, settings, lifetime.days, created_now) == (0, {}, 7, True)


def test_asset_type_check_rejects_other_types(conn: Conn) -> None:
    user = new_user(conn)
    asset_id = insert_asset(conn, user)
    with pytest.raises(errors.CheckViolation) as info, conn.transaction():
        conn.execute(
            "update public.workspace_assets set asset_type = 'audio' where id = %s", (asset_id,)
        )
    assert info.value.diag.constraint_name == "workspace_assets_asset_type_check"


def test_deleting_a_user_cascades_to_their_assets_and_job_id_has_no_foreign_key(
    conn: Conn,
) -> None:
    user, other = new_user(conn), new_user(conn)
    insert_asset(conn, user, job_id=uuid.uuid4())  # no jobs row: accepted
    kept = insert_asset(conn, other)
    conn.execute("delete from auth.users where id = %s", (user,))
    assert ids(conn, "select id from public.workspace_assets") == {kept}


def test_duplicate_asset_for_the_same_job_and_index_is_refused(conn: Conn) -> None:
    user, other = new_user(conn), new_user(conn)
    job_id = uuid.uuid4()
    insert_asset(conn, user, job_id=job_id, index=0)
    insert_asset(conn, user, job_id=job_id, index=1)

    with pytest.raises(errors.UniqueViolation) as same_user, conn.transaction():
        insert_asset(conn, user, job_id=job_id, index=0)
    assert same_user.value.diag.constraint_name in {UNIQUE_JOB_INDEX, UNIQUE_USER_JOB_INDEX}

    with pytest.raises(errors.UniqueViolation) as other_user, conn.transaction():
        insert_asset(conn, other, job_id=job_id, index=1)
    assert other_user.value.diag.constraint_name == UNIQUE_JOB_INDEX

    insert = (
        "insert into public.workspace_assets (user_id, asset_type, temp_storage_path,"
        " file_size_bytes, mime_type, generation_seed, original_prompt, model_used, job_id,"
        " asset_index) values (%s, 'image', 'x.png', 0, 'image/png', 1, 'p', 'sdxl', %s, 0) "
    )
    for conflict in (
        "on conflict do nothing",
        "on conflict (job_id, asset_index) do nothing",
        f"on conflict on constraint {UNIQUE_JOB_INDEX} do nothing",
        "on conflict (user_id, job_id, asset_index) do nothing",
    ):
        assert conn.execute(insert + conflict, (user, job_id)).rowcount == 0, conflict
    count = conn.execute(
        "select count(*) from public.workspace_assets where job_id = %s", (job_id,)
    ).fetchone()
    assert count == (2,)


def test_workspace_assets_rls_shows_users_only_their_rows(conn: Conn) -> None:
    user_a, user_b = new_user(conn), new_user(conn)
    rows_a = {insert_asset(conn, user_a, index=i) for i in range(2)}
    rows_b = {insert_asset(conn, user_b)}
    query = "select id from public.workspace_assets"

    with acting_as(conn, "authenticated", user_a):
        assert ids(conn, query) == rows_a
    with acting_as(conn, "authenticated", user_b):
        assert ids(conn, query) == rows_b
    with acting_as(conn, "anon"):
        assert ids(conn, query) == set()
    with acting_as(conn, "service_role"):
        assert ids(conn, query) == rows_a | rows_b


def test_workspace_assets_rls_keeps_users_off_other_users_rows(conn: Conn) -> None:
    user_a, user_b = new_user(conn), new_user(conn)
    row_b = insert_asset(conn, user_b)

    for statement in (
        "update public.workspace_assets set model_used = 'x' where id = %s",
        "delete from public.workspace_assets where id = %s",
    ):
        with pytest.raises(errors.InsufficientPrivilege), acting_as(conn, "authenticated", user_a):
            conn.execute(statement, (row_b,))
    for owner in (user_b, user_a):  # rows are written by job-callback (service role) only
        with pytest.raises(errors.InsufficientPrivilege), acting_as(conn, "authenticated", user_a):
            insert_asset(conn, owner)
    assert ids(conn, "select id from public.workspace_assets") == {row_b}
    assert conn.execute(
        "select model_used from public.workspace_assets where id = %s", (row_b,)
    ).fetchone() == ("sdxl",)


# public.jobs ------------------------------------------------------------------------------


def test_jobs_columns_types_and_defaults(conn: Conn) -> None:
    columns = columns_of(conn, "public.jobs")
    assert columns == {
        "id": ("uuid", True, "gen_random_uuid()"),
        "user_id": ("uuid", True, None),
        "job_type": ("text", True, None),
        "status": ("text", True, "'queued'::text"),
        "error_message": ("text", False, None),
        "metadata": ("jsonb", False, "'{}'::jsonb"),
        "created_at": ("timestamp with time zone", False, "now()"),
        "started_at": ("timestamp with time zone", False, None),
        "completed_at": ("timestamp with time zone", False, None),
        "attempts": ("integer", False, "0"),
        "max_attempts": ("integer", False, "3"),
        "format": ("text", False, None),
        "quality": ("text", False, None),
        "model_type": ("text", False, None),
        "original_prompt": ("text", False, None),
        "destination": ("text", False, None),
        "video_id": ("uuid", False, None),
        "image_id": ("uuid", False, None),
    }


def test_jobs_cleanup_index(conn: Conn) -> None:
    row = conn.execute(
        "select indexdef from pg_indexes where schemaname = 'public' and indexname = %s",
        ("idx_jobs_cleanup",),
    ).fetchone()
    assert row == (
        "CREATE INDEX idx_jobs_cleanup ON public.jobs USING btree (status, created_at) WHERE"
        " (status = ANY (ARRAY['processing'::text, 'queued'::text, 'failed'::text]))",
    )


def test_jobs_defaults(conn: Conn) -> None:
    user = new_user(conn)
    row = conn.execute(
        "insert into public.jobs (user_id, job_type) values (%s, 'video_fast')"
        " returning status, attempts, max_attempts, metadata, created_at = now()",
        (user,),
    ).fetchone()
    assert row == ("queued", 0, 3, {}, True)


def test_jobs_status_check_accepts_the_five_states_and_rejects_others(conn: Conn) -> None:
    user = new_user(conn)
    job = insert_job(conn, user)
    for status in JOB_STATUSES:
        conn.execute("update public.jobs set status = %s where id = %s", (status, job))
    with pytest.raises(errors.CheckViolation) as info, conn.transaction():
        conn.execute("update public.jobs set status = 'bogus' where id = %s", (job,))
    assert info.value.diag.constraint_name == "jobs_status_check"
    with pytest.raises(errors.CheckViolation), conn.transaction():
        insert_job(conn, user, status="bogus")


def test_jobs_job_type_check(conn: Conn) -> None:
    user = new_user(conn)
    for job_type in JOB_TYPES:
        insert_job(conn, user, job_type=job_type)
    for job_type in ("sdxl_fast", "video7b_fast", "rv52_fast", ""):
        with pytest.raises(errors.CheckViolation) as info, conn.transaction():
            insert_job(conn, user, job_type=job_type)
        assert info.value.diag.constraint_name == "jobs_job_type_check"


def test_jobs_rls_owner_reads_queues_and_cancels(conn: Conn) -> None:
    user_a, user_b = new_user(conn), new_user(conn)
    job_a = insert_job(conn, user_a, status="processing")
    done_a = insert_job(conn, user_a, status="completed")
    job_b = insert_job(conn, user_b)
    cancel = "update public.jobs set status = 'cancelled' where id = %s"

    with acting_as(conn, "authenticated", user_a):
        assert ids(conn, "select id from public.jobs") == {job_a, done_a}
        assert conn.execute(cancel, (job_b,)).rowcount == 0
        assert conn.execute(cancel, (done_a,)).rowcount == 0
        assert conn.execute(cancel, (job_a,)).rowcount == 1
        queued = insert_job(conn, user_a)
    with acting_as(conn, "authenticated", user_b):
        assert ids(conn, "select id from public.jobs") == {job_b}
    with pytest.raises(errors.InsufficientPrivilege), acting_as(conn, "authenticated", user_a):
        conn.execute("update public.jobs set status = 'completed' where id = %s", (queued,))
    with pytest.raises(errors.InsufficientPrivilege), acting_as(conn, "authenticated", user_a):
        insert_job(conn, user_b)
    statuses = dict(conn.execute("select id, status from public.jobs").fetchall())
    assert statuses == {
        job_a: "cancelled",
        done_a: "completed",
        job_b: "queued",
        queued: "queued",
    }


# Bucket and storage row-level security ---------------------------------------------------


def test_workspace_temp_bucket(conn: Conn) -> None:
    row = conn.execute(
        "select public, file_size_limit, allowed_mime_types from storage.buckets where id = %s",
        (BUCKET,),
    ).fetchone()
    assert row is not None
    public, limit, mime_types = row
    assert public is False
    assert limit >= 209715200
    assert mime_types == MIME_TYPES


def test_bucket_migration_only_widens_an_existing_bucket(conn: Conn) -> None:
    (bucket_sql,) = [p for p in migration_files() if "workspace_temp_bucket" in p.name]
    conn.execute(
        "update storage.buckets set public = true, file_size_limit = 52428800,"
        " allowed_mime_types = '{image/png,application/pdf}' where id = %s",
        (BUCKET,),
    )
    conn.execute(bucket_sql.read_bytes())
    row = conn.execute(
        "select public, file_size_limit, allowed_mime_types from storage.buckets where id = %s",
        (BUCKET,),
    ).fetchone()
    widened = ["image/png", "application/pdf", "image/jpeg", "image/webp", "video/mp4"]
    assert row == (False, 209715200, [*widened, "video/webm", "video/quicktime"])

    conn.execute("update storage.buckets set file_size_limit = 1073741824 where id = %s", (BUCKET,))
    conn.execute(bucket_sql.read_bytes())
    row = conn.execute(
        "select file_size_limit from storage.buckets where id = %s", (BUCKET,)
    ).fetchone()
    assert row == (1073741824,)


def test_storage_policy_definition(conn: Conn) -> None:
    rows = conn.execute(
        "select cmd, roles::text, qual, with_check from pg_policies"
        " where schemaname = 'storage' and tablename = 'objects'"
    ).fetchall()
    assert rows == [
        (
            "SELECT",
            "{authenticated}",
            "((bucket_id = 'workspace-temp'::text)"
            " AND ((storage.foldername(name))[1] = (auth.uid())::text))",
            None,
        )
    ]


def test_storage_rls_owners_see_only_their_own_objects(conn: Conn) -> None:
    user_a, user_b = new_user(conn), new_user(conn)
    conn.execute("insert into storage.buckets (id, name) values ('user-library', 'user-library')")
    job = uuid.uuid4()
    objects_a = {
        insert_object(conn, f"{user_a}/{job}/0.png"),
        insert_object(conn, f"{user_a}/{job}/0.thumb.webp"),
        insert_object(conn, f"{user_a}/{uuid.uuid4()}.mp4"),
    }
    objects_b = {insert_object(conn, f"{user_b}/{uuid.uuid4()}/0.mp4")}
    others = {
        insert_object(conn, f"{user_a}/{job}.png", bucket="user-library"),
        insert_object(conn, f"{user_a}.png"),  # at the root: no owner folder
        insert_object(conn, f"shared/{user_a}/0.png"),  # owner folder not first
    }
    query = "select id from storage.objects"

    with acting_as(conn, "authenticated", user_a):
        assert ids(conn, query) == objects_a
    with acting_as(conn, "authenticated", user_b):
        assert ids(conn, query) == objects_b
    with acting_as(conn, "anon"):
        assert ids(conn, query) == set()
    with acting_as(conn, "service_role"):
        assert ids(conn, query) == objects_a | objects_b | others


def test_storage_rls_leaves_writes_to_the_service_role(conn: Conn) -> None:
    user = new_user(conn)
    name = f"{user}/{uuid.uuid4()}/0.png"
    object_id = insert_object(conn, name)

    with pytest.raises(errors.InsufficientPrivilege), acting_as(conn, "authenticated", user):
        insert_object(conn, f"{user}/{uuid.uuid4()}/1.png")
    with acting_as(conn, "authenticated", user):
        assert (
            conn.execute(
                "update storage.objects set metadata = '{}' where id = %s", (object_id,)
            ).rowcount
            == 0
        )
        assert conn.execute("delete from storage.objects where id = %s", (object_id,)).rowcount == 0
    with acting_as(conn, "service_role"):
        written = insert_object(conn, f"{user}/{uuid.uuid4()}/1.png")
        assert conn.execute("delete from storage.objects where id = %s", (object_id,)).rowcount == 1
    assert ids(conn, "select id from storage.objects") == {written}


def test_storage_rls_fails_for_a_non_uuid_subject(conn: Conn) -> None:
    insert_object(conn, f"{uuid.uuid4()}/0.png")
    with (
        pytest.raises(errors.InvalidTextRepresentation),
        acting_as(conn, "authenticated", "not-a-uuid"),
    ):
        conn.execute("select id from storage.objects").fetchall()


def test_bootstrap_auth_and_storage_helpers(conn: Conn) -> None:
    user = uuid.uuid4()
    assert conn.execute("select auth.uid(), auth.role(), auth.jwt()").fetchone() == (
        None,
        None,
        None,
    )
    with conn.transaction():
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (json.dumps({"sub": str(user), "role": "authenticated"}),),
        )
        row = conn.execute("select auth.uid(), auth.role(), auth.jwt() ->> 'sub'").fetchone()
        assert row == (user, "authenticated", str(user))
    with conn.transaction():
        conn.execute("select set_config('request.jwt.claim.sub', %s, true)", (str(user),))
        assert conn.execute("select auth.uid()").fetchone() == (user,)
    assert conn.execute(
        "select storage.foldername('u/j/0.png'), storage.foldername('0.png')"
    ).fetchone() == (["u", "j"], [])
    bypass = conn.execute(
        "select rolname, rolbypassrls, rolcanlogin from pg_roles"
        " where rolname in ('anon', 'authenticated', 'service_role') order by rolname"
    ).fetchall()
    assert bypass == [
        ("anon", False, False),
        ("authenticated", False, False),
        ("service_role", True, False),
    ]


# Cleanup functions -----------------------------------------------------------------------


def test_cleanup_expired_workspace_assets_deletes_only_expired_rows(conn: Conn) -> None:
    user_a, user_b = new_user(conn), new_user(conn)
    insert_asset(conn, user_a, expires_in="-1 second")
    insert_asset(conn, user_b, expires_in="-8 days")
    fresh = {insert_asset(conn, user_a), insert_asset(conn, user_b, expires_in="1 second")}
    job = insert_job(conn, user_a, status="completed", age="2 days")

    with acting_as(conn, "service_role"):
        assert conn.execute("select public.cleanup_expired_workspace_assets()").fetchone() == (2,)
        assert conn.execute("select public.cleanup_expired_workspace_assets()").fetchone() == (0,)
    assert ids(conn, "select id from public.workspace_assets") == fresh
    assert ids(conn, "select id from public.jobs") == {job}


@pytest.mark.parametrize(
    "call",
    [
        "select public.cleanup_expired_workspace_assets()",
        "select public.clean_orphaned_jobs()",
        "select * from public.delete_workspace_assets_by_paths(array['x'])",
    ],
)
@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_cleanup_functions_are_for_the_service_role_only(conn: Conn, role: str, call: str) -> None:
    user = new_user(conn)
    insert_asset(conn, user, expires_in="-1 day")
    with pytest.raises(errors.InsufficientPrivilege), acting_as(conn, role, user):
        conn.execute(call)
    assert conn.execute("select count(*) from public.workspace_assets").fetchone() == (1,)


def test_delete_workspace_assets_by_paths_deletes_and_returns_expired_rows(conn: Conn) -> None:
    user = new_user(conn)
    job = uuid.uuid4()
    paths = [f"{user}/{job}/{i}.png" for i in range(4)]
    expired = insert_asset(conn, user, job_id=job, index=0, path=paths[0], expires_in="-1 hour")
    not_listed = insert_asset(conn, user, job_id=job, index=1, path=paths[1], expires_in="-1 hour")
    fresh = insert_asset(conn, user, job_id=job, index=2, path=paths[2])

    with acting_as(conn, "service_role"):
        deleted = conn.execute(
            "select id, temp_storage_path, thumbnail_path, job_id, asset_index"
            " from public.delete_workspace_assets_by_paths(%s)",
            ([paths[0], paths[2], paths[3]],),
        ).fetchall()
        assert deleted == [
            (expired, paths[0], f"{user}/{job}/0.thumb.webp", job, 0),
        ]
        assert ids(conn, "select id from public.workspace_assets") == {not_listed, fresh}
        later = conn.execute(
            "select id from public.delete_workspace_assets_by_paths(%s, now() + interval '8 days')",
            ([paths[2]],),
        ).fetchall()
        assert later == [(fresh,)]
        assert conn.execute(
            "select count(*) from public.delete_workspace_assets_by_paths('{}')"
        ).fetchone() == (0,)
    assert ids(conn, "select id from public.workspace_assets") == {not_listed}


def test_clean_orphaned_jobs_deletes_old_completed_jobs_without_assets(conn: Conn) -> None:
    user = new_user(conn)
    orphan = insert_job(conn, user, status="completed", age="25 hours")
    with_asset = insert_job(conn, user, status="completed", age="25 hours")
    insert_asset(conn, user, job_id=with_asset)
    recent = insert_job(conn, user, status="completed", age="23 hours")
    failed = insert_job(conn, user, status="failed", age="3 days")
    queued = insert_job(conn, user, status="queued", age="3 days")

    with acting_as(conn, "service_role"):
        assert conn.execute("select public.clean_orphaned_jobs()").fetchone() == (1,)
    assert orphan not in ids(conn, "select id from public.jobs")
    assert ids(conn, "select id from public.jobs") == {with_asset, recent, failed, queued}
