"""The workspace cleanup flow on a real Prefect API against the real storage server (and, when a
PostgreSQL is configured, the migrated project database)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.exceptions import ParameterBindError
from pydantic import SecretStr

from flows.cleanup import cleanup_workspace
from genjobs.errors import CleanupRefused, DatabaseError
from genjobs.settings import Settings
from tests.backfill.conftest import (
    TARGET,
    SeededStorage,
    artifact_markdown,
    final_state,
    installed_settings,
    png_bytes,
    snapshot,
)

pytestmark = pytest.mark.usefixtures("prefect_api")

OTHER_BUCKETS = ("user-library", "image_fast")


def ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def _uid() -> str:
    return str(uuid.uuid4())


class Workspace:
    """Objects seeded into the server with chosen ages."""

    def __init__(self, seeded: SeededStorage):
        self.seeded = seeded
        self.expired: dict[str, int] = {}
        self.young: set[str] = set()
        seeded.reset([TARGET, *OTHER_BUCKETS])

    def put(self, path: str, age_days: float, bucket: str = TARGET) -> str:
        data = png_bytes(len(self.expired) + len(self.young) + 1, (8 + int(age_days), 8))
        content_type = "image/webp" if path.endswith(".webp") else "image/png"
        self.seeded.put_object(bucket, path, data, content_type)
        self.seeded.set_created_at(bucket, path, ago(age_days))
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
def workspace(seeded_storage: SeededStorage) -> Workspace:
    return Workspace(seeded_storage)


@pytest.fixture
def cleanup_settings(seeded_storage: SeededStorage, tmp_path: Path) -> Iterator[Settings]:
    with installed_settings(seeded_storage, tmp_path) as settings:
        yield settings


def deletes(seeded: SeededStorage) -> list[str]:
    return [r.path for r in seeded.requests if r.method == "DELETE"]


async def test_cleanup_without_a_database_removes_nothing(
    workspace: Workspace, cleanup_settings: Settings
) -> None:
    seeded = workspace.seeded
    user = _uid()
    old, old_thumb = workspace.asset(user, 9)
    workspace.asset(user, 1)
    workspace.put(f"{user}/{_uid()}_1754550000.png", 400)
    before = snapshot(seeded)
    seeded.clear_requests()

    state = await final_state(cleanup_workspace, dry_run=False)
    assert state.is_failed()
    with pytest.raises(CleanupRefused, match="GENJOBS_DATABASE_DSN"):
        await state.result()
    assert snapshot(seeded) == before and deletes(seeded) == []

    dry_state = await final_state(cleanup_workspace)
    dry = await dry_state.result()
    assert snapshot(seeded) == before and deletes(seeded) == []
    assert not dry.database and not dry.decided
    assert dry.note is not None and "nothing can be decided" in dry.note
    assert sorted(c.path for c in dry.candidates) == sorted([old, old_thumb])
    assert dry.kept == {
        "younger than ttl_days": 2,
        "not at the contract layout (another producer's file)": 1,
    }
    report = await artifact_markdown(dry_state, "workspace-cleanup")
    assert "nothing can be decided" in report and f"| {old} |" in report


async def test_cleanup_takes_no_bucket(workspace: Workspace, cleanup_settings: Settings) -> None:
    seeded = workspace.seeded
    library = workspace.put(f"{_uid()}/{_uid()}.png", 30, bucket="user-library")
    with pytest.raises(ParameterBindError, match="bucket"):
        await cleanup_workspace(dry_run=False, bucket="user-library")  # type: ignore[call-arg]
    assert seeded.object_names("user-library") == [library]


@pytest.mark.parametrize(
    ("parameters", "named"),
    [({"ttl_days": 0}, "ttl_days"), ({"now": datetime.now(UTC) + timedelta(days=8)}, "now")],
)
async def test_cleanup_refuses_bad_parameters(
    workspace: Workspace, cleanup_settings: Settings, parameters: dict[str, Any], named: str
) -> None:
    workspace.asset(_uid(), 9)
    before = snapshot(workspace.seeded)
    state = await final_state(cleanup_workspace, dry_run=False, **parameters)
    assert state.is_failed()
    with pytest.raises(ValueError, match=named):
        await state.result()
    assert snapshot(workspace.seeded) == before


def insert_asset(
    conn: Any,
    user: str,
    path: str,
    thumbnail: str | None,
    expires_at: datetime,
    job: str | None = None,
) -> None:
    conn.execute("insert into auth.users (id) values (%s) on conflict do nothing", (user,))
    conn.execute(
        """insert into public.workspace_assets (user_id, asset_type, temp_storage_path,
               file_size_bytes, mime_type, generation_seed, original_prompt, model_used, job_id,
               thumbnail_path, created_at, expires_at)
           values (%s, 'image', %s, 0, 'image/png', 7, 'a lighthouse', 'sdxl', %s, %s, %s, %s)""",
        (
            user,
            path,
            job or path.split("/")[1],
            thumbnail,
            expires_at - timedelta(days=7),
            expires_at,
        ),
    )


def insert_job(
    conn: Any, job: str, user: str, status: str, metadata: dict[str, str] | None = None
) -> None:
    conn.execute(
        """insert into public.jobs (id, user_id, job_type, status, metadata, created_at)
           values (%s, %s, 'sdxl_image_fast', %s, %s::jsonb, now() - interval '30 days')""",
        (job, user, status, json.dumps(metadata or {})),
    )


def asset_paths(dsn: str) -> set[str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select temp_storage_path from public.workspace_assets").fetchall()
    return {str(row[0]) for row in rows}


def signed(path: str) -> str:
    return (
        f"https://project.supabase.co/storage/v1/object/sign/{TARGET}/{path}?token=eyJhbGciOi.x.y"
    )


@pytest.fixture
def db_settings(
    seeded_storage: SeededStorage, project_db: str, tmp_path: Path
) -> Iterator[Settings]:
    with installed_settings(seeded_storage, tmp_path, database_dsn=SecretStr(project_db)) as s:
        yield s


@pytest.mark.postgres
async def test_cleanup_removes_only_expired_assets_and_orphans_of_failed_jobs(
    workspace: Workspace, project_db: str, db_settings: Settings
) -> None:
    import psycopg

    seeded = workspace.seeded
    user, stranger = _uid(), _uid()
    now = datetime.now(UTC)
    gone, gone_thumb = workspace.asset(user, 9)
    live, live_thumb = workspace.asset(user, 9)
    young, _ = workspace.asset(user, 1)
    scene, scene_thumb = workspace.asset(user, 9)
    chat, _ = workspace.asset(user, 9)
    reference, reference_thumb = workspace.asset(user, 9)
    failed, failed_thumb = workspace.asset(user, 9)
    cancelled, cancelled_thumb = workspace.asset(user, 9)
    failed_young, _ = workspace.asset(user, 1)
    completed, _ = workspace.asset(user, 9)
    jobless, _ = workspace.asset(user, 9)
    foreign_job, _ = workspace.asset(user, 9)
    mismatched, _ = workspace.asset(user, 9)
    backfilled, backfilled_thumb = workspace.asset(user, 9)
    timestamped = workspace.put(f"{user}/{_uid()}_1754550000.png", 400)
    flat = workspace.put(f"{user}/{_uid()}.png", 400)
    row_only = f"{user}/{_uid()}/0.png"
    job_of = {path: path.split("/")[1] for path in [*workspace.expired, *workspace.young]}

    with psycopg.connect(project_db, autocommit=True) as conn:
        insert_asset(conn, user, gone, gone_thumb, now - timedelta(days=2))
        insert_asset(conn, user, live, live_thumb, now + timedelta(days=30))
        insert_asset(conn, user, young, None, now + timedelta(days=6))
        insert_asset(conn, user, row_only, None, now - timedelta(days=1))
        insert_asset(conn, user, scene, scene_thumb, now - timedelta(days=2))
        insert_asset(conn, user, chat, None, now - timedelta(days=2))
        insert_asset(conn, stranger, mismatched, None, now - timedelta(days=2))
        conn.execute("insert into public.character_scenes (image_url) values (%s)", (scene,))
        conn.execute(
            "insert into public.conversations (last_scene_image) values (%s)", (signed(chat),)
        )
        insert_job(conn, job_of[reference], user, "failed")
        insert_job(conn, _uid(), user, "completed", {"reference_image_url": signed(reference)})
        insert_job(conn, job_of[failed], user, "failed")
        insert_job(conn, job_of[cancelled], user, "cancelled")
        insert_job(conn, job_of[failed_young], user, "failed")
        insert_job(conn, job_of[completed], user, "completed")
        insert_job(conn, job_of[foreign_job], stranger, "failed")
        insert_job(conn, job_of[backfilled], user, "failed")
        conn.execute(
            """insert into public.backfilled_objects (source_bucket, source_path, target_bucket,
                   target_path, thumbnail_path, sha256, size_bytes)
               values ('image_fast', %s, %s, %s, %s, %s, 1)""",
            (f"{user}/job_x.png", TARGET, backfilled, backfilled_thumb, "0" * 64),
        )
    going = {gone, gone_thumb, failed, failed_thumb, cancelled, cancelled_thumb, reference_thumb}
    before = snapshot(seeded)
    seeded.clear_requests()

    dry_state = await final_state(cleanup_workspace)
    dry = await dry_state.result()
    assert snapshot(seeded) == before and deletes(seeded) == []
    assert dry.database and dry.decided and dry.note is None
    assert {c.path for c in dry.candidates} == going
    reasons = {c.path: c.reason for c in dry.candidates}
    assert reasons[gone].startswith("its workspace_assets row expired")
    assert reasons[failed] == "no workspace_assets row; its job failed"
    assert reasons[cancelled] == "no workspace_assets row; its job cancelled"
    assert dry.kept == {
        "referenced by character_scenes.image_url": 1,
        "referenced by conversations.last_scene_image": 1,
        "referenced by jobs.metadata->>'reference_image_url'": 1,
        "its expired row's other object is still needed": 1,
        "not at the contract layout (another producer's file)": 2,
        "a recorded backfill copy": 2,
        "an unexpired workspace_assets row": 3,
        "a workspace_assets row of another user or job names it": 1,
        "no workspace_assets row; its job is completed": 2,
        "its jobs row belongs to another user": 2,
        "younger than ttl_days": 2,
        "no workspace_assets row and no jobs row": 5,
    }
    assert sum(dry.kept.values()) + len(going) == dry.listed == len(before)
    report = await artifact_markdown(dry_state, "workspace-cleanup")
    for path in going:
        assert f"| {path} |" in report
    assert asset_paths(project_db) == {gone, live, young, row_only, scene, chat, mismatched}

    summary = await cleanup_workspace(dry_run=False, batch_size=1)
    assert summary.removed == len(going) and summary.rows_deleted == 1
    assert summary.bytes_freed == sum(workspace.expired[p] for p in going)
    remaining = set(seeded.object_names(TARGET))
    assert remaining == (set(workspace.expired) | workspace.young) - going
    assert {timestamped, flat, scene, chat, reference, backfilled, mismatched, jobless} <= remaining
    assert asset_paths(project_db) == {live, young, row_only, scene, chat, mismatched}


@pytest.mark.postgres
async def test_cleanup_with_a_missing_table_removes_nothing(
    workspace: Workspace, project_db: str, db_settings: Settings
) -> None:
    import psycopg

    seeded = workspace.seeded
    user = _uid()
    failed, _ = workspace.asset(user, 9)
    before = snapshot(seeded)
    with psycopg.connect(project_db, autocommit=True) as conn:
        insert_job(conn, failed.split("/")[1], user, "failed")
        conn.execute("alter table public.conversations rename to conversations_gone")
    try:
        state = await final_state(cleanup_workspace, dry_run=False)
    finally:
        with psycopg.connect(project_db, autocommit=True) as conn:
            conn.execute("alter table public.conversations_gone rename to conversations")
    assert state.is_failed()
    with pytest.raises(DatabaseError, match=r"public\.conversations"):
        await state.result()
    assert snapshot(seeded) == before
