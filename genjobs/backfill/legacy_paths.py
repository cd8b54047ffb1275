"""Map a legacy object key to the user, job and asset index it belongs to.

The eleven legacy buckets (contract section 7) hold objects under five layouts, one per period:

=================  ===============================================  ===========================
layout             object key                                       user, job, index
=================  ===============================================  ===========================
``job_ts``         ``{user_id}/job_{job_id}_{unix_ts}.{png|mp4}``   folder, uuid, 0
``sdxl_ts``        ``{user_id}/sdxl_{job_id}_{unix_ts}.png``        folder, uuid, 0
``sdxl_ts_n``      ``{user_id}/sdxl_{job_id}_{unix_ts}_{n}.png``    folder, uuid, n - 1
``root_video_id``  ``{video_id}.{ext}`` at the bucket root          ``jobs.video_id`` lookup, 0
``user_video_id``  ``{user_id}/{video_id}.{ext}``                   folder, ``jobs.video_id``, 0
=================  ===============================================  ===========================

:func:`parse_legacy_path` is pure: it returns a :class:`LegacyObject` or an :class:`Unmappable`
with a reason code, never raises for a bad name. The two ``video_id`` layouts resolve only
through an optional lookup (``video_id -> (user_id, job_id)``, read from ``public.jobs``).

Extensions: ``png``, ``jpg``, ``jpeg``, ``webp`` and ``mp4`` map (``jpeg`` becomes ``jpg`` in
the target path). ``mpeg``/``mpg`` are ``refused_by_target`` (``workspace-temp`` refuses
``video/mpeg``). ``mov`` and ``webm`` are ``unsupported_extension``: the bucket would take them,
but the backend files every non-``.png`` image as JPEG and every video as ``video/mp4``, so
they would be recorded with the wrong type. Anything else is ``unsupported_extension`` too.
User ids must be hyphenated UUIDs (``auth.uid()::text`` is what row-level security compares);
they and job ids are written lower case.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from genjobs.storage.base import MIME_BY_EXTENSION, asset_path, thumbnail_path

Layout = Literal["job_ts", "sdxl_ts", "sdxl_ts_n", "root_video_id", "user_video_id"]

UnmappableReason = Literal[
    "folder_entry",
    "no_extension",
    "unsupported_extension",
    "refused_by_target",
    "invalid_user_id",
    "invalid_job_id",
    "invalid_index",
    "no_user_folder",
    "unknown_video_id",
    "owner_mismatch",
    "unexpected_depth",
]

VideoJobLookup = Callable[[str], "tuple[str, str] | None"]
"""``video_id -> (user_id, job_id)`` from ``public.jobs``, or None when there is no such row."""

LEGACY_BUCKETS: tuple[str, ...] = (
    "sdxl_image_fast",
    "sdxl_image_high",
    "image_fast",
    "image_high",
    "image7b_fast_enhanced",
    "image7b_high_enhanced",
    "video_fast",
    "video_high",
    "video7b_fast_enhanced",
    "video7b_high_enhanced",
    "videos",
)
"""The eleven legacy buckets of contract section 7, in the order the backfill visits them."""

MAPPED_EXTENSIONS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp", "mp4": "mp4"}
"""Legacy extension -> extension of the target path."""

REFUSED_EXTENSIONS = frozenset({"mpeg", "mpg"})
"""Extensions whose MIME type (``video/mpeg``) the target bucket refuses."""

FOLDER_PLACEHOLDER = ".emptyFolderPlaceholder"
"""The object the Supabase dashboard writes to make an empty folder."""

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID_RE = re.compile(rf"^{_UUID}$")
_JOB_TS_RE = re.compile(rf"^job_({_UUID})_(\d+)$")
_SDXL_RE = re.compile(rf"^sdxl_({_UUID})_(\d+)(?:_(\d+))?$")
_JOB_LIKE_RE = re.compile(r"^(?:job|sdxl)_")


@dataclass(frozen=True)
class LegacyObject:
    """A legacy object that maps onto the contract layout.

    Attributes:
        bucket: Legacy bucket.
        path: Object key inside it.
        user_id: Owner (lower-case UUID).
        job_id: ``jobs.id`` (lower-case UUID for the ``job_``/``sdxl_`` layouts; whatever the
            lookup answered for the ``video_id`` layouts).
        index: 0-based asset index.
        ext: Extension of the target path (``jpeg`` normalised to ``jpg``).
        layout: Which legacy layout the key follows.
        unix_ts: The timestamp in the name, when it has one.
        video_id: The legacy ``video_id``, for the two ``video_id`` layouts.
    """

    bucket: str
    path: str
    user_id: str
    job_id: str
    index: int
    ext: str
    layout: Layout
    unix_ts: int | None = None
    video_id: str | None = None

    @property
    def target_path(self) -> str:
        """``{user_id}/{job_id}/{index}.{ext}`` in the target bucket."""
        return asset_path(self.user_id, self.job_id, self.index, self.ext)

    @property
    def thumbnail_path(self) -> str:
        """``{user_id}/{job_id}/{index}.thumb.webp`` in the target bucket."""
        return thumbnail_path(self.user_id, self.job_id, self.index)

    @property
    def content_type(self) -> str:
        return MIME_BY_EXTENSION[self.ext]

    @property
    def is_video(self) -> bool:
        return self.ext == "mp4"

    @property
    def asset_key(self) -> tuple[str, str, int]:
        """``(user_id, job_id, index)``: two sources with the same key collide."""
        return (self.user_id, self.job_id, self.index)


@dataclass(frozen=True)
class Unmappable:
    """A legacy object the backfill cannot place, with a reason code and a sentence."""

    bucket: str
    path: str
    reason: UnmappableReason
    detail: str

    @property
    def is_folder(self) -> bool:
        return self.reason == "folder_entry"


def is_uuid(value: str) -> bool:
    """Whether ``value`` is a hyphenated UUID (any case)."""
    return bool(_UUID_RE.match(value))


def parse_legacy_path(
    bucket: str, path: str, video_lookup: VideoJobLookup | None = None
) -> LegacyObject | Unmappable:
    """Map one legacy object key onto ``(user_id, job_id, index, ext)``.

    Args:
        bucket: The legacy bucket the key was listed in.
        path: The object key (bucket-relative).
        video_lookup: Resolves a legacy ``video_id`` to ``(user_id, job_id)``; without it the
            two ``video_id`` layouts are unmappable.

    Returns:
        A :class:`LegacyObject`, or an :class:`Unmappable` saying why not.
    """

    def unmappable(reason: UnmappableReason, detail: str) -> Unmappable:
        return Unmappable(bucket=bucket, path=path, reason=reason, detail=detail)

    segments = path.split("/")
    name = segments[-1]
    if not name or name == FOLDER_PLACEHOLDER:
        return unmappable("folder_entry", "a folder entry, not an object")
    if len(segments) > 2:
        return unmappable(
            "unexpected_depth",
            f"{len(segments) - 1} folders deep; legacy keys are at the root or in one user folder",
        )
    stem, dot, raw_ext = name.rpartition(".")
    if not dot or not stem:
        return unmappable("no_extension", f"the name {name!r} has no extension")
    ext = raw_ext.lower()
    if ext in REFUSED_EXTENSIONS:
        mime = MIME_BY_EXTENSION.get(ext, "video/mpeg")
        return unmappable("refused_by_target", f"the target bucket refuses {mime} (.{raw_ext})")
    if ext not in MAPPED_EXTENSIONS:
        return unmappable("unsupported_extension", f"the extension .{raw_ext} is not mapped")
    target_ext = MAPPED_EXTENSIONS[ext]

    if len(segments) == 1:
        return _root_object(bucket, path, stem, target_ext, video_lookup, unmappable)

    folder = segments[0]
    if not is_uuid(folder):
        return unmappable("invalid_user_id", f"the folder {folder!r} is not a user UUID")
    user_id = folder.lower()

    match = _JOB_TS_RE.match(stem)
    if match:
        return LegacyObject(
            bucket,
            path,
            user_id,
            match.group(1).lower(),
            0,
            target_ext,
            "job_ts",
            unix_ts=int(match.group(2)),
        )
    match = _SDXL_RE.match(stem)
    if match:
        job_id, unix_ts, number = match.group(1).lower(), int(match.group(2)), match.group(3)
        if number is None:
            return LegacyObject(
                bucket, path, user_id, job_id, 0, target_ext, "sdxl_ts", unix_ts=unix_ts
            )
        if int(number) < 1:
            return unmappable("invalid_index", f"image number {number} (numbers start at 1)")
        return LegacyObject(
            bucket, path, user_id, job_id, int(number) - 1, target_ext, "sdxl_ts_n", unix_ts=unix_ts
        )
    if _JOB_LIKE_RE.match(stem):
        return unmappable(
            "invalid_job_id",
            f"the name {stem!r} has no job UUID where the job_/sdxl_ layouts put one",
        )

    resolved = video_lookup(stem) if video_lookup is not None else None
    if resolved is None:
        return unmappable("unknown_video_id", f"no jobs row has video_id {stem!r}")
    owner, job_id = resolved
    if not is_uuid(job_id):
        return unmappable(
            "invalid_job_id", f"video_id {stem!r} resolves to job {job_id!r}, not a UUID"
        )
    if owner.lower() != user_id:
        return unmappable(
            "owner_mismatch",
            f"video_id {stem!r} belongs to job {job_id} of user {owner}, not to the folder's user",
        )
    return LegacyObject(
        bucket,
        path,
        user_id,
        job_id.lower(),
        0,
        target_ext,
        "user_video_id",
        unix_ts=_video_ts(stem),
        video_id=stem,
    )


def _root_object(
    bucket: str,
    path: str,
    stem: str,
    ext: str,
    video_lookup: VideoJobLookup | None,
    unmappable: Callable[[UnmappableReason, str], Unmappable],
) -> LegacyObject | Unmappable:
    resolved = video_lookup(stem) if video_lookup is not None else None
    if resolved is None:
        return unmappable(
            "no_user_folder",
            f"a root object and no jobs row has video_id {stem!r}, so it has no owner",
        )
    owner, job_id = resolved
    if not is_uuid(job_id):
        return unmappable(
            "invalid_job_id", f"video_id {stem!r} resolves to job {job_id!r}, not a UUID"
        )
    if not is_uuid(owner):
        return unmappable(
            "invalid_user_id", f"video_id {stem!r} resolves to user {owner!r}, not a UUID"
        )
    return LegacyObject(
        bucket,
        path,
        owner.lower(),
        job_id.lower(),
        0,
        ext,
        "root_video_id",
        unix_ts=_video_ts(stem),
        video_id=stem,
    )


def _video_ts(video_id: str) -> int | None:
    match = re.match(r"^video_(\d+)$", video_id)
    return int(match.group(1)) if match else None
