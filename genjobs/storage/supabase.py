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

Objects up to ``resumable_upload_threshold_bytes`` (6 MB by default) are one standard upload;
larger ones go through a resumable (TUS) upload (:mod:`genjobs.storage.resumable`) on the same
HTTP client, in chunks that are tried again and resumed from the server's offset, as Supabase
recommends above 6 MB. Its refusals are translated with the same table (the TUS route answers
them with the real HTTP status and a plain-text body). An object larger than the bucket's
``file_size_limit`` is refused by the server with 413 (``OBJECT_TOO_LARGE``); the message names
the object, its size and, for ``workspace-temp``, the limit the migrations set.

Copies within a bucket are server-side (``POST /object/copy``). ``storage3`` 2.34's ``copy()``
cannot name a destination bucket, so a copy into another bucket, or onto an existing object
(which the server refuses with 409), downloads the source and uploads it again with its content
type, upserting.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import httpx
from pydantic import SecretStr, ValidationError
from storage3 import SyncStorageClient
from storage3._sync.file_api import relative_path_to_parts
from storage3.exceptions import StorageApiError
from storage3.utils import StorageException

from genjobs.errors import ErrorCode, StorageError
from genjobs.storage.base import (
    ObjectInfo,
    StoredObject,
    check_relative_path,
    read_capped,
    read_limit_exceeded,
)
from genjobs.storage.limits import (
    RESUMABLE_UPLOAD_THRESHOLD,
    WORKSPACE_TEMP_BUCKET,
    WORKSPACE_TEMP_FILE_SIZE_LIMIT,
)
from genjobs.storage.resumable import (
    DEFAULT_CHUNK_SIZE,
    ResumableUploader,
    is_transient_status,
)
from genjobs.tls import ssl_context

logger = logging.getLogger(__name__)

DEFAULT_CACHE_CONTROL = "3600"
LIST_PAGE_SIZE = 1000
LIST_CONCURRENCY = 8
"""Folders of one level a listing asks for at once: a bucket of many user folders is one
request per folder, each a round trip to the project."""
REMOVE_BATCH_SIZE = 1000
STORAGE_PATH = "/storage/v1/"


