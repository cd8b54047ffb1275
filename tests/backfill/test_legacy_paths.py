"""The legacy key parser against a table of real-looking names from every period."""

from __future__ import annotations

import pytest

from genjobs.backfill.legacy_paths import (
    LEGACY_BUCKETS,
    LegacyObject,
    Unmappable,
    parse_legacy_path,
)

U = "0b7c2a5e-3f1d-4c8e-9a6b-1d2e3f4a5b6c"
J = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
J2 = "1a2b3c4d-5e6f-4a8b-9c0d-e1f2a3b4c5d6"
VIDEO_UUID = "4c3b2a19-0807-4605-8403-020100ffeedd"
TS = "1751328000"

MAPPED = [
    # <= 2025-07-01: job_{job_id}_{unix_ts}
    ("image_fast", f"{U}/job_{J}_{TS}.png", (U, J, 0, "png", "job_ts")),
    ("image_high", f"{U}/job_{J}_1751328000123.png", (U, J, 0, "png", "job_ts")),
    ("video_fast", f"{U}/job_{J}_{TS}.mp4", (U, J, 0, "mp4", "job_ts")),
    ("video_high", f"{U}/job_{J}_{TS}.MP4", (U, J, 0, "mp4", "job_ts")),
    # 2025-07-01: sdxl_{job_id}_{unix_ts}, moved into sdxl_image_*
    ("sdxl_image_fast", f"{U}/sdxl_{J}_{TS}.png", (U, J, 0, "png", "sdxl_ts")),
    # 07-02 -> 08-15: sdxl_{job_id}_{unix_ts}_{n}, n 1-based
    ("sdxl_image_fast", f"{U}/sdxl_{J}_{TS}_1.png", (U, J, 0, "png", "sdxl_ts_n")),
    ("sdxl_image_high", f"{U}/sdxl_{J}_{TS}_3.png", (U, J, 2, "png", "sdxl_ts_n")),
    ("sdxl_image_high", f"{U}/sdxl_{J}_{TS}_6.png", (U, J, 5, "png", "sdxl_ts_n")),
    # Case and extension normalisation
    ("image_fast", f"{U.upper()}/job_{J.upper()}_{TS}.JPEG", (U, J, 0, "jpg", "job_ts")),
    ("image_fast", f"{U}/job_{J}_{TS}.jpg", (U, J, 0, "jpg", "job_ts")),
    ("image7b_fast_enhanced", f"{U}/job_{J}_{TS}.webp", (U, J, 0, "webp", "job_ts")),
]

UNMAPPABLE = [
    ("sdxl_image_fast", f"{U}/.emptyFolderPlaceholder", "folder_entry"),
    ("sdxl_image_fast", f"{U}/", "folder_entry"),
    ("video_fast", f"{VIDEO_UUID}.mp4", "no_user_folder"),
    ("video_high", f"video_{TS}.mp4", "no_user_folder"),
    ("image_fast", f"legacy-user/job_{J}_{TS}.png", "invalid_user_id"),
    ("image_fast", f"{U[:-1]}/job_{J}_{TS}.png", "invalid_user_id"),
    ("image_fast", f"{U}/job_{J[:-1]}_{TS}.png", "invalid_job_id"),
    ("image_fast", f"{U}/job_not-a-uuid_{TS}.png", "invalid_job_id"),
    ("sdxl_image_fast", f"{U}/sdxl_{J}_{TS}_0.png", "invalid_index"),
    ("video_fast", f"{U}/job_{J}_{TS}.mov", "unsupported_extension"),
    ("video_fast", f"{U}/job_{J}_{TS}.webm", "unsupported_extension"),
    ("image_fast", f"{U}/job_{J}_{TS}.gif", "unsupported_extension"),
    ("video_high", f"{U}/job_{J}_{TS}.mpeg", "refused_by_target"),
    ("video_high", f"{U}/job_{J}_{TS}.mpg", "refused_by_target"),
    ("image_fast", f"{U}/job_{J}_{TS}", "no_extension"),
    ("image_fast", f"{U}/.png", "no_extension"),
    ("image_high", f"{U}/{J}/0.png", "unexpected_depth"),
    ("video7b_fast_enhanced", f"{U}/{VIDEO_UUID}.mp4", "unknown_video_id"),
    ("video7b_high_enhanced", f"{U}/video_{TS}.mp4", "unknown_video_id"),
]


