"""Resumable (TUS 1.0.0) uploads to Supabase Storage, over the backend's own ``httpx`` client.

Supabase Storage serves the TUS protocol at ``{SUPABASE_URL}/storage/v1/upload/resumable``:

1. ``POST`` creates an upload: ``Upload-Length`` and ``Upload-Metadata`` (``bucketName``,
   ``objectName``, ``contentType``, ``cacheControl``, each base64) and ``x-upsert: true``; the
   ``201`` answer's ``Location`` is the upload's URL. A refused MIME type or size answers here.
2. ``PATCH`` requests send the bytes in chunks (hosted Supabase asks for 6 MB), each at the
   ``Upload-Offset`` the server holds, as ``application/offset+octet-stream``; every ``204``
   answer carries the new offset. The last one completes the object (upserting).
3. ``HEAD`` answers the offset the server holds.

When the answer to the last ``PATCH`` is lost, the server's offset says every byte arrived but
not that the object was written (the server completes it after recording the bytes). The upload
URL names the object version the upload writes, so the object's info is read until it shows that
version, a bounded number of times.

A chunk that fails transiently (5xx, 408, 423, 429, a timeout, a dropped connection, an offset
conflict) is tried again after a backoff, from the offset the server reports (``HEAD``): what
the server already holds is never sent again, and an upload never restarts from 0 unless its
URL is gone (404, 410), which starts a new upload a bounded number of times. The tries without
progress are bounded too, so a server that stalls forever ends the upload.

Nothing here translates errors: a refusal is raised as ``storage3``'s ``StorageApiError`` with
the status string the standard uploads carry (the JSON ``statusCode`` when the answer has one,
else the HTTP status) and transport errors propagate, so that
:func:`genjobs.storage.supabase.translate_errors` maps both with the standard path's table.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Callable, Mapping

import httpx
from storage3.exceptions import StorageApiError

from genjobs.errors import ErrorCode, StorageError

logger = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
RESUMABLE_UPLOAD_PATH = "upload/resumable"
DEFAULT_CHUNK_SIZE = 6 * 1024 * 1024
"""Bytes per ``PATCH``: the 6 MB hosted Supabase asks for."""
DEFAULT_CHUNK_TRIES = 5
DEFAULT_RESTARTS = 2
DEFAULT_BACKOFF_BASE_SECONDS = 0.5
DEFAULT_BACKOFF_CAP_SECONDS = 8.0
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
_VERSION_AT_END = re.compile(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


def is_transient_status(status: str) -> bool:
    """Whether a storage answer with this status (a string: ``"503"``) is worth another try."""
    return status.startswith("5") or status in ("408", "423", "429")


def upload_metadata(values: Mapping[str, str]) -> str:
    """The ``Upload-Metadata`` header: ``key base64(value)`` pairs joined by commas."""
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode('ascii')}" for key, value in values.items()
    )


def refusal(response: httpx.Response) -> StorageApiError:
    """A storage answer as ``StorageApiError``: the JSON error body's fields where the server
    sent one (errors raised before the TUS handler, HTTP 400 with the real status inside), else
    the HTTP status and the plain-text body the TUS handler answers with."""
    text = response.text.strip()
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if isinstance(body, dict) and "statusCode" in body:
        message = str(body.get("message") or text)
        return StorageApiError(message, str(body.get("error") or message), str(body["statusCode"]))
    message = text or response.reason_phrase or "no answer body"
    return StorageApiError(message, message, str(response.status_code))


class _UploadGone(Exception):
    """The upload URL answered 404 or 410: the server no longer knows this upload."""


class _OffsetConflict(Exception):
    """The upload URL answered 409: the offset sent is not the one the server holds."""

    def __str__(self) -> str:
        return f"the offsets kept conflicting ({self.args[0]})"


class _NotWrittenYet(Exception):
    """The object's info does not show the version the upload wrote (yet)."""


_RETRIED = (
    httpx.TimeoutException,
    httpx.TransportError,
    StorageApiError,
    _OffsetConflict,
    _NotWrittenYet,
)


def upload_version(location: str) -> str | None:
    """The object version an upload writes, from its URL: the last path segment is the
    base64url of ``{bucket}/{object}/{version}`` (or ``{object}-$v-{version}``)."""
    segment = location.rstrip("/").rsplit("/", 1)[-1]
    try:
        decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    found = _VERSION_AT_END.search(decoded)
    return found.group(1) if found else None


