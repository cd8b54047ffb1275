"""The backfill and rollback flows on a real Prefect API against the real storage server.

The server holds about 190 mappable legacy objects in every layout plus every misfit the
contract names (root objects, non-UUID users, unknown extensions, folder entries, a missing
bucket, duplicates, collisions, undecodable bytes, targets that already exist).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr

from flows.backfill import backfill_legacy_buckets, rollback_backfill
from genjobs.backfill.manifest import ManifestRecord, ManifestWriter, load_manifest
from genjobs.errors import BackfillRefused
from genjobs.settings import Settings
from genjobs.storage.local import LocalFolderStorage
from tests.backfill.conftest import (
    SEED_START,
    TARGET,
    VIDEO_SIZE,
    LegacySeed,
    SeededStorage,
    artifact_markdown,
    backfilled_rows,
    final_state,
    frame_level,
    installed_settings,
    local_settings,
    png_bytes,
    records,
    seed_uuid,
    snapshot,
    target_bucket_objects,
)

pytestmark = pytest.mark.usefixtures("prefect_api")

REPO = Path(__file__).resolve().parents[2]
WRITE_METHODS = ("POST", "PUT", "DELETE")


def last_outcomes(manifest: Path) -> dict[str, str]:
    """Source key -> outcome of its last record (removals and rollbacks aside)."""
    found: dict[str, str] = {}
    for record in records(manifest):
        if record["outcome"] not in ("source_removed", "rolled_back", "rollback_skipped"):
            found[f"{record['source_bucket']}/{record['source_path']}"] = record["outcome"]
    return found


def legacy_snapshot(seeded: SeededStorage) -> dict[tuple[str, str], tuple[str, str]]:
    return legacy_snapshot_of(snapshot(seeded))


def writes_to_storage(seeded: SeededStorage) -> list[str]:
    """Requests that change storage (uploads, copies, removals); listings are reads."""
    return [
        f"{r.method} {r.path}"
        for r in seeded.requests
        if r.method in WRITE_METHODS and not r.path.startswith("/object/list/")
    ]


def assert_backfilled(seeded: SeededStorage, seed: LegacySeed) -> None:
    """The target bucket holds exactly the pre-existing objects plus the expected copies."""
    objects = target_bucket_objects(seeded)
    created = seed.created_targets()
    thumbnails = seed.created_thumbnails()
    assert set(objects) == set(seed.preexisting) | set(created) | thumbnails
    for path, (data, content_type) in seed.preexisting.items():
        assert objects[path] == (data, content_type), path
    for path, source in created.items():
        expected_type = "video/mp4" if source.is_video else "image/png"
        assert objects[path] == (source.data, expected_type), path
    for path in thumbnails:
        data, content_type = objects[path]
        assert content_type == "image/webp"
        thumb = Image.open(io.BytesIO(data))
        assert thumb.format == "WEBP" and max(thumb.size) == 256, path
    video = next(o for o in seed.by_outcome("copied") if o.is_video)
    assert video.thumbnail_target is not None
    poster = Image.open(io.BytesIO(objects[video.thumbnail_target][0])).convert("L")
    width, height = VIDEO_SIZE
    assert poster.size == (256 * width // height, 256)
    middle = poster.getpixel((poster.width // 2, poster.height // 2))
    assert isinstance(middle, int)
    assert abs(middle - frame_level(4)) < 20, middle


async def test_dry_run_then_run_then_rerun_then_rollback(
    seeded: SeededStorage, backfill_settings: Settings, legacy_seed: LegacySeed, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.jsonl"
    before = snapshot(seeded)
    seed = legacy_seed

    dry_state = await final_state(backfill_legacy_buckets, manifest_path=str(manifest))
    dry = await dry_state.result()
    assert snapshot(seeded) == before
    assert not manifest.exists()
    assert writes_to_storage(seeded) == []
    assert dry.dry_run and dry.mapped == len(seed.mappable())
    assert dry.unmappable == len(seed.by_outcome("unmappable"))
    assert (dry.folder_entries, dry.collision_groups) == (1, 2)
    assert dry.missing_buckets == ["videos"] and dry.failed_buckets == {}
    plan = await artifact_markdown(dry_state, "backfill-plan")
    some_copy = seed.by_outcome("copied")[0]
    assert f"| {some_copy.key} | {some_copy.target} |" in plan
    assert "unknown_video_id" in plan and "no_user_folder" in plan

    seeded.clear_requests()
    state = await final_state(
        backfill_legacy_buckets, dry_run=False, manifest_path=str(manifest), batch_size=40
    )
    summary = await state.result()
    assert_backfilled(seeded, seed)
    assert legacy_snapshot(seeded) == legacy_snapshot_of(before)
    copied = len(seed.by_outcome("copied"))
    assert summary.outcomes == {
        "copied": copied,
        "already_present": 1,
        "conflict": 1,
        "duplicate": 1,
        "collision": 2,
    }
    assert summary.created_objects == len(seed.created_targets()) + len(seed.created_thumbnails())
    outcomes = last_outcomes(manifest)
    for obj in seed.objects:
        expected = {"folder": None}.get(obj.outcome, obj.outcome)
        assert outcomes.get(obj.key) == expected, obj.key
    report = await artifact_markdown(state, "backfill-report")
    assert "conflict" in report and "collision" in report

    after = snapshot(seeded)
    seeded.clear_requests()
    second = await backfill_legacy_buckets(dry_run=False, manifest_path=str(manifest))
    assert snapshot(seeded) == after
    assert writes_to_storage(seeded) == []
    assert second.created_objects == 0
    assert second.verified_earlier == copied + 1
    assert second.outcomes == {"conflict": 1, "collision": 2}

    planned = await rollback_backfill(str(manifest))
    assert snapshot(seeded) == after
    expected_removed = {f"{TARGET}/{p}" for p in seed.created_targets()} | {
        f"{TARGET}/{p}" for p in seed.created_thumbnails()
    }
    assert set(planned.removed) == expected_removed
    rolled = await rollback_backfill(str(manifest), dry_run=False)
    assert set(rolled.removed) == expected_removed
    assert target_bucket_objects(seeded) == seed.preexisting
    assert legacy_snapshot(seeded) == legacy_snapshot_of(before)
    again = await rollback_backfill(str(manifest), dry_run=False)
    assert again.removed == []


def legacy_snapshot_of(
    full: dict[tuple[str, str], tuple[str, str]],
) -> dict[tuple[str, str], tuple[str, str]]:
    return {key: value for key, value in full.items() if key[0] != TARGET}


async def wait_until_quiet(seeded: SeededStorage, quiet: float = 0.5) -> None:
    """Wait until the proxy has seen no request for ``quiet`` seconds."""
    seen, since = len(seeded.requests), time.monotonic()
    while time.monotonic() - since < quiet:
        await asyncio.sleep(0.05)
        if len(seeded.requests) != seen:
            seen, since = len(seeded.requests), time.monotonic()


async def test_interrupted_run_resumes_without_duplicates(
    seeded: SeededStorage, backfill_settings: Settings, legacy_seed: LegacySeed, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.jsonl"
    run = asyncio.create_task(
        backfill_legacy_buckets(
            dry_run=False,
            manifest_path=str(manifest),
            batch_size=25,
            concurrency=2,
            max_objects_per_second=100,
        )
    )
    deadline = time.monotonic() + 60
    while sum(r["outcome"] == "copied" for r in records(manifest)) < 50:
        assert not run.done(), "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await wait_until_quiet(seeded)
    interrupted = records(manifest)
    done = {r["target_path"] for r in interrupted if r["outcome"] == "copied"}
    assert 50 <= len(done) < len(legacy_seed.created_targets())

    seeded.clear_requests()
    summary = await backfill_legacy_buckets(dry_run=False, manifest_path=str(manifest))
    assert_backfilled(seeded, legacy_seed)
    assert summary.verified_earlier >= len(done)
    uploaded = {w.removeprefix(f"POST /object/{TARGET}/") for w in writes_to_storage(seeded)}
    assert not done & uploaded, "a copy verified before the interruption was made again"

    rolled = await rollback_backfill(str(manifest), dry_run=False)
    assert target_bucket_objects(seeded) == legacy_seed.preexisting
    assert len(rolled.removed) == len(legacy_seed.created_targets()) + len(
        legacy_seed.created_thumbnails()
    )


async def test_faults_lose_nothing(
    seeded: SeededStorage, backfill_settings: Settings, legacy_seed: LegacySeed, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.jsonl"
    # Every server-side copy is refused, so each object falls back to an upload; the first four
    # uploads into the target (those fallbacks: a thumbnail follows only a stored asset) are
    # refused too, and those objects end refused.
    copies_refused = seeded.proxy.fail("^POST /storage/v1/object/copy", status=403, times=None)
    refusals = seeded.proxy.fail(f"^POST /storage/v1/object/{TARGET}/", status=403, times=4)
    unavailable = seeded.proxy.fail("", status=503, times=None, every=50)
    first = await backfill_legacy_buckets(dry_run=False, manifest_path=str(manifest), batch_size=60)
    assert unavailable.hits > 10 and refusals.hits == 4 and copies_refused.hits >= 4
    assert first.outcomes.get("failed", 0) == 0
    refused = first.outcomes.get("refused", 0)
    assert 1 <= refused <= 4
    outcomes = last_outcomes(manifest)
    assert all(outcomes.get(o.key) for o in legacy_seed.mappable())
    expected = set(legacy_seed.preexisting) | set(legacy_seed.created_targets())
    expected |= legacy_seed.created_thumbnails()
    assert set(target_bucket_objects(seeded)) <= expected

    seeded.proxy.clear_faults()
    second = await backfill_legacy_buckets(dry_run=False, manifest_path=str(manifest))
    assert second.outcomes.get("refused", 0) == 0
    assert_backfilled(seeded, legacy_seed)


async def test_delete_sources_needs_the_database(
    seeded: SeededStorage, backfill_settings: Settings, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.jsonl"
    before = snapshot(seeded)
    seeded.clear_requests()
    state = await final_state(
        backfill_legacy_buckets, dry_run=False, delete_sources=True, manifest_path=str(manifest)
    )
    assert state.is_failed()
    with pytest.raises(BackfillRefused, match="GENJOBS_DATABASE_DSN"):
        await state.result()
    assert snapshot(seeded) == before and writes_to_storage(seeded) == []
    assert not manifest.exists()


@pytest.mark.postgres
async def test_delete_sources_in_a_time_window(
    seeded: SeededStorage,
    db_backfill_settings: Settings,
    own_db: str,
    legacy_seed: LegacySeed,
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "manifest.jsonl"
    since, until = SEED_START + timedelta(minutes=10), SEED_START + timedelta(minutes=100)
    buckets = ["sdxl_image_fast", "image_fast", "videos"]
    summary = await backfill_legacy_buckets(
        dry_run=False,
        buckets=buckets,
        since=since,
        until=until,
        delete_sources=True,
        manifest_path=str(manifest),
    )
    chosen = [
        o
        for o in legacy_seed.objects
        if o.bucket in buckets and since <= o.created_at < until and o.outcome != "folder"
    ]
    moved = [o for o in chosen if o.outcome == "copied"]
    assert moved and summary.sources_removed == len(moved)
    assert summary.copies_recorded == len(moved)
    assert backfilled_rows(own_db) == {
        o.key: (o.target, hashlib.sha256(o.data).hexdigest(), len(o.data)) for o in moved
    }
    assert summary.outside_window > 0 and summary.missing_buckets == ["videos"]
    for obj in legacy_seed.objects:
        still_there = seeded.get_object(obj.bucket, obj.path) is not None
        assert still_there == (obj not in moved), obj.key
        if obj in moved:
            assert obj.target is not None
            target = seeded.get_object(TARGET, obj.target)
            assert target is not None and target.data == obj.data

    rolled = await rollback_backfill(str(manifest), dry_run=False)
    assert rolled.removed == []
    assert len(rolled.kept) == 2 * len(moved)
    for obj in moved:
        assert obj.target is not None
        assert seeded.get_object(TARGET, obj.target) is not None


async def test_a_bucket_that_fails_to_list_is_reported_and_skipped(
    seeded: SeededStorage, backfill_settings: Settings, tmp_path: Path
) -> None:
    seeded.proxy.fail("^POST /storage/v1/object/list/image_high", status=403, times=1)
    summary = await backfill_legacy_buckets(
        buckets=["image_high", "video_fast", "videos"], manifest_path=str(tmp_path / "m.jsonl")
    )
    assert set(summary.failed_buckets) == {"image_high"}
    assert "STORAGE_ACCESS_DENIED" in summary.failed_buckets["image_high"]
    assert summary.missing_buckets == ["videos"]
    assert summary.mapped == 12 and summary.listed == len(seeded.object_names("video_fast"))


async def test_copies_within_one_bucket_run_on_the_server(
    seeded: SeededStorage, backfill_settings: Settings, legacy_seed: LegacySeed, tmp_path: Path
) -> None:
    bucket = "sdxl_image_high"
    seeded.clear_requests()
    summary = await backfill_legacy_buckets(
        dry_run=False,
        buckets=[bucket],
        target_bucket=bucket,
        manifest_path=str(tmp_path / "manifest.jsonl"),
    )
    # Alone in its bucket, the colliding source is a plain copy.
    sources = [o for o in legacy_seed.objects if o.bucket == bucket and o.target is not None]
    assert summary.outcomes["copied"] == len(sources)
    copies = [w for w in writes_to_storage(seeded) if w == "POST /object/copy"]
    uploads = [w for w in writes_to_storage(seeded) if w.startswith(f"POST /object/{bucket}/")]
    assert len(copies) == len(sources)
    assert all(w.endswith(".thumb.webp") for w in uploads) and len(uploads) == len(sources)
    for obj in sources:
        assert obj.target is not None
        copied = seeded.get_object(bucket, obj.target)
        assert copied is not None and (copied.data, copied.content_type) == (obj.data, "image/png")


async def test_local_folder_backend(tmp_path: Path) -> None:
    user, job = "0b7c2a5e-3f1d-4c8e-9a6b-1d2e3f4a5b6c", "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
    storage = LocalFolderStorage(tmp_path / "storage")
    sources = {n: png_bytes(n) for n in (1, 2)}
    for n, data in sources.items():
        storage.put("sdxl_image_fast", f"{user}/sdxl_{job}_1754550000_{n}.png", data, "image/png")
    storage.put("image_fast", f"{user}/notes.txt", b"hello", "text/plain")
    (tmp_path / "storage" / TARGET).mkdir()
    with local_settings(storage, tmp_path):
        summary = await backfill_legacy_buckets(dry_run=False)
        planned = await rollback_backfill()
    assert summary.outcomes == {"copied": 2}
    assert len(planned.removed) == 4 and planned.dry_run
    assert len(summary.missing_buckets) == 9 and summary.unmappable == 1
    assert storage.get(TARGET, f"{user}/{job}/0.png") == sources[1]
    assert storage.get(TARGET, f"{user}/{job}/1.png") == sources[2]
    assert storage.content_type(TARGET, f"{user}/{job}/1.thumb.webp") == "image/webp"
    assert (tmp_path / "backfill" / f"{TARGET}.manifest.jsonl").is_file()


@pytest.mark.postgres
async def test_video_ids_resolve_through_the_jobs_table(
    seeded: SeededStorage, legacy_seed: LegacySeed, project_db: str, tmp_path: Path
) -> None:
    import psycopg

    resolved: dict[str, str] = {}
    video_ids = {
        seed_uuid("user", 0): seed_uuid("video-id", 0),
        seed_uuid("user", 1): seed_uuid("video-id", 1),
    }
    with psycopg.connect(project_db, autocommit=True) as conn:
        for user, video_id in video_ids.items():
            row = conn.execute(
                "insert into public.jobs (user_id, job_type, video_id) "
                "values (%s, 'image7b_fast_enhanced', %s) returning id::text",
                (user, video_id),
            ).fetchone()
            assert row is not None
            resolved[f"{user}/{video_id}.png"] = f"{user}/{row[0]}/0.png"
        root_video = seed_uuid("root-video", 1)
        row = conn.execute(
            "insert into public.jobs (user_id, job_type, video_id) "
            "values (%s, 'video_high', %s) returning id::text",
            (seed_uuid("user", 1), root_video),
        ).fetchone()
        assert row is not None
        resolved[f"{root_video}.mp4"] = f"{seed_uuid('user', 1)}/{row[0]}/0.mp4"
    with installed_settings(seeded, tmp_path, database_dsn=SecretStr(project_db)):
        summary = await backfill_legacy_buckets(
            dry_run=False, buckets=["image7b_fast_enhanced", "video_high"]
        )
    assert summary.outcomes["copied"] == len(resolved) + 12
    for source_path, target_path in resolved.items():
        bucket = "video_high" if source_path.endswith(".mp4") else "image7b_fast_enhanced"
        source = seeded.get_object(bucket, source_path)
        target = seeded.get_object(TARGET, target_path)
        assert source is not None and target is not None and target.data == source.data
        assert seeded.get_object(TARGET, target_path.rsplit(".", 1)[0] + ".thumb.webp")
    assert summary.unmappable_by_reason["unknown_video_id"] == 10


def record(outcome: str, **fields: Any) -> ManifestRecord:
    """A manifest record about the one source of the manifest test."""
    return ManifestRecord.model_validate(
        {
            "outcome": outcome,
            "source_bucket": "image_fast",
            "source_path": "u/job_j_1.png",
            "target_bucket": TARGET,
            "target_path": "u/j/0.png",
            "thumbnail_path": "u/j/0.thumb.webp",
            **fields,
        }
    )


def test_manifest_folds_records_and_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    with ManifestWriter(load_manifest(path), run_id="run-1") as writer:
        writer.append(record("started", target_preexisting=False, thumbnail_preexisting=True))
    with path.open("a") as handle:
        handle.write('{"outcome": "copied", "source_bu')  # the process died mid-line
    interrupted = load_manifest(path)
    state = interrupted.state("image_fast/u/job_j_1.png")
    assert interrupted.unreadable_lines == 1 and state is not None
    assert state.owns_target and not state.owns_thumbnail and not state.verified
    assert interrupted.created_objects() == [(TARGET, "u/j/0.png")]

    with ManifestWriter(interrupted, run_id="run-2") as writer:
        writer.append(record("already_present", created_target=True, size=3, sha256="ab"))
    resumed = load_manifest(path)
    assert resumed.unreadable_lines == 1
    state = resumed.state("image_fast/u/job_j_1.png")
    assert state is not None and state.verified and state.created_target
    assert [r.run_id for r in resumed.records] == ["run-1", "run-2"]
    with ManifestWriter(resumed) as writer:
        writer.append(record("rolled_back"))
    assert load_manifest(path).created_objects() == []


def test_flow_modules_do_not_import_torch() -> None:
    code = "import flows.backfill, flows.cleanup, sys; assert 'torch' not in sys.modules"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
