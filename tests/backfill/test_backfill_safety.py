"""What the backfill, its rollback and the cleanup may delete: only what the backfill wrote,
with the bytes it wrote, and never the last copy of a legacy object."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows.backfill import backfill_legacy_buckets, rollback_backfill
from flows.cleanup import cleanup_workspace
from genjobs.settings import Settings
from genjobs.storage.local import LocalFolderStorage
from tests.backfill.conftest import (
    TARGET,
    LegacySeed,
    SeededStorage,
    backfilled_rows,
    local_settings,
    png_bytes,
    records,
    seed_uuid,
    target_bucket_objects,
)

pytestmark = pytest.mark.usefixtures("prefect_api")


def copied_targets(manifest: Path) -> list[str]:
    return sorted(r["target_path"] for r in records(manifest) if r["outcome"] == "copied")


def same_size_other_bytes(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


async def test_rerun_and_rollback_keep_a_changed_copy_as_a_conflict(
    seeded: SeededStorage, backfill_settings: Settings, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.jsonl"
    first = await backfill_legacy_buckets(
        dry_run=False, buckets=["image_high"], manifest_path=str(manifest)
    )
    conflicts_before = first.outcomes.get("conflict", 0)
    targets = copied_targets(manifest)
    resized, rewritten = targets[0], targets[1]
    changed = {
        rewritten: same_size_other_bytes(target_bucket_objects(seeded)[rewritten][0]),
        resized: png_bytes(70_001, (40, 30)),
    }
    for path, data in changed.items():
        seeded.put_object(TARGET, path, data, "image/png")

    for _ in range(2):
        again = await backfill_legacy_buckets(
            dry_run=False, buckets=["image_high"], manifest_path=str(manifest)
        )
        assert again.created_objects == 0
        assert again.outcomes.get("conflict", 0) == conflicts_before + 2
        objects = target_bucket_objects(seeded)
        assert {path: objects[path][0] for path in changed} == changed

    planned = await rollback_backfill(str(manifest))
    assert planned.conflicts == sorted(f"{TARGET}/{path}" for path in changed)
    for path in changed:
        assert planned.kept[f"{TARGET}/{path}"].startswith("conflict")
        assert f"{TARGET}/{path}" not in planned.removed
    rolled = await rollback_backfill(str(manifest), dry_run=False)
    assert set(rolled.removed) == set(planned.removed)
    left = target_bucket_objects(seeded)
    assert {path: left[path][0] for path in changed} == changed
    assert not set(targets[2:]) & set(left)


async def test_rollback_compares_bytes_where_the_store_lists_no_md5(tmp_path: Path) -> None:
    user = seed_uuid("local", "user")
    job = seed_uuid("local", "job")
    storage = LocalFolderStorage(tmp_path / "storage")
    for n in (1, 2, 3):
        name = f"{user}/sdxl_{job}_1754550000_{n}.png"
        storage.put("sdxl_image_fast", name, png_bytes(n), "image/png")
    (tmp_path / "storage" / TARGET).mkdir()
    manifest = tmp_path / "manifest.jsonl"
    changed = f"{user}/{job}/1.png"
    with local_settings(storage, tmp_path):
        first = await backfill_legacy_buckets(dry_run=False, manifest_path=str(manifest))
        assert first.outcomes == {"copied": 3}
        other = same_size_other_bytes(storage.get(TARGET, changed))
        storage.put(TARGET, changed, other, "image/png")
        again = await backfill_legacy_buckets(dry_run=False, manifest_path=str(manifest))
        assert again.outcomes == {"already_present": 2, "conflict": 1}
        assert again.created_objects == 0 and storage.get(TARGET, changed) == other
        # A manifest written before thumbnails' hashes were recorded: the rollback makes the
        # thumbnail again from the source and compares.
        lines = [json.loads(line) for line in manifest.read_text().splitlines()]
        for line in lines:
            line["thumbnail_sha256"] = None
        manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
        rolled = await rollback_backfill(str(manifest), dry_run=False)
    assert rolled.conflicts == [f"{TARGET}/{changed}"]
    assert sorted(p.path for p in storage.list(TARGET)) == [changed]
    assert sorted(rolled.removed) == sorted(
        f"{TARGET}/{user}/{job}/{name}"
        for name in ("0.png", "2.png", "0.thumb.webp", "1.thumb.webp", "2.thumb.webp")
    )


def insert_failed_job(conn: object, user: str, job: str) -> None:
    conn.execute(  # type: ignore[attr-defined]
        "insert into public.jobs (id, user_id, job_type, status) "
        "values (%s, %s, 'sdxl_image_fast', 'failed') on conflict do nothing",
        (job, user),
    )


@pytest.mark.postgres
async def test_backfill_then_cleanup_eight_days_later_keeps_one_copy_of_everything(
    seeded: SeededStorage,
    db_backfill_settings: Settings,
    own_db: str,
    legacy_seed: LegacySeed,
    tmp_path: Path,
) -> None:
    import psycopg

    moved_outcomes = ("copied", "duplicate", "already_present")
    summary = await backfill_legacy_buckets(
        dry_run=False, delete_sources=True, manifest_path=str(tmp_path / "manifest.jsonl")
    )
    moved = legacy_seed.by_outcome(*moved_outcomes)
    assert summary.sources_removed == len(moved) == summary.copies_recorded
    assert set(backfilled_rows(own_db)) == {o.key for o in moved}

    # Worst case for the copies: their jobs are failed and they have no workspace_assets row,
    # which would make them orphans; and one real orphan the cleanup should remove.
    user, job = seed_uuid("user", 3), seed_uuid("orphan")
    orphan = f"{user}/{job}/0.png"
    seeded.put_object(TARGET, orphan, png_bytes(80_001), "image/png")
    with psycopg.connect(own_db, autocommit=True) as conn:
        insert_failed_job(conn, user, job)
        for obj in moved:
            assert obj.target is not None
            target_user, target_job = obj.target.split("/")[:2]
            insert_failed_job(conn, target_user, target_job)

    # Eight days later: every object of the target bucket was created eight days ago.
    eight_days_ago = datetime.now(UTC) - timedelta(days=8)
    for name in seeded.object_names(TARGET):
        seeded.set_created_at(TARGET, name, eight_days_ago)
    cleaned = await cleanup_workspace(dry_run=False)
    assert [c.path for c in cleaned.candidates] == [orphan] and cleaned.removed == 1
    assert cleaned.kept["a recorded backfill copy"] >= len(moved)

    objects = target_bucket_objects(seeded)
    for obj in legacy_seed.objects:
        source = seeded.get_object(obj.bucket, obj.path)
        if obj.outcome in moved_outcomes:
            assert obj.target is not None
            assert source is None, obj.key
            assert objects[obj.target][0] == obj.data, obj.key
        elif obj.outcome != "folder":
            assert source is not None and source.data == obj.data, obj.key
    assert orphan not in objects
