"""The workspace cleanup flow on a real Prefect API against the storage stand-in (and, when a
PostgreSQL is configured, the migrated project database)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from devstack.storage_standin import StorageStandIn
from flows.cleanup import cleanup_workspace
from genjobs.runtime import Runtime, set_runtime
from genjobs.storage.supabase import SupabaseStorage
from tests.backfill.conftest import TARGET, make_runtime, png_bytes, snapshot

pytestmark = pytest.mark.usefixtures("prefect_api")

OTHER_BUCKETS = ("user-library", "image_fast")


def ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def _uid() -> str:
    return str(uuid.uuid4())


class Workspace:
    """Objects seeded into the stand-in with chosen ages."""

    def __init__(self, standin: StorageStandIn):
        self.standin = standin
        self.expired: dict[str, int] = {}
        self.young: set[str] = set()
        standin.reset()
        standin.create_contract_buckets([TARGET, *OTHER_BUCKETS])

    def put(self, path: str, age_days: float, bucket: str = TARGET) -> str:
        data = png_bytes(len(self.expired) + len(self.young) + 1, (8 + int(age_days), 8))
        content_type = "image/webp" if path.endswith(".webp") else "image/png"
        self.standin.put_object(bucket, path, data, content_type)
        self.standin.set_created_at(bucket, path, ago(age_days))
        if bucket == TARGET:
            if age_days > 7:
                self.expired[path] = len(data)
            else:
                self.young.add(path)
        return path

    def asset(self, user: str, age_days: float) -> tuple[str, str]:
        job = _uid()
        original = self.put(f"{user}/{job}/0.png", age_days)
        thumbnail = self.put(f"{user}/{job}/0.thumb.webp", age_days)
        return original, thumbnail


@pytest.fixture
def workspace(standin_server: StorageStandIn) -> Workspace:
    return Workspace(standin_server)


@pytest.fixture
def cleanup_runtime(standin_server: StorageStandIn, tmp_path: Path) -> Iterator[Runtime]:
    runtime = make_runtime(standin_server, tmp_path)
    set_runtime(runtime)
    yield runtime
    set_runtime(None)
    assert isinstance(runtime.storage, SupabaseStorage)
    runtime.storage.close()


async def final_state(flow_function: Any, **parameters: Any) -> Any:
    """Run a flow and return its final state (not its result)."""
    return await flow_function(return_state=True, **parameters)


def deletes(standin: StorageStandIn) -> list[str]:
    return [r.path for r in standin.requests if r.method == "DELETE"]


async def test_cleanup_removes_only_expired_objects_of_its_bucket(
    workspace: Workspace, cleanup_runtime: Runtime
) -> None:
    standin = workspace.standin
    user = _uid()
    for age in (7.5, 8, 30):
        workspace.asset(user, age)
    workspace.put(f"{_uid()}/{_uid()}_1754550000.png", 400)
    workspace.asset(user, 1)
    workspace.put(f"{user}/{_uid()}/0.png", 6.9)
    for bucket in OTHER_BUCKETS:
        workspace.put(f"{user}/old-{bucket}.png", 90, bucket=bucket)
    before = snapshot(standin)
    standin.clear_requests()

    dry_state = await final_state(cleanup_workspace)
    dry = await dry_state.result()
    assert snapshot(standin) == before and deletes(standin) == []
    assert dry.dry_run and dry.listed == len(workspace.expired) + len(workspace.young)
    assert (dry.expired, dry.removed) == (len(workspace.expired), len(workspace.expired))
    assert dry.bytes_freed == sum(workspace.expired.values())
    assert not dry.database and dry.rows_deleted == 0

    summary = await cleanup_workspace(dry_run=False, batch_size=3)
    assert summary.removed == len(workspace.expired) == 7
    assert summary.bytes_freed == sum(workspace.expired.values())
    assert set(standin.object_names(TARGET)) == workspace.young
    after = snapshot(standin)
    assert {k: v for k, v in after.items() if k[0] != TARGET} == {
        k: v for k, v in before.items() if k[0] != TARGET
    }
    assert deletes(standin) == [f"/object/{TARGET}"] * 3

    again = await cleanup_workspace(dry_run=False)
    assert (again.expired, again.removed) == (0, 0)
    assert snapshot(standin) == after


async def test_cleanup_cleans_only_the_named_bucket(
    workspace: Workspace, cleanup_runtime: Runtime
) -> None:
    standin = workspace.standin
    kept = workspace.put(f"{_uid()}/{_uid()}/0.png", 30)
    library = workspace.put(f"{_uid()}/{_uid()}.png", 30, bucket="user-library")
    recent = workspace.put(f"{_uid()}/{_uid()}.png", 2, bucket="user-library")
    summary = await cleanup_workspace(dry_run=False, bucket="user-library", ttl_days=14)
    assert summary.removed == 1 and summary.bucket == "user-library"
    assert standin.object_names("user-library") == [recent]
    assert library not in standin.object_names("user-library")
    assert standin.object_names(TARGET) == [kept]


async def test_cleanup_refuses_a_non_positive_ttl(cleanup_runtime: Runtime) -> None:
    state = await final_state(cleanup_workspace, dry_run=False, ttl_days=0)
    assert state.is_failed()
    with pytest.raises(ValueError, match="ttl_days"):
        await state.result()


def insert_asset(
    conn: object, user: str, path: str, thumbnail: str | None, expires_at: datetime
) -> None:
    conn.execute(  # type: ignore[attr-defined]
        "insert into auth.users (id) values (%s) on conflict do nothing", (user,)
    )
    conn.execute(  # type: ignore[attr-defined]
        """insert into public.workspace_assets (user_id, asset_type, temp_storage_path,
               file_size_bytes, mime_type, generation_seed, original_prompt, model_used, job_id,
               thumbnail_path, created_at, expires_at)
           values (%s, 'image', %s, 0, 'image/png', 7, 'a lighthouse', 'sdxl', %s, %s, %s, %s)""",
        (user, path, path.split("/")[1], thumbnail, expires_at - timedelta(days=7), expires_at),
    )


def asset_paths(dsn: str) -> set[str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select temp_storage_path from public.workspace_assets").fetchall()
    return {str(row[0]) for row in rows}


@pytest.mark.postgres
async def test_cleanup_deletes_the_expired_rows_of_removed_objects(
    workspace: Workspace, project_db: str, tmp_path: Path
) -> None:
    import psycopg

    standin = workspace.standin
    user = _uid()
    gone, gone_thumb = workspace.asset(user, 9)
    kept, kept_thumb = workspace.asset(user, 9)
    orphan = workspace.put(f"{user}/{_uid()}/0.png", 9)
    young, _ = workspace.asset(user, 1)
    row_only = f"{user}/{_uid()}/0.png"
    with psycopg.connect(project_db, autocommit=True) as conn:
        insert_asset(conn, user, gone, gone_thumb, ago(2))
        insert_asset(conn, user, kept, kept_thumb, ago(-3))
        insert_asset(conn, user, young, None, ago(-6))
        insert_asset(conn, user, row_only, None, ago(1))
    runtime = make_runtime(standin, tmp_path, database_dsn=SecretStr(project_db))
    set_runtime(runtime)
    try:
        before = snapshot(standin)
        dry = await cleanup_workspace()
        assert snapshot(standin) == before
        assert asset_paths(project_db) == {gone, kept, young, row_only}
        assert dry.database and dry.rows_deleted == 1
        assert sorted(dry.kept_for_live_rows) == sorted([kept, kept_thumb])

        summary = await cleanup_workspace(dry_run=False)
    finally:
        set_runtime(None)
        assert isinstance(runtime.storage, SupabaseStorage)
        runtime.storage.close()
    assert summary.removed == 3 and summary.rows_deleted == 1
    remaining = set(standin.object_names(TARGET))
    assert {gone, gone_thumb, orphan} & remaining == set()
    assert {kept, kept_thumb, young} <= remaining
    assert asset_paths(project_db) == {kept, young, row_only}
