"""Supabase Storage through the official ``storage3`` client.

Every error from the client or the network is translated into :class:`StorageError` here, once.
The server answers storage errors as HTTP 400 with the real status as a string in the body; the
client exposes it as ``StorageApiError.status``:

====================  ======================================  =========
status / cause        code                                    retryable
====================  ======================================  =========
415                   ``INVALID_MIME_TYPE``                   no
413                   ``OBJECT_TOO_LARGE``                    no
404, bucket missing   ``BUCKET_NOT_FOUND``                    no
404, object missing   ``OBJECT_NOT_FOUND``                    no
409                   ``OBJECT_EXISTS``                       no
401, 403              ``STORAGE_ACCESS_DENIED``               no
400 and other 4xx     ``STORAGE_BAD_REQUEST``                 no
408, 423, 429, 5xx    ``STORAGE_UNAVAILABLE``                 yes
timeout, connection   ``STORAGE_UNAVAILABLE``                 yes
unreadable answer     ``STORAGE_BAD_RESPONSE``                yes
====================  ======================================  =========

Uploads are standard (single request) uploads. Supabase meant those for files up to about 6 MB
and recommends resumable (TUS) uploads above; ``storage3`` has no TUS client, so objects larger
than ``standard_upload_limit`` are refused before any byte is sent with
``OBJECT_TOO_LARGE_FOR_STANDARD_UPLOAD``. The limit is a constructor argument (None lifts it);
the model's images and videos (2.3-5.3 MB) stay below the default.

Copies within a bucket are server-side (``POST /object/copy``). ``storage3`` 2.34's ``copy()``
cannot name a destination bucket, so a copy into another bucket, or onto an existing object
(which the server refuses with 409), downloads the source and uploads it again with its content
type, upserting.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import httpx
from pydantic import SecretStr, ValidationError
from storage3 import SyncStorageClient
from storage3._sync.file_api import relative_path_to_parts
from storage3.exceptions import StorageApiError
from storage3.utils import StorageException

from genjobs.errors import StorageError
from genjobs.storage.base import (
    ObjectInfo,
    StoredObject,
    check_relative_path,
    read_capped,
    read_limit_exceeded,
)
from genjobs.tls import ssl_context

logger = logging.getLogger(__name__)

STANDARD_UPLOAD_LIMIT = 6 * 1024 * 1024
"""Largest object sent as one standard upload, in bytes."""

DEFAULT_CACHE_CONTROL = "3600"
LIST_PAGE_SIZE = 1000
REMOVE_BATCH_SIZE = 1000
STORAGE_PATH = "/storage/v1/"

_RETRYABLE_STATUSES = {"408", "423", "429"}


def storage_error_from_api(exc: StorageApiError, action: str, target: str) -> StorageError:
    """The project error for a storage API refusal, by the status string in the body."""
    status = str(exc.status)
    error = str(exc.code)
    detail = f"Storage {action} of {target} failed with status {status} ({error}): {exc.message}"
    if status == "404":
        missing_bucket = error in ("Bucket not found", "NoSuchBucket")
        code = "BUCKET_NOT_FOUND" if missing_bucket else "OBJECT_NOT_FOUND"
        return StorageError(detail, status=status, code=code, retryable=False)
    known = {
        "415": "INVALID_MIME_TYPE",
        "413": "OBJECT_TOO_LARGE",
        "409": "OBJECT_EXISTS",
        "403": "STORAGE_ACCESS_DENIED",
        "401": "STORAGE_ACCESS_DENIED",
    }
    if status in known:
        return StorageError(detail, status=status, code=known[status], retryable=False)
    if status.startswith("5") or status in _RETRYABLE_STATUSES:
        return StorageError(detail, status=status, code="STORAGE_UNAVAILABLE", retryable=True)
    return StorageError(detail, status=status, code="STORAGE_BAD_REQUEST", retryable=False)


def _api_error(response: httpx.Response) -> StorageApiError:
    """The client's error for an error answer, built as ``storage3`` builds it."""
    try:
        body = response.json()
        return StorageApiError(body["message"], body["error"], body["statusCode"])
    except (KeyError, TypeError, ValueError):
        return StorageApiError(
            f"Unable to parse error message: {response.text}", "InternalError", response.status_code
        )


@contextmanager
def translate_errors(action: str, target: str) -> Iterator[None]:
    """Turn whatever the client or the network raises into one :class:`StorageError`."""
    try:
        yield
    except StorageApiError as exc:
        raise storage_error_from_api(exc, action, target) from exc
    except httpx.UnsupportedProtocol as exc:
        raise StorageError(
            f"Storage {action} of {target} has an unusable URL: {exc}",
            code="STORAGE_BAD_REQUEST",
            retryable=False,
        ) from exc
    except httpx.TimeoutException as exc:
        raise StorageError(
            f"Storage {action} of {target} timed out ({type(exc).__name__})",
            code="STORAGE_UNAVAILABLE",
            retryable=True,
        ) from exc
    except httpx.TransportError as exc:
        raise StorageError(
            f"Storage {action} of {target} lost its connection ({type(exc).__name__}: {exc})",
            code="STORAGE_UNAVAILABLE",
            retryable=True,
        ) from exc
    except (httpx.HTTPError, StorageException, ValueError, KeyError) as exc:
        raise StorageError(
            f"Storage {action} of {target} got an unreadable answer ({type(exc).__name__}: {exc})",
            code="STORAGE_BAD_RESPONSE",
            retryable=True,
        ) from exc


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _plain_etag(value: Any) -> str | None:
    return value.strip('"') if isinstance(value, str) and value else None


