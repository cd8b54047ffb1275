"""The storage interface every backend implements, and the contract's object paths."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from genjobs.errors import ErrorCode, StorageError

MIME_BY_EXTENSION = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
    "mpeg": "video/mpeg",
}


def read_limit_exceeded(target: str, max_bytes: int, size: int | None = None) -> StorageError:
    """The error of an object larger than ``max_bytes``; ``size`` when it is known."""
    shown = f"{size} bytes" if size is not None else f"more than {max_bytes} bytes"
    return StorageError(
        f"Object {target} is {shown}, above the read limit of {max_bytes} bytes",
        status="413",
        code=ErrorCode.OBJECT_OVER_READ_LIMIT,
        retryable=False,
    )


def read_capped(chunks: Iterable[bytes], max_bytes: int, target: str) -> bytes:
    """Join ``chunks`` until more than ``max_bytes`` arrived, then stop with the limit error."""
    kept: builtins.list[bytes] = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise read_limit_exceeded(target, max_bytes)
        kept.append(chunk)
    return b"".join(kept)


def asset_path(user_id: str, job_id: str, index: int, extension: str) -> str:
    """``{user_id}/{job_id}/{index}.{ext}``: the bucket-relative path of an original asset."""
    return f"{user_id}/{job_id}/{index}.{extension}"


def thumbnail_path(user_id: str, job_id: str, index: int) -> str:
    """``{user_id}/{job_id}/{index}.thumb.webp``: the sibling poster workspace-actions expects."""
    return f"{user_id}/{job_id}/{index}.thumb.webp"


def job_prefix(user_id: str, job_id: str) -> str:
    """``{user_id}/{job_id}/``: the folder that holds every object of one job."""
    return f"{user_id}/{job_id}/"


@dataclass(frozen=True)
class StoredObject:
    """What a successful put returns: bucket-relative path, byte count, content type."""

    bucket: str
    path: str
    size: int
    content_type: str


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object (folders are not listed)."""

    path: str
    size: int
    content_type: str | None
    created_at: datetime | None
    etag: str | None = None


class StorageBackend(Protocol):
    """Synchronous object storage. Every method raises :class:`StorageError` on failure."""

    def put(self, bucket: str, path: str, data: bytes, content_type: str) -> StoredObject:
        """Store ``data`` at ``path`` with exactly ``content_type``, overwriting (upsert)."""
        ...

    def get(self, bucket: str, path: str) -> bytes:
        """Read an object; a missing one raises StorageError with status "404"."""
        ...

    def get_limited(self, bucket: str, path: str, max_bytes: int) -> bytes:
        """Read an object of at most ``max_bytes``, stopping as soon as it proves larger
        (StorageError with code ``OBJECT_OVER_READ_LIMIT``); never holds more in memory."""
        ...

    def list(self, bucket: str, prefix: str = "") -> builtins.list[ObjectInfo]:
        """Every object under ``prefix`` (recursively), sorted by path."""
        ...

    def copy(
        self, bucket: str, source: str, destination: str, destination_bucket: str | None = None
    ) -> ObjectInfo | None:
        """Copy an object, server-side where the store can. Returns the destination as the
        store recorded it (size, ETag) where its answer says, else None."""
        ...

    def remove(self, bucket: str, paths: builtins.list[str]) -> builtins.list[str]:
        """Delete objects; returns the paths that existed and were removed."""
        ...

    @property
    def server_side_copy_across_buckets(self) -> bool:
        """Whether ``copy(..., destination_bucket=other)`` runs on the server, moving no bytes
        through this process (within one bucket a server that copies always does)."""
        ...

    def signed_url(self, bucket: str, path: str, expires_in: int) -> str | None:
        """A URL that reads the object without credentials for ``expires_in`` seconds, or
        None where the store has no URLs to sign."""
        ...

    def local_path(self, bucket: str, path: str) -> Path | None:
        """The file that holds the object on this machine's disk, or None for a remote store."""
        ...

    def close(self) -> None:
        """Release connections; the backend is not used afterwards."""
        ...


def check_relative_path(path: str) -> str:
    """Refuse absolute paths, empty segments and ``..`` before they reach any store."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(
            f"Object path {path!r} is not a clean relative path",
            status="400",
            code=ErrorCode.INVALID_OBJECT_PATH,
        )
    return path
