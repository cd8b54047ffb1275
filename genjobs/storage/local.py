"""The embedded default store: ``{root}/{bucket}/{path}`` on the local disk.

Content types live in a ``.meta/`` side tree so they survive exactly as written.
"""

from __future__ import annotations

import builtins
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from genjobs.errors import ErrorCode, StorageError
from genjobs.storage.base import (
    ObjectInfo,
    StoredObject,
    check_relative_path,
    read_capped,
    read_limit_exceeded,
)

META_DIR = ".meta"
READ_CHUNK_BYTES = 1024 * 1024


class LocalFolderStorage:
    """A storage backend on a local folder, laid out like the bucket."""

    server_side_copy_across_buckets = False
    """Every copy reads and writes the files through this process."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _file(self, bucket: str, path: str) -> Path:
        return self.root / check_relative_path(bucket) / check_relative_path(path)

    def _meta(self, bucket: str, path: str) -> Path:
        return self.root / META_DIR / bucket / (path + ".json")

    def put(self, bucket: str, path: str, data: bytes, content_type: str) -> StoredObject:
        target = self._file(bucket, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        meta = self._meta(bucket, path)
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta_tmp = meta.with_name(meta.name + ".part")
        meta_tmp.write_text(json.dumps({"content_type": content_type}))
        os.replace(meta_tmp, meta)  # a concurrent listing reads the old or the new, never half
        return StoredObject(bucket=bucket, path=path, size=len(data), content_type=content_type)

    def get(self, bucket: str, path: str) -> bytes:
        target = self._file(bucket, path)
        if not target.is_file():
            if not (self.root / bucket).is_dir():
                raise StorageError(
                    f"Bucket {bucket} not found", status="404", code=ErrorCode.BUCKET_NOT_FOUND
                )
            raise StorageError(
                f"Object {bucket}/{path} not found", status="404", code=ErrorCode.OBJECT_NOT_FOUND
            )
        return target.read_bytes()

    def get_limited(self, bucket: str, path: str, max_bytes: int) -> bytes:
        """Read an object of at most ``max_bytes``; a larger one is refused by its size."""
        target = self._file(bucket, path)
        try:
            with target.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size > max_bytes:
                    raise read_limit_exceeded(f"{bucket}/{path}", max_bytes, size)
                return read_capped(
                    iter(lambda: handle.read(READ_CHUNK_BYTES), b""), max_bytes, f"{bucket}/{path}"
                )
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise StorageError(
                f"Object {bucket}/{path} not found", status="404", code=ErrorCode.OBJECT_NOT_FOUND
            ) from exc

    def content_type(self, bucket: str, path: str) -> str | None:
        meta = self._meta(bucket, path)
        if not meta.is_file():
            return None
        return str(json.loads(meta.read_text())["content_type"])

    def list(self, bucket: str, prefix: str = "") -> builtins.list[ObjectInfo]:
        base = self.root / check_relative_path(bucket)
        if not base.is_dir():
            raise StorageError(
                f"Bucket {bucket} not found", status="404", code=ErrorCode.BUCKET_NOT_FOUND
            )
        found = []
        # Walk only the folder the prefix names (its part up to the last "/").
        folder = base / prefix.rpartition("/")[0] if "/" in prefix else base
        for file in folder.rglob("*"):
            if not file.is_file() or file.name.endswith(".part"):
                continue
            rel = file.relative_to(base).as_posix()
            if rel.startswith(prefix):
                stat = file.stat()
                found.append(
                    ObjectInfo(
                        path=rel,
                        size=stat.st_size,
                        content_type=self.content_type(bucket, rel),
                        created_at=datetime.fromtimestamp(stat.st_mtime, tz=UTC),
                    )
                )
        return sorted(found, key=lambda info: info.path)

    def copy(
        self, bucket: str, source: str, destination: str, destination_bucket: str | None = None
    ) -> None:
        """Copy through this process; returns None (the folder keeps no ETag to report)."""
        target_bucket = destination_bucket or bucket
        data = self.get(bucket, source)
        self.put(
            target_bucket,
            destination,
            data,
            self.content_type(bucket, source) or "application/octet-stream",
        )

    def remove(self, bucket: str, paths: builtins.list[str]) -> builtins.list[str]:
        removed = []
        for path in paths:
            target = self._file(bucket, path)
            if target.is_file():
                target.unlink()
                self._meta(bucket, path).unlink(missing_ok=True)
                removed.append(path)
        return removed

    def signed_url(self, bucket: str, path: str, expires_in: int) -> None:
        """None: a folder on the local disk has no URLs to sign."""
        return None

    def local_path(self, bucket: str, path: str) -> Path:
        return self._file(bucket, path)

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own files."""
