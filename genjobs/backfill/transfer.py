"""One source object into the target bucket, verified; and its thumbnail. Synchronous storage.

A copy counts only once the target has been read back with the source's size and SHA-256.
Storage errors that a retry could fix are raised (the calling task retries them); refusals for
good (a MIME type or size the target refuses, a source that vanished) come back as a result.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Literal

from genjobs.backfill.plan import PlannedCopy
from genjobs.backfill.thumbnails import ThumbnailError, make_thumbnail
from genjobs.errors import StorageError
from genjobs.storage.base import MIME_BY_EXTENSION, StorageBackend

logger = logging.getLogger(__name__)

CopyMethod = Literal["server_copy", "upload"]


@dataclass(frozen=True)
class Fingerprint:
    """Size and checksums of some bytes."""

    size: int
    sha256: str
    md5: str


def fingerprint(data: bytes) -> Fingerprint:
    return Fingerprint(
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
    )


@dataclass(frozen=True)
class CopyResult:
    """What :func:`copy_and_verify` did.

    Attributes:
        outcome: ``copied`` (written and verified), ``already_present`` (the target held the
            same bytes), ``conflict`` (the target holds other bytes, left alone) or
            ``refused`` (storage refused for good).
        fingerprint: The source's size and checksums (None when it could not be read).
        method: How the bytes were written (``copied`` only).
        written: Whether this call wrote the target.
        detail: A sentence for the report.
        server_copy_refused: A server-side copy was refused and the bytes were uploaded.
    """

    outcome: Literal["copied", "already_present", "conflict", "refused"]
    fingerprint: Fingerprint | None = None
    method: CopyMethod | None = None
    written: bool = False
    detail: str | None = None
    server_copy_refused: bool = False


def _read_optional(storage: StorageBackend, bucket: str, path: str) -> bytes | None:
    try:
        return storage.get(bucket, path)
    except StorageError as exc:
        if exc.status == "404" and not exc.retryable:
            return None
        raise


def _write_target(
    storage: StorageBackend, item: PlannedCopy, data: bytes, server_copy: bool
) -> tuple[CopyMethod, bool]:
    source = item.source
    if server_copy:
        try:
            storage.copy(source.bucket, source.path, item.target_path,
                         destination_bucket=item.target_bucket)
            return "server_copy", False
        except StorageError as exc:
            if exc.retryable:
                raise
            logger.warning("Server-side copy of %s was refused (%s); uploading it instead.",
                           item.key, exc.code)
            storage.put(item.target_bucket, item.target_path, data, source.content_type)
            return "upload", True
    storage.put(item.target_bucket, item.target_path, data, source.content_type)
    return "upload", False


def copy_and_verify(
    storage: StorageBackend,
    item: PlannedCopy,
    *,
    target_exists: bool,
    may_overwrite: bool,
    server_copy: bool,
) -> CopyResult:
    """Copy one source to its target and read the target back to verify it.

    Args:
        storage: The backend holding both buckets.
        item: The planned copy.
        target_exists: The target was listed before this run touched it.
        may_overwrite: The existing target is the backfill's own unfinished work, so other
            bytes there may be replaced; otherwise they are a conflict and stay.
        server_copy: Let the server copy the bytes (``storage.copy``); falls back to an upload
            when the server refuses.

    Raises:
        StorageError: A retryable failure, or a verification mismatch (retryable).
    """
    try:
        data = storage.get(item.source.bucket, item.source.path)
    except StorageError as exc:
        if exc.retryable:
            raise
        return CopyResult("refused", detail=f"The source could not be read: {exc.message}")
    source_print = fingerprint(data)
    if target_exists:
        current = _read_optional(storage, item.target_bucket, item.target_path)
        if current is not None and fingerprint(current) == source_print:
            return CopyResult("already_present", source_print,
                              detail="The target already holds the same bytes")
        if current is not None and not may_overwrite:
            return CopyResult("conflict", source_print,
                              detail=f"The target holds {len(current)} other bytes; left alone")
    try:
        method, fell_back = _write_target(storage, item, data, server_copy)
    except StorageError as exc:
        if exc.retryable:
            raise
        return CopyResult("refused", source_print,
                          detail=f"The target refused the object: {exc.message}")
    del data
    written = _read_optional(storage, item.target_bucket, item.target_path)
    written_print = fingerprint(written) if written is not None else None
    if written_print != source_print:
        raise StorageError(
            f"The copy of {item.key} at {item.target_bucket}/{item.target_path} does not match "
            f"its source (source {source_print.size} bytes sha256 {source_print.sha256[:12]}, "
            f"target {written_print})",
            code="VERIFY_MISMATCH",
            retryable=True,
        )
    return CopyResult("copied", source_print, method=method, written=True,
                      server_copy_refused=fell_back)


@dataclass(frozen=True)
class ThumbnailResult:
    """The thumbnail written for a target, or why there is none."""

    path: str | None
    created: bool
    error: str | None = None


def write_thumbnail(storage: StorageBackend, item: PlannedCopy) -> ThumbnailResult:
    """Decode the (verified) target and store its WEBP poster next to it.

    Undecodable bytes or a refused upload leave no thumbnail (the asset keeps no poster);
    retryable storage errors are raised.
    """
    data = storage.get(item.target_bucket, item.target_path)
    try:
        webp = make_thumbnail(data, item.source.is_video)
    except ThumbnailError as exc:
        logger.warning("No thumbnail for %s: %s", item.target_path, exc.message)
        return ThumbnailResult(path=None, created=False, error=exc.message)
    try:
        storage.put(item.target_bucket, item.thumbnail_path, webp, MIME_BY_EXTENSION["webp"])
    except StorageError as exc:
        if exc.retryable:
            raise
        return ThumbnailResult(path=None, created=False,
                               error=f"The thumbnail was refused: {exc.message}")
    return ThumbnailResult(path=item.thumbnail_path, created=True)