class SupabaseStorage:
    """The :class:`~genjobs.storage.base.StorageBackend` on Supabase Storage.

    Args:
        client: A ``storage3`` client pointed at ``{SUPABASE_URL}/storage/v1/`` (or at a bare
            storage server), authorised with a service-role key; its HTTP client carries the
            timeouts.
        standard_upload_limit: Largest object sent as one standard upload; None lifts it.
        cache_control: ``cache-control`` seconds sent with every upload.
        list_page_size: ``limit`` of each list request.
        owns_client: Close the client's HTTP session in :meth:`close`.
    """

    def __init__(
        self,
        client: SyncStorageClient,
        *,
        standard_upload_limit: int | None = STANDARD_UPLOAD_LIMIT,
        cache_control: str = DEFAULT_CACHE_CONTROL,
        list_page_size: int = LIST_PAGE_SIZE,
        owns_client: bool = False,
    ):
        if list_page_size < 1:
            raise ValueError(f"list_page_size must be at least 1, got {list_page_size}")
        self._client = client
        self.standard_upload_limit = standard_upload_limit
        self.cache_control = cache_control
        self.list_page_size = list_page_size
        self._owns_client = owns_client

    @classmethod
    def from_supabase(
        cls,
        url: str,
        service_key: str | SecretStr,
        timeout: float | httpx.Timeout = 60.0,
        **options: Any,
    ) -> SupabaseStorage:
        """A backend for the project at ``url`` (its storage lives under ``/storage/v1/``).

        Args:
            url: ``SUPABASE_URL``.
            service_key: The service-role key (a JWT), sent as bearer token and ``apiKey``.
            timeout: Seconds for connecting, each read and each write, or an ``httpx.Timeout``.
            **options: Passed on to the constructor.
        """
        key = service_key.get_secret_value() if isinstance(service_key, SecretStr) else service_key
        headers = {"apiKey": key, "Authorization": f"Bearer {key}"}
        limits = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        http_client = httpx.Client(timeout=limits, follow_redirects=True, verify=ssl_context())
        client = SyncStorageClient(url.rstrip("/") + STORAGE_PATH, headers, http_client=http_client)
        return cls(client, owns_client=True, **options)

    def close(self) -> None:
        if self._owns_client:
            self._client.session.close()

    def __enter__(self) -> SupabaseStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # StorageBackend

    def put(self, bucket: str, path: str, data: bytes, content_type: str) -> StoredObject:
        """Upload ``data`` with exactly ``content_type``, overwriting (``x-upsert: true``)."""
        check_relative_path(path)
        target = f"{bucket}/{path}"
        limit = self.standard_upload_limit
        if limit is not None and len(data) > limit:
            raise StorageError(
                f"Object {target} has {len(data)} bytes, above the standard upload limit of "
                f"{limit} bytes; resumable uploads are not supported",
                code="OBJECT_TOO_LARGE_FOR_STANDARD_UPLOAD",
                retryable=False,
            )
        options = {
            "content-type": content_type,
            "cache-control": self.cache_control,
            "upsert": "true",
        }
        with translate_errors("upload", target):
            self._client.from_(bucket).upload(path, data, options)  # type: ignore[arg-type]
        logger.debug("Uploaded %s (%d bytes, %s)", target, len(data), content_type)
        return StoredObject(bucket=bucket, path=path, size=len(data), content_type=content_type)

    def get(self, bucket: str, path: str) -> bytes:
        """Download an object; a missing (or hidden) one raises ``OBJECT_NOT_FOUND``."""
        check_relative_path(path)
        with translate_errors("download", f"{bucket}/{path}"):
            return self._client.from_(bucket).download(path)

    def get_limited(self, bucket: str, path: str, max_bytes: int) -> bytes:
        """Download an object of at most ``max_bytes``, streamed: a larger one is refused by
        its declared length or as soon as the bytes read pass the limit.

        The request is the one ``storage3``'s ``download`` sends, on the client's session.
        """
        check_relative_path(path)
        target = f"{bucket}/{path}"
        api = self._client.from_(bucket)
        url = api._base_url.joinpath("object", api.id, *relative_path_to_parts(path))
        with (
            translate_errors("download", target),
            api._client.stream("GET", str(url), headers=api._headers) as response,
        ):
            if response.is_error:
                response.read()
                raise _api_error(response)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise read_limit_exceeded(target, max_bytes, int(declared))
            return read_capped(response.iter_bytes(), max_bytes, target)

    def list(self, bucket: str, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose path starts with ``prefix``, descending into folders.

        The server lists one folder level per request (folders come back with ``id`` null) and
        answers an empty list for a missing bucket; an empty result is therefore checked against
        the bucket so that a missing one raises ``BUCKET_NOT_FOUND`` as the local backend does.
        """
        folder, _, rest = prefix.rpartition("/")
        found: list[ObjectInfo] = []
        pending = [folder]
        with translate_errors("list", f"{bucket}/{prefix}"):
            while pending:
                current = pending.pop()
                search = rest if current == folder else ""
                for entry in self._list_folder(bucket, current, search):
                    name = entry.get("name")
                    if not isinstance(name, str) or not name:
                        continue
                    full = f"{current}/{name}" if current else name
                    if entry.get("id") is None:
                        if (full + "/").startswith(prefix) or prefix.startswith(full + "/"):
                            pending.append(full)
                    elif full.startswith(prefix):
                        found.append(self._object_info(full, entry))
            if not found:
                self._require_bucket(bucket)
        return sorted(found, key=lambda info: info.path)

    def copy(
        self, bucket: str, source: str, destination: str, destination_bucket: str | None = None
    ) -> None:
        """Copy an object, overwriting the destination.

        Within a bucket the server copies; into another bucket, or when the destination exists
        (the server's copy never overwrites), the bytes are downloaded and uploaded again.
        """
        check_relative_path(source)
        check_relative_path(destination)
        target_bucket = destination_bucket or bucket
        if target_bucket == bucket:
            try:
                with translate_errors("copy", f"{bucket}/{source}"):
                    self._client.from_(bucket).copy(source, destination)
                return
            except StorageError as exc:
                if exc.code != "OBJECT_EXISTS":
                    raise
                logger.debug("Copy target %s/%s exists; overwriting it", bucket, destination)
        self._copy_through_client(bucket, source, target_bucket, destination)

    def remove(self, bucket: str, paths: builtins.list[str]) -> builtins.list[str]:
        """Delete objects; returns the paths that existed and were removed, in request order."""
        wanted: builtins.list[str] = builtins.list(dict.fromkeys(paths))
        removed: set[str] = set()
        for start in range(0, len(wanted), REMOVE_BATCH_SIZE):
            batch = wanted[start : start + REMOVE_BATCH_SIZE]
            with translate_errors("remove", f"{bucket} ({len(batch)} paths)"):
                rows = self._client.from_(bucket).remove(batch)
            removed.update(str(row["name"]) for row in rows if isinstance(row, dict))
        return [path for path in wanted if path in removed]

    # Extras

    def exists(self, bucket: str, path: str) -> bool:
        """Whether the object exists (and is visible to this key)."""
        check_relative_path(path)
        with translate_errors("info", f"{bucket}/{path}"):
            return self._client.from_(bucket).exists(path)

    def content_type(self, bucket: str, path: str) -> str | None:
        """The stored content type of an object."""
        check_relative_path(path)
        with translate_errors("info", f"{bucket}/{path}"):
            info = self._client.from_(bucket).info(path)
        value = info.get("content_type") or info.get("contentType")
        return str(value) if value else None

    def signed_url(self, bucket: str, path: str, expires_in: int) -> str:
        """An absolute URL that reads the object without authorisation for ``expires_in`` s."""
        check_relative_path(path)
        with translate_errors("sign", f"{bucket}/{path}"):
            signed = self._client.from_(bucket).create_signed_url(path, expires_in)
        url = signed["signedURL"]
        if not url:
            raise StorageError(
                f"Storage sign of {bucket}/{path} returned no URL",
                code="STORAGE_BAD_RESPONSE",
                retryable=True,
            )
        return url

    # Helpers

    def _list_folder(self, bucket: str, folder: str, search: str) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            options: dict[str, Any] = {
                "limit": self.list_page_size,
                "offset": offset,
                "sortBy": {"column": "name", "order": "asc"},
            }
            if search:
                options["search"] = search
            page = self._client.from_(bucket).list(folder, options)  # type: ignore[arg-type]
            yield from (entry for entry in page if isinstance(entry, dict))
            if len(page) < self.list_page_size:
                return
            offset += len(page)

    def _require_bucket(self, bucket: str) -> None:
        try:
            self._client.get_bucket(bucket)
        except ValidationError:
            # The bucket answered; its row's shape does not matter here.
            return

    @staticmethod
    def _object_info(path: str, entry: dict[str, Any]) -> ObjectInfo:
        metadata = entry.get("metadata") or {}
        size = metadata.get("size", metadata.get("contentLength", 0))
        content_type = metadata.get("mimetype")
        return ObjectInfo(
            path=path,
            size=int(size or 0),
            content_type=str(content_type) if content_type else None,
            created_at=_parse_time(entry.get("created_at")),
            etag=_plain_etag(metadata.get("eTag")),
        )

    def _copy_through_client(
        self, bucket: str, source: str, target_bucket: str, destination: str
    ) -> None:
        content_type = self.content_type(bucket, source) or "application/octet-stream"
        data = self.get(bucket, source)
        self.put(target_bucket, destination, data, content_type)
        logger.debug(
            "Copied %s/%s to %s/%s through the client (%d bytes)",
            bucket,
            source,
            target_bucket,
            destination,
            len(data),
        )