def _info_version(response: httpx.Response) -> str | None:
    """The ``version`` of an object info answer; None for any other answer."""
    if response.status_code != 200:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    version = body.get("version") if isinstance(body, dict) else None
    return str(version) if version else None


def _offset_header(response: httpx.Response, total: int) -> int:
    value = response.headers.get("Upload-Offset", "")
    if not value.isdigit() or int(value) > total:
        raise ValueError(f"the server answered an unusable Upload-Offset {value!r}")
    return int(value)


def _worth_retrying(exc: Exception) -> bool:
    if isinstance(exc, httpx.UnsupportedProtocol):
        return False
    if isinstance(exc, StorageApiError):
        return is_transient_status(str(exc.status))
    return True


class ResumableUploader:
    """Sends one object through a TUS upload, chunk by chunk, resuming after failures.

    Args:
        http: The backend's HTTP client (its timeouts and TLS apply).
        storage_url: ``{SUPABASE_URL}/storage/v1/``; uploads go to its ``upload/resumable``.
        headers: Authorisation headers sent with every request (never logged).
        chunk_size: Bytes per ``PATCH``.
        chunk_tries: Failed tries in a row, without the server's offset moving, before the
            upload gives up (creating an upload counts the same way).
        restarts: New uploads started when the upload URL is gone.
        backoff_base_seconds: Wait after the first failed try; doubles with each further one.
        backoff_cap_seconds: Longest wait between two tries.
        sleep: Waits between tries (tests pass a recorder).
    """

    def __init__(
        self,
        http: httpx.Client,
        storage_url: str,
        headers: Mapping[str, str],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        chunk_tries: int = DEFAULT_CHUNK_TRIES,
        restarts: int = DEFAULT_RESTARTS,
        backoff_base_seconds: float = DEFAULT_BACKOFF_BASE_SECONDS,
        backoff_cap_seconds: float = DEFAULT_BACKOFF_CAP_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if chunk_tries < 1 or restarts < 0:
            raise ValueError(f"need chunk_tries >= 1 and restarts >= 0: {chunk_tries}, {restarts}")
        self._http = http
        self.storage_url = storage_url.rstrip("/") + "/"
        self.endpoint = self.storage_url + RESUMABLE_UPLOAD_PATH
        self._headers = dict(headers)
        self.chunk_size = chunk_size
        self.chunk_tries = chunk_tries
        self.restarts = restarts
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_cap_seconds = backoff_cap_seconds
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"ResumableUploader({self.endpoint!r}, chunk_size={self.chunk_size})"

    def upload(
        self, bucket: str, path: str, data: bytes, content_type: str, cache_control: str
    ) -> None:
        """Store ``data`` at ``bucket/path`` with exactly ``content_type``, overwriting.

        Raises:
            StorageApiError: The server refused the upload, or answered a transient failure
                on every try.
            httpx.HTTPError: The connection failed or timed out on every try.
            StorageError: The upload URL kept disappearing, the offsets kept conflicting, or
                the object never showed the version uploaded after the last answer was lost
                (``STORAGE_UNAVAILABLE``, retryable).
            ValueError: The server answered something unusable.
        """
        target = f"{bucket}/{path}"
        metadata = {
            "bucketName": bucket,
            "objectName": path,
            "contentType": content_type,
            "cacheControl": cache_control,
        }
        for restart in range(self.restarts + 1):
            location = self._create(metadata, len(data), target)
            try:
                if not self._send(location, data, target):
                    self._confirm_written(location, bucket, path, target)
                return
            except _UploadGone as gone:
                logger.warning("The resumable upload of %s is gone (%s).", target, gone)
                if restart == self.restarts:
                    raise StorageError(
                        f"Storage upload of {target} failed: the resumable upload was gone "
                        f"{restart + 1} times ({gone})",
                        code=ErrorCode.STORAGE_UNAVAILABLE,
                        retryable=True,
                    ) from gone
        raise AssertionError("unreachable")  # pragma: no cover

    # Requests

    def _request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        sent = {
            **self._headers,
            "Tus-Resumable": TUS_VERSION,
            "x-upsert": "true",
            **(headers or {}),
        }
        return self._http.request(method, url, headers=sent, content=content)

    def _create(self, metadata: dict[str, str], total: int, target: str) -> str:
        """A new upload's absolute URL; transient failures are tried again."""
        headers = {"Upload-Length": str(total), "Upload-Metadata": upload_metadata(metadata)}
        failures = 0
        while True:
            try:
                response = self._request("POST", self.endpoint, headers)
                if response.status_code != 201:
                    raise refusal(response)
                location = response.headers.get("Location")
                if not location:
                    raise ValueError("the server created an upload without a Location")
                logger.debug("Created a resumable upload of %s (%d bytes).", target, total)
                return str(httpx.URL(self.endpoint).join(location))
            except _RETRIED as exc:
                failures += 1
                self._back_off(failures, exc, f"Creating the resumable upload of {target}")

    def _send(self, location: str, data: bytes, target: str) -> bool:
        """PATCH every chunk at the server's offset; after any failure ask for it (HEAD).

        Returns whether the last PATCH was answered: False when a HEAD found every byte on
        the server after the answer was lost.
        """
        total = len(data)
        offset: int | None = 0
        reached = 0
        failures = 0
        while True:
            try:
                if offset is None:
                    offset = self._server_offset(location, total)
                    logger.info("The upload of %s resumes at byte %d of %d.", target, offset, total)
                if offset > reached:
                    reached, failures = offset, 0
                if offset == total:
                    return False
                offset = self._patch(location, data, offset)
                if offset == total:
                    return True
            except _RETRIED as exc:
                offset = None
                failures += 1
                self._back_off(failures, exc, f"The resumable upload of {target}")

    def _patch(self, location: str, data: bytes, offset: int) -> int:
        chunk = data[offset : offset + self.chunk_size]
        headers = {"Upload-Offset": str(offset), "Content-Type": OFFSET_CONTENT_TYPE}
        response = self._request("PATCH", location, headers, chunk)
        if response.status_code != 204:
            raise self._upload_url_failure(response)
        new_offset = _offset_header(response, len(data))
        if not offset < new_offset <= offset + len(chunk):
            raise ValueError(
                f"the server answered Upload-Offset {new_offset} after {len(chunk)} bytes "
                f"sent at {offset}"
            )
        logger.debug("Sent bytes %d to %d of %d.", offset, new_offset, len(data))
        return new_offset

    def _confirm_written(self, location: str, bucket: str, path: str, target: str) -> None:
        """Read the object's info until it shows the version this upload wrote."""
        version = upload_version(location)
        if version is None:
            logger.warning(
                "The server holds every byte of %s; its upload URL names no version to check.",
                target,
            )
            return
        info_url = f"{self.storage_url}object/info/{bucket}/{path}"
        failures = 0
        while True:
            try:
                found = _info_version(self._http.get(info_url, headers=self._headers))
                if found == version:
                    logger.info("Confirmed that %s holds the version just uploaded.", target)
                    return
                raise _NotWrittenYet(
                    f"every byte arrived but the object shows version {found}, not {version}"
                )
            except _RETRIED as exc:
                failures += 1
                self._back_off(failures, exc, f"Confirming the upload of {target}")

    def _server_offset(self, location: str, total: int) -> int:
        response = self._request("HEAD", location)
        if response.status_code != 200:
            raise self._upload_url_failure(response)
        return _offset_header(response, total)

    # Failures

    @staticmethod
    def _upload_url_failure(response: httpx.Response) -> Exception:
        """What a failed answer from the upload URL means: gone, an offset conflict, or a
        storage answer (transient or a refusal)."""
        if response.status_code in (404, 410):
            return _UploadGone(f"HTTP {response.status_code}")
        if response.status_code == 409:
            return _OffsetConflict(response.text.strip() or "HTTP 409")
        return refusal(response)

    def _back_off(self, failures: int, exc: Exception, doing: str) -> None:
        """Wait before the next try, or give up: at once on a refusal, else after the tries."""
        if not _worth_retrying(exc):
            raise exc
        if failures >= self.chunk_tries:
            logger.warning("%s failed %d times in a row; giving up (%s).", doing, failures, exc)
            if isinstance(exc, _OffsetConflict | _NotWrittenYet):
                raise StorageError(
                    f"{doing} failed: {exc}",
                    code=ErrorCode.STORAGE_UNAVAILABLE,
                    retryable=True,
                ) from exc
            raise exc
        delay = min(self.backoff_cap_seconds, self.backoff_base_seconds * 2 ** (failures - 1))
        logger.info(
            "%s failed on try %d (%s: %s); trying again in %.1f s.",
            doing,
            failures,
            type(exc).__name__,
            exc,
            delay,
        )
        self._sleep(delay)