def storage_error_from_api(exc: StorageApiError, action: str, target: str) -> StorageError:
    """The project error for a storage API refusal, by the status string in the body."""
    status = str(exc.status)
    error = str(exc.code)
    detail = f"Storage {action} of {target} failed with status {status} ({error}): {exc.message}"
    if status == "404":
        missing_bucket = error in ("Bucket not found", "NoSuchBucket")
        code = ErrorCode.BUCKET_NOT_FOUND if missing_bucket else ErrorCode.OBJECT_NOT_FOUND
        return StorageError(detail, status=status, code=code, retryable=False)
    known = {
        "415": ErrorCode.INVALID_MIME_TYPE,
        "413": ErrorCode.OBJECT_TOO_LARGE,
        "409": ErrorCode.OBJECT_EXISTS,
        "403": ErrorCode.STORAGE_ACCESS_DENIED,
        "401": ErrorCode.STORAGE_ACCESS_DENIED,
    }
    if status in known:
        return StorageError(detail, status=status, code=known[status], retryable=False)
    if is_transient_status(status):
        return StorageError(
            detail, status=status, code=ErrorCode.STORAGE_UNAVAILABLE, retryable=True
        )
    return StorageError(detail, status=status, code=ErrorCode.STORAGE_BAD_REQUEST, retryable=False)


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
            code=ErrorCode.STORAGE_BAD_REQUEST,
            retryable=False,
        ) from exc
    except httpx.TimeoutException as exc:
        raise StorageError(
            f"Storage {action} of {target} timed out ({type(exc).__name__})",
            code=ErrorCode.STORAGE_UNAVAILABLE,
            retryable=True,
        ) from exc
    except httpx.TransportError as exc:
        raise StorageError(
            f"Storage {action} of {target} lost its connection ({type(exc).__name__}: {exc})",
            code=ErrorCode.STORAGE_UNAVAILABLE,
            retryable=True,
        ) from exc
    except (httpx.HTTPError, StorageException, ValueError, KeyError) as exc:
        raise StorageError(
            f"Storage {action} of {target} got an unreadable answer ({type(exc).__name__}: {exc})",
            code=ErrorCode.STORAGE_BAD_RESPONSE,
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
        resumable: The TUS client for objects above the threshold (:meth:`from_supabase`
            builds it on the same HTTP client); None sends every object as a standard upload.
        resumable_upload_threshold_bytes: Objects larger than this go through ``resumable``.
        cache_control: ``cache-control`` seconds sent with every upload.
        list_page_size: ``limit`` of each list request.
        list_concurrency: Folders of one level listed at once (:meth:`list`).
        owns_client: Close the client's HTTP session in :meth:`close`.
    """

    def __init__(
        self,
        client: SyncStorageClient,
        *,
        resumable: ResumableUploader | None = None,
        resumable_upload_threshold_bytes: int = RESUMABLE_UPLOAD_THRESHOLD,
        cache_control: str = DEFAULT_CACHE_CONTROL,
        list_page_size: int = LIST_PAGE_SIZE,
        list_concurrency: int = LIST_CONCURRENCY,
        owns_client: bool = False,
    ):
        if list_page_size < 1:
            raise ValueError(f"list_page_size must be at least 1, got {list_page_size}")
        if list_concurrency < 1:
            raise ValueError(f"list_concurrency must be at least 1, got {list_concurrency}")
        self._client = client
        if resumable_upload_threshold_bytes < 1:
            raise ValueError(
                "resumable_upload_threshold_bytes must be at least 1, "
                f"got {resumable_upload_threshold_bytes}"
            )
        self._resumable = resumable
        self.resumable_upload_threshold_bytes = resumable_upload_threshold_bytes
        self.cache_control = cache_control
        self.list_page_size = list_page_size
        self.list_concurrency = list_concurrency
        self._owns_client = owns_client
        # Whether the server copies into another bucket (``destinationBucket``): unknown until
        # the first such copy tells (see :meth:`copy`), then fixed for this backend.
        self._copies_across_buckets: bool | None = None
        # Buckets this backend has seen answer: an empty listing in one of them needs no
        # request to tell that the bucket exists (see :meth:`list`).
        self._buckets_seen: set[str] = set()

    @classmethod
    def from_supabase(
        cls,
        url: str,
        service_key: str | SecretStr,
        timeout: float | httpx.Timeout = 60.0,
        resumable_chunk_bytes: int = DEFAULT_CHUNK_SIZE,
        **options: Any,
    ) -> SupabaseStorage:
        """A backend for the project at ``url`` (its storage lives under ``/storage/v1/``).

        Args:
            url: ``SUPABASE_URL``.
            service_key: The service-role key (a JWT), sent as bearer token and ``apiKey``.
            timeout: Seconds for connecting, each read and each write, or an ``httpx.Timeout``.
            resumable_chunk_bytes: Bytes per chunk of a resumable upload.
            **options: Passed on to the constructor.
        """
        key = service_key.get_secret_value() if isinstance(service_key, SecretStr) else service_key
        headers = {"apiKey": key, "Authorization": f"Bearer {key}"}
        limits = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        http_client = httpx.Client(timeout=limits, follow_redirects=True, verify=ssl_context())
        base = url.rstrip("/") + STORAGE_PATH
        client = SyncStorageClient(base, headers, http_client=http_client)
        resumable = ResumableUploader(http_client, base, headers, chunk_size=resumable_chunk_bytes)
        return cls(client, resumable=resumable, owns_client=True, **options)

    def close(self) -> None:
        if self._owns_client:
            self._client.session.close()

    def __enter__(self) -> SupabaseStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # StorageBackend

    def put(self, bucket: str, path: str, data: bytes, content_type: str) -> StoredObject:
        """Upload ``data`` with exactly ``content_type``, overwriting (``x-upsert: true``);
        resumable above the threshold."""
        check_relative_path(path)
        target = f"{bucket}/{path}"
        resumable = self._resumable
        if resumable is not None and len(data) > self.resumable_upload_threshold_bytes:
            route = "resumable"
            with self._translate_upload_errors(bucket, target, len(data)):
                resumable.upload(bucket, path, data, content_type, self.cache_control)
        else:
            route = "standard"
            options = {
                "content-type": content_type,
                "cache-control": self.cache_control,
                "upsert": "true",
            }
            with self._translate_upload_errors(bucket, target, len(data)):
                self._client.from_(bucket).upload(path, data, options)  # type: ignore[arg-type]
        logger.debug("Uploaded %s (%d bytes, %s, %s).", target, len(data), content_type, route)
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

        The server lists one folder level per request (folders come back with ``id`` null), so
        the folders of each level are listed ``list_concurrency`` at a time. It answers an empty
        list for a missing bucket; an empty result is therefore checked against
        the bucket so that a missing one raises ``BUCKET_NOT_FOUND`` as the local backend does,
        once per bucket and backend: a bucket that answered once is taken to exist (a bucket
        removed since lists as empty; what is written there then fails).
        """
        folder, _, rest = prefix.rpartition("/")
        found: list[ObjectInfo] = []
        level = [folder]

        def entries(current: str) -> list[dict[str, Any]]:
            return list(self._list_folder(bucket, current, rest if current == folder else ""))

        with translate_errors("list", f"{bucket}/{prefix}"):
            while level:
                deeper: list[str] = []
                for current, listed in zip(level, self._each_folder(entries, level), strict=True):
                    for entry in listed:
                        name = entry.get("name")
                        if not isinstance(name, str) or not name:
                            continue
                        full = f"{current}/{name}" if current else name
                        if entry.get("id") is None:
                            if (full + "/").startswith(prefix) or prefix.startswith(full + "/"):
                                deeper.append(full)
                        elif full.startswith(prefix):
                            found.append(self._object_info(full, entry))
                level = deeper
            if not found and bucket not in self._buckets_seen:
                self._require_bucket(bucket)
        self._buckets_seen.add(bucket)
        return sorted(found, key=lambda info: info.path)

    def copy(
        self, bucket: str, source: str, destination: str, destination_bucket: str | None = None
    ) -> ObjectInfo | None:
        """Copy an object on the server, overwriting the destination.

        Returns the destination as the server recorded it, where its answer carries the new
        object's row (size, MIME type, ETag; v1.70.6 does); None where it does not, or
        where the bytes went through this process.

        Into another bucket the server is asked to copy (``destinationBucket``) until it shows
        that it cannot: a server that does not know the field copies within the source bucket
        instead, which its answer's ``Key`` reveals; that stray copy (new, since the request
        does not overwrite) is removed where it holds the source's bytes, and from then on this
        backend copies across buckets through the client (download, upload). A destination that
        exists is overwritten through the client too: the request never overwrites, so an
        ignored field can never replace an object of the source bucket.
        """
        check_relative_path(source)
        check_relative_path(destination)
        target_bucket = destination_bucket or bucket
        if target_bucket != bucket and self._copies_across_buckets is False:
            self._copy_through_client(bucket, source, target_bucket, destination)
            return None
        body = {"bucketId": bucket, "sourceKey": source, "destinationKey": destination}
        if target_bucket != bucket:
            body["destinationBucket"] = target_bucket
        api = self._client.from_(bucket)
        try:
            with translate_errors("copy", f"{bucket}/{source}"):
                answer = api._request("POST", ["object", "copy"], json=body).json()
        except StorageError as exc:
            if exc.code != ErrorCode.OBJECT_EXISTS:
                raise
            logger.debug("Copy target %s/%s exists; overwriting it", target_bucket, destination)
            self._copy_through_client(bucket, source, target_bucket, destination)
            return None
        if answer.get("Key") == f"{target_bucket}/{destination}":
            if target_bucket != bucket:
                self._copies_across_buckets = True
            return self._copied_info(destination, answer)
        if target_bucket == bucket:
            return None
        self._copies_across_buckets = False
        logger.warning(
            "The storage server does not copy into another bucket (it answered %s for a copy "
            "into %s); copies across buckets now go through this process.",
            answer.get("Key"),
            target_bucket,
        )
        self._remove_stray_copy(bucket, source, destination)
        self._copy_through_client(bucket, source, target_bucket, destination)
        return None

    def _remove_stray_copy(self, bucket: str, source: str, stray: str) -> None:
        """Remove the copy a server made at ``bucket/stray`` instead of in another bucket,
        where it lists with the source's size and ETag; else keep it and say so."""
        listed = {info.path: info for info in self.list(bucket, stray.rpartition("/")[0] + "/")}
        original = {info.path: info for info in self.list(bucket, source.rpartition("/")[0] + "/")}
        made, origin = listed.get(stray), original.get(source)
        if made and origin and made.etag and (made.size, made.etag) == (origin.size, origin.etag):
            self.remove(bucket, [stray])
            logger.warning("Removed the stray copy %s/%s.", bucket, stray)
            return
        logger.error(
            "The stray copy at %s/%s cannot be told from another object (size or ETag differ "
            "from %s), so it is kept; remove it by hand after checking it.",
            bucket,
            stray,
            source,
        )

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

    @property
    def server_side_copy_across_buckets(self) -> bool:
        """True until a copy shows that the server cannot copy into another bucket
        (see :meth:`copy`)."""
        return self._copies_across_buckets is not False

    def local_path(self, bucket: str, path: str) -> None:
        """None: the objects live on the storage server."""
        return None

    def signed_url(self, bucket: str, path: str, expires_in: int) -> str:
        """An absolute URL that reads the object without authorisation for ``expires_in`` s."""
        check_relative_path(path)
        with translate_errors("sign", f"{bucket}/{path}"):
            signed = self._client.from_(bucket).create_signed_url(path, expires_in)
        url = signed["signedURL"]
        if not url:
            raise StorageError(
                f"Storage sign of {bucket}/{path} returned no URL",
                code=ErrorCode.STORAGE_BAD_RESPONSE,
                retryable=True,
            )
        return url

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

    # Helpers

    @staticmethod
    @contextmanager
    def _translate_upload_errors(bucket: str, target: str, size: int) -> Iterator[None]:
        """:func:`translate_errors` for an upload; a 413 names the object, its size and the
        limit the project sets for its bucket."""
        try:
            with translate_errors("upload", target):
                yield
        except StorageError as exc:
            if exc.code != ErrorCode.OBJECT_TOO_LARGE:
                raise
            limit = (
                f"its file_size_limit, {WORKSPACE_TEMP_FILE_SIZE_LIMIT} bytes as the migrations "
                "set it"
                if bucket == WORKSPACE_TEMP_BUCKET
                else "its file_size_limit"
            )
            raise StorageError(
                f"Object {target} has {size} bytes, more than bucket {bucket} accepts "
                f"({limit}). {exc.message}",
                status=exc.status,
                code=exc.code,
                retryable=False,
            ) from exc.__cause__

    def _each_folder(
        self,
        entries: Callable[[str], builtins.list[dict[str, Any]]],
        folders: builtins.list[str],
    ) -> builtins.list[builtins.list[dict[str, Any]]]:
        """``entries(folder)`` of each folder, in order, ``list_concurrency`` at a time."""
        if len(folders) == 1 or self.list_concurrency == 1:
            return [entries(folder) for folder in folders]
        workers = min(self.list_concurrency, len(folders))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="storage-list") as pool:
            return builtins.list(pool.map(entries, folders))

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

    @classmethod
    def _copied_info(cls, destination: str, answer: dict[str, Any]) -> ObjectInfo | None:
        """The copy's destination from the server's answer: its row, where the answer holds
        one for that path with a size (else None: the caller lists it instead)."""
        metadata = answer.get("metadata")
        if answer.get("name") != destination or not isinstance(metadata, dict):
            return None
        if not isinstance(metadata.get("size", metadata.get("contentLength")), int):
            return None
        return cls._object_info(destination, answer)

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