@pytest.mark.parametrize(("bucket", "path", "expected"), MAPPED)
def test_mapped_layouts(bucket: str, path: str, expected: tuple[str, str, int, str, str]) -> None:
    parsed = parse_legacy_path(bucket, path)
    assert isinstance(parsed, LegacyObject), parsed
    user_id, job_id, index, ext, _layout = expected
    assert (parsed.user_id, parsed.job_id, parsed.index, parsed.ext, parsed.layout) == expected
    assert (parsed.bucket, parsed.path) == (bucket, path)
    assert parsed.target_path == f"{user_id}/{job_id}/{index}.{ext}"
    assert parsed.thumbnail_path == f"{user_id}/{job_id}/{index}.thumb.webp"
    assert (
        parsed.content_type
        == {
            "png": "image/png",
            "jpg": "image/jpeg",
            "webp": "image/webp",
            "mp4": "video/mp4",
        }[ext]
    )


@pytest.mark.parametrize(("bucket", "path", "reason"), UNMAPPABLE)
def test_unmappable_names(bucket: str, path: str, reason: str) -> None:
    parsed = parse_legacy_path(bucket, path)
    assert isinstance(parsed, Unmappable), parsed
    assert (parsed.bucket, parsed.path, parsed.reason) == (bucket, path, reason)
    assert parsed.detail


def test_timestamp_is_kept() -> None:
    parsed = parse_legacy_path("sdxl_image_high", f"{U}/sdxl_{J}_{TS}_2.png")
    assert isinstance(parsed, LegacyObject)
    assert parsed.unix_ts == int(TS)


def test_video_id_layouts_resolve_through_the_jobs_lookup() -> None:
    jobs = {VIDEO_UUID: (U, J), f"video_{TS}": (U, J2)}
    lookup = jobs.get

    root = parse_legacy_path("video_fast", f"{VIDEO_UUID}.mp4", lookup)
    assert isinstance(root, LegacyObject)
    assert (root.user_id, root.job_id, root.index, root.layout) == (U, J, 0, "root_video_id")
    assert root.video_id == VIDEO_UUID
    assert root.target_path == f"{U}/{J}/0.mp4"

    in_folder = parse_legacy_path("video7b_fast_enhanced", f"{U}/video_{TS}.mp4", lookup)
    assert isinstance(in_folder, LegacyObject)
    assert (in_folder.user_id, in_folder.job_id, in_folder.layout) == (U, J2, "user_video_id")
    assert in_folder.unix_ts == int(TS)

    png = parse_legacy_path("image7b_fast_enhanced", f"{U}/{VIDEO_UUID}.png", lookup)
    assert isinstance(png, LegacyObject) and png.target_path == f"{U}/{J}/0.png"


def test_video_id_lookup_misfits() -> None:
    other_user = "ffffffff-0000-4000-8000-000000000001"
    jobs = {
        VIDEO_UUID: (other_user, J),
        "video_1": ("not-a-user", J),
        "video_2": (U, "not-a-job"),
    }
    lookup = jobs.get
    mismatch = parse_legacy_path("video_fast", f"{U}/{VIDEO_UUID}.mp4", lookup)
    assert isinstance(mismatch, Unmappable) and mismatch.reason == "owner_mismatch"
    bad_user = parse_legacy_path("video_fast", "video_1.mp4", lookup)
    assert isinstance(bad_user, Unmappable) and bad_user.reason == "invalid_user_id"
    bad_job = parse_legacy_path("video_fast", f"{U}/video_2.mp4", lookup)
    assert isinstance(bad_job, Unmappable) and bad_job.reason == "invalid_job_id"
    unknown = parse_legacy_path("video_fast", f"{U}/video_3.mp4", lookup)
    assert isinstance(unknown, Unmappable) and unknown.reason == "unknown_video_id"


def test_job_and_sdxl_names_ignore_the_lookup() -> None:
    def lookup(video_id: str) -> tuple[str, str]:
        raise AssertionError(f"looked up {video_id}")

    parsed = parse_legacy_path("image_fast", f"{U}/job_{J}_{TS}.png", lookup)
    assert isinstance(parsed, LegacyObject) and parsed.layout == "job_ts"


def test_the_eleven_legacy_buckets() -> None:
    assert len(LEGACY_BUCKETS) == len(set(LEGACY_BUCKETS)) == 11
    assert "videos" in LEGACY_BUCKETS and "workspace-temp" not in LEGACY_BUCKETS
