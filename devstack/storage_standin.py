"""A local Supabase Storage stand-in over real HTTP on loopback.

It answers the way the open-source Storage API server (v1.70.6) does, as the project's storage
notes record it: routes at the root and under ``/storage/v1/``; every storage error as HTTP 400
with the real status code as a string in the body (server faults 500); service-role JWTs bypass
row-level security, other roles only reach objects whose first folder is their ``sub``, hidden
objects read as missing, and a non-UUID ``sub`` fails like the ``auth.uid()`` cast does.

Tests and local development drive it with the official ``storage3`` client. Helpers seed and age
objects, inject faults (an error status, a hang, a dropped connection, a slow answer) and record
every request.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import jwt

logger = logging.getLogger(__name__)

__all__ = [
    "CONTRACT_BUCKETS",
    "DEV_JWT_SECRET",
    "DEV_PORT",
    "BucketSpec",
    "LoggedRequest",
    "StandInBucket",
    "StandInObject",
    "StorageApiFault",
    "StorageStandIn",
    "make_jwt",
    "serve_standin",
]

STORAGE_PREFIX = "/storage/v1"
DEV_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
DEV_PORT = 54329
SERVICE_ROLE = "service_role"

FaultKind = Literal["status", "hang", "drop", "drop_after", "slow"]
FAULT_KINDS: tuple[str, ...] = ("status", "hang", "drop", "drop_after", "slow")

# Object keys the real server accepts (``mustBeValidKey``); bucket names are the same without "/".
_KEY_PATTERN = re.compile(r"^(\w|/|!|-|\.|\*|'|\(|\)| |&|\$|@|=|;|:|\+|,|\?)*$", re.ASCII)
_BUCKET_PATTERN = re.compile(r"^(\w|!|-|\.|\*|'|\(|\)| |&|\$|@|=|;|:|\+|,|\?)+$", re.ASCII)
_SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
_SORT_COLUMNS = ("name", "updated_at", "created_at", "last_accessed_at")


# --- Buckets the contract names --------------------------------------------------------------


@dataclass(frozen=True)
class BucketSpec:
    """How a bucket is created: visibility, per-object size limit and MIME allow-list."""

    public: bool = False
    file_size_limit: int | None = None
    allowed_mime_types: tuple[str, ...] | None = None


_LEGACY_IMAGE_MIME = ("image/png", "image/jpeg", "image/webp")
_LEGACY_VIDEO_MIME = ("video/mp4", "video/mpeg", "video/webm", "video/quicktime")

CONTRACT_BUCKETS: dict[str, BucketSpec] = {
    "workspace-temp": BucketSpec(
        file_size_limit=1073741824,
        allowed_mime_types=(
            "image/jpeg",
            "image/png",
            "image/webp",
            "video/mp4",
            "video/webm",
            "video/quicktime",
        ),
    ),
    "user-library": BucketSpec(file_size_limit=209715200),
    "sdxl_image_fast": BucketSpec(file_size_limit=5242880, allowed_mime_types=_LEGACY_IMAGE_MIME),
    "image_fast": BucketSpec(file_size_limit=5242880, allowed_mime_types=_LEGACY_IMAGE_MIME),
    "sdxl_image_high": BucketSpec(file_size_limit=10485760, allowed_mime_types=_LEGACY_IMAGE_MIME),
    "image_high": BucketSpec(file_size_limit=10485760, allowed_mime_types=_LEGACY_IMAGE_MIME),
    "image7b_fast_enhanced": BucketSpec(
        file_size_limit=20971520, allowed_mime_types=_LEGACY_IMAGE_MIME
    ),
    "image7b_high_enhanced": BucketSpec(
        file_size_limit=20971520, allowed_mime_types=_LEGACY_IMAGE_MIME
    ),
    "video_fast": BucketSpec(file_size_limit=52428800, allowed_mime_types=_LEGACY_VIDEO_MIME),
    "video_high": BucketSpec(file_size_limit=209715200, allowed_mime_types=_LEGACY_VIDEO_MIME),
    "video7b_fast_enhanced": BucketSpec(
        file_size_limit=104857600, allowed_mime_types=("video/mp4", "video/webm")
    ),
    "video7b_high_enhanced": BucketSpec(
        file_size_limit=104857600, allowed_mime_types=("video/mp4", "video/webm")
    ),
    "videos": BucketSpec(public=True, allowed_mime_types=_LEGACY_VIDEO_MIME),
}


def make_jwt(
    secret: str,
    role: str = SERVICE_ROLE,
    sub: str | None = None,
    exp_seconds: int = 3600,
    **claims: Any,
) -> str:
    """An HS256 JWT like the ones Supabase issues (``role``, optional ``sub``, ``iat``, ``exp``).

    A negative ``exp_seconds`` gives an already expired token.
    """
    now = int(time.time())
    payload: dict[str, Any] = {"iss": "supabase-standin", "role": role, "iat": now}
    payload["exp"] = now + exp_seconds
    if sub is not None:
        payload["sub"] = sub
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


# --- Error bodies -----------------------------------------------------------------------------


class StorageApiFault(Exception):
    """A storage error answered as the real server does: HTTP 400 (500 for faults), JSON body."""

    def __init__(self, status: str, error: str, message: str, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.code = code

    @property
    def http_status(self) -> int:
        return 500 if self.status.startswith("5") else 400

    def body(self) -> dict[str, str]:
        body = {"statusCode": self.status, "error": self.error, "message": self.message}
        if self.code is not None:
            body["code"] = self.code
        return body


def _no_such_bucket() -> StorageApiFault:
    return StorageApiFault("404", "Bucket not found", "Bucket not found", "NoSuchBucket")


def _no_such_key() -> StorageApiFault:
    return StorageApiFault("404", "not_found", "Object not found", "NoSuchKey")


def _key_exists() -> StorageApiFault:
    return StorageApiFault("409", "Duplicate", "The resource already exists", "KeyAlreadyExists")


def _bucket_exists() -> StorageApiFault:
    return StorageApiFault("409", "Duplicate", "The resource already exists", "BucketAlreadyExists")


def _bucket_not_empty() -> StorageApiFault:
    return StorageApiFault(
        "409",
        "ResourceNotEmpty",
        "The bucket you tried to delete is not empty",
        "ResourceNotEmpty",
    )


def _invalid_mime_type(mime_type: str) -> StorageApiFault:
    return StorageApiFault(
        "415", "invalid_mime_type", f"mime type {mime_type} is not supported", "InvalidMimeType"
    )


def _too_large() -> StorageApiFault:
    return StorageApiFault(
        "413",
        "Payload too large",
        "The object exceeded the maximum allowed size",
        "EntityTooLarge",
    )


def _missing_authorization() -> StorageApiFault:
    return _invalid_request("headers must have required property 'authorization'")


def _invalid_request(message: str) -> StorageApiFault:
    return StorageApiFault("400", "Error", message, "InvalidRequest")


def _access_denied(message: str) -> StorageApiFault:
    return StorageApiFault("403", "Unauthorized", message, "AccessDenied")


def _rls_refused() -> StorageApiFault:
    return _access_denied("new row violates row-level security policy")


def _invalid_uuid(value: str) -> StorageApiFault:
    return StorageApiFault(
        "400",
        "InvalidParameter",
        f'invalid input syntax for type uuid: "{value}"',
        "InvalidParameter",
    )


def _invalid_key(key: str) -> StorageApiFault:
    return StorageApiFault("400", "InvalidKey", f"Invalid key: {key}", "InvalidKey")


def _invalid_bucket_name() -> StorageApiFault:
    return StorageApiFault("400", "Invalid Input", "Bucket name invalid", "InvalidBucketName")


def _invalid_jwt(message: str) -> StorageApiFault:
    return StorageApiFault("400", "InvalidJWT", message, "InvalidJWT")


def _internal_error() -> StorageApiFault:
    return StorageApiFault("500", "internal", "Internal Server Error", "InternalError")


# --- State ------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class StandInBucket:
    """A bucket row."""

    id: str
    name: str
    public: bool = False
    file_size_limit: int | None = None
    allowed_mime_types: tuple[str, ...] | None = None
    owner: str | None = None
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "owner": self.owner or "",
            "public": self.public,
            "type": "STANDARD",
            "file_size_limit": self.file_size_limit,
            "allowed_mime_types": list(self.allowed_mime_types)
            if self.allowed_mime_types is not None
            else None,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


@dataclass(frozen=True)
class StandInObject:
    """An object row and its bytes."""

    bucket_id: str
    name: str
    data: bytes
    content_type: str
    cache_control: str
    id: str
    etag: str
    created_at: datetime
    updated_at: datetime
    last_accessed_at: datetime
    owner: str | None = None
    user_metadata: dict[str, Any] | None = None
    version: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def size(self) -> int:
        return len(self.data)

    def metadata(self) -> dict[str, Any]:
        return {
            "eTag": self.etag,
            "size": self.size,
            "mimetype": self.content_type,
            "cacheControl": self.cache_control,
            "lastModified": _iso(self.updated_at),
            "contentLength": self.size,
            "httpStatusCode": 200,
        }

    def row(self) -> dict[str, Any]:
        return {
            "bucket_id": self.bucket_id,
            "name": self.name,
            # The server stores a key without ``sub`` (the service role) as owner ''.
            "owner": self.owner or "",
            "owner_id": self.owner or "",
            "id": self.id,
            "version": self.version,
            "updated_at": _iso(self.updated_at),
            "created_at": _iso(self.created_at),
            "last_accessed_at": _iso(self.last_accessed_at),
            "metadata": self.metadata(),
            "user_metadata": self.user_metadata or {},
        }


def _new_object(
    bucket_id: str,
    name: str,
    data: bytes,
    content_type: str,
    cache_control: str,
    *,
    owner: str | None = None,
    user_metadata: dict[str, Any] | None = None,
    previous: StandInObject | None = None,
) -> StandInObject:
    """A fresh row; an overwrite keeps the previous id and created_at as an upsert does."""
    now = _now()
    return StandInObject(
        bucket_id=bucket_id,
        name=name,
        data=data,
        content_type=content_type,
        cache_control=cache_control,
        id=previous.id if previous else str(uuid.uuid4()),
        etag=f'"{hashlib.md5(data).hexdigest()}"',
        created_at=previous.created_at if previous else now,
        updated_at=now,
        last_accessed_at=now,
        owner=owner,
        user_metadata=user_metadata,
    )


@dataclass(frozen=True)
class LoggedRequest:
    """One request: method, route path (without ``/storage/v1``), HTTP status sent (0: none).

    ``fault`` names the injected fault that answered it, if any; ``raw_path`` is the path as sent.
    """

    method: str
    path: str
    status: int
    fault: str | None = None
    raw_path: str = ""


@dataclass
class _FaultRule:
    kind: str
    remaining: int
    method: str | None
    path_prefix: str | None
    status: int
    hang_seconds: float

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)


@dataclass(frozen=True)
class _Principal:
    role: str
    sub: str | None

    @property
    def bypasses_rls(self) -> bool:
        return self.role == SERVICE_ROLE


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            value = json.loads(self.body)
        except ValueError as exc:
            raise _invalid_request("Body is not valid JSON") from exc
        if not isinstance(value, dict):
            raise _invalid_request("body must be object")
        return value


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    head_only: bool = False


def _json_response(value: Any, status: int = 200) -> _Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return _Response(status, body, {"Content-Type": "application/json"})


@dataclass(frozen=True)
class _Part:
    name: str | None
    filename: str | None
    content_type: str | None
    content: bytes


def _header_params(value: str) -> dict[str, str]:
    return {
        key.lower(): quoted if quoted or not bare else bare
        for key, quoted, bare in re.findall(r';\s*([\w-]+)=(?:"([^"]*)"|([^;\s]*))', ";" + value)
    }


def _parse_multipart(body: bytes, content_type: str) -> list[_Part]:
    """Split a ``multipart/form-data`` body into parts, byte for byte."""
    boundary = _header_params(content_type).get("boundary")
    if not boundary:
        raise _invalid_request("multipart body without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    parts: list[_Part] = []
    for section in body.split(delimiter)[1:]:
        if section.startswith(b"--"):
            break
        if section.startswith(b"\r\n"):
            section = section[2:]
        head, separator, content = section.partition(b"\r\n\r\n")
        if not separator:
            raise _invalid_request("malformed multipart part")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        disposition = _header_params(headers.get("content-disposition", ""))
        parts.append(
            _Part(
                name=disposition.get("name"),
                filename=disposition.get("filename"),
                content_type=headers.get("content-type"),
                content=content,
            )
        )
    return parts


def _parse_size(value: Any) -> int | None:
    """A bucket ``file_size_limit``: bytes as a number, or a string such as ``20MB``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _invalid_request("Invalid file size format, hint: use 20GB / 20MB / 30KB / 3B")
    if isinstance(value, int | float):
        return int(value)
    match = _SIZE_PATTERN.match(str(value))
    if not match:
        raise _invalid_request("Invalid file size format, hint: use 20GB / 20MB / 30KB / 3B")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "b").lower()])


def _mime_allowed(allowed: tuple[str, ...] | None, content_type: str) -> bool:
    if not allowed:
        return True
    base = content_type.split(";")[0].strip().lower()
    for pattern in allowed:
        wanted = pattern.strip().lower()
        if wanted in (base, "*/*"):
            return True
        if wanted.endswith("/*") and base.startswith(wanted[:-1]):
            return True
    return False


def _like(pattern: str) -> re.Pattern[str]:
    """``lower(name) LIKE lower(pattern) || '%'`` as a regular expression."""
    parts = []
    for char in pattern.lower():
        parts.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return re.compile("".join(parts) + ".*", re.DOTALL)


def _check_key(name: str) -> None:
    if not name or not _KEY_PATTERN.match(name):
        raise _invalid_key(name)


# --- The stand-in -----------------------------------------------------------------------------


class StorageStandIn:
    """An in-memory Supabase Storage server on loopback, for tests and local development.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. ``url`` serves the
    routes at the root and under ``/storage/v1/``.

    Args:
        jwt_secret: The HS256 secret every request's bearer JWT must be signed with.
        host: Address to bind.
        port: Port to bind; 0 picks a free one.
        max_file_size: Global per-object limit in bytes on top of the bucket limits.
        users_can_write: Whether the folder policy also grants INSERT and UPDATE to users. The
            project's migrations grant users SELECT only, so by default a user's upload, copy or
            move is refused with "new row violates row-level security policy".
        users_can_delete: Whether the folder policy also grants DELETE to users; without a
            DELETE policy a user's remove answers ``[]`` and deletes nothing.
        hang_seconds: How long a ``hang`` fault holds a request before dropping it.
    """

    def __init__(
        self,
        jwt_secret: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_file_size: int | None = None,
        users_can_write: bool = False,
        users_can_delete: bool = False,
        hang_seconds: float = 30.0,
    ):
        self.jwt_secret = jwt_secret
        self.host = host
        self.port = port
        self.max_file_size = max_file_size
        self.users_can_write = users_can_write
        self.users_can_delete = users_can_delete
        self.hang_seconds = hang_seconds
        self._lock = threading.RLock()
        self._buckets: dict[str, StandInBucket] = {}
        self._objects: dict[str, dict[str, StandInObject]] = {}
        self._faults: list[_FaultRule] = []
        self._fault_rate = 0.0
        self._fault_rate_rule: _FaultRule | None = None
        self._fault_random = random.Random()
        self._log: list[LoggedRequest] = []
        self._server: _StandInServer | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()

    # Lifecycle

    def start(self) -> StorageStandIn:
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        server = _StandInServer((self.host, self.port), _Handler, self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="storage-standin",
            daemon=True,
        )
        self._thread.start()
        logger.info("Storage stand-in listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, release hanging requests and close every open connection."""
        server = self._server
        if server is None:
            return
        self.release_hangs()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
        logger.info("Storage stand-in stopped")

    def __enter__(self) -> StorageStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server (routes at the root)."""
        if self._server is None:
            raise RuntimeError("The storage stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def storage_url(self) -> str:
        """``{url}/storage/v1``, where a Supabase project exposes the same routes."""
        return self.url + STORAGE_PREFIX

    def token(
        self, role: str = SERVICE_ROLE, sub: str | None = None, exp_seconds: int = 3600
    ) -> str:
        """A JWT signed with this stand-in's secret."""
        return make_jwt(self.jwt_secret, role=role, sub=sub, exp_seconds=exp_seconds)

    # Seeding and inspection

    def create_bucket(
        self,
        bucket_id: str,
        *,
        public: bool = False,
        file_size_limit: int | None = None,
        allowed_mime_types: Iterable[str] | None = None,
    ) -> StandInBucket:
        """Create (or replace the settings of) a bucket directly."""
        bucket = StandInBucket(
            id=bucket_id,
            name=bucket_id,
            public=public,
            file_size_limit=file_size_limit,
            allowed_mime_types=tuple(allowed_mime_types)
            if allowed_mime_types is not None
            else None,
        )
        with self._lock:
            self._buckets[bucket_id] = bucket
            self._objects.setdefault(bucket_id, {})
        return bucket

    def create_contract_buckets(self, names: Iterable[str] | None = None) -> None:
        """Create the contract's buckets (all of :data:`CONTRACT_BUCKETS` by default)."""
        for name in names if names is not None else CONTRACT_BUCKETS:
            spec = CONTRACT_BUCKETS[name]
            self.create_bucket(
                name,
                public=spec.public,
                file_size_limit=spec.file_size_limit,
                allowed_mime_types=spec.allowed_mime_types,
            )

    def put_object(
        self,
        bucket: str,
        path: str,
        data: bytes,
        content_type: str,
        *,
        cache_control: str = "max-age=3600",
        created_at: datetime | None = None,
    ) -> StandInObject:
        """Seed an object directly, bypassing auth and bucket limits. The bucket must exist."""
        with self._lock:
            if bucket not in self._buckets:
                raise KeyError(f"No bucket {bucket!r} in the storage stand-in")
            obj = _new_object(bucket, path, data, content_type, cache_control)
            if created_at is not None:
                moment = _aware(created_at)
                obj = replace(obj, created_at=moment, updated_at=moment, last_accessed_at=moment)
            self._objects[bucket][path] = obj
            return obj

    def get_object(self, bucket: str, path: str) -> StandInObject | None:
        """The stored object, or None."""
        with self._lock:
            return self._objects.get(bucket, {}).get(path)

    def object_names(self, bucket: str) -> list[str]:
        """Every object name in a bucket, sorted."""
        with self._lock:
            return sorted(self._objects.get(bucket, {}))

    def bucket(self, bucket_id: str) -> StandInBucket | None:
        """The bucket row, or None."""
        with self._lock:
            return self._buckets.get(bucket_id)

    def bucket_ids(self) -> list[str]:
        """Every bucket id, sorted."""
        with self._lock:
            return sorted(self._buckets)

    def set_created_at(
        self, bucket: str, path: str, when: datetime, *, updated_at: datetime | None = None
    ) -> None:
        """Age an object: set ``created_at`` (and ``updated_at``, by default to the same moment)."""
        with self._lock:
            obj = self._objects[bucket][path]
            moment = _aware(when)
            changed = _aware(updated_at) if updated_at is not None else moment
            self._objects[bucket][path] = replace(obj, created_at=moment, updated_at=changed)

    def reset(self) -> None:
        """Forget every bucket, object, fault and logged request; let hanging requests go."""
        with self._lock:
            self._buckets.clear()
            self._objects.clear()
            self._log.clear()
        self.clear_faults()
        self.release_hangs()

    # Faults and the request log

    def inject_fault(
        self,
        kind: FaultKind = "status",
        *,
        count: int = 1,
        method: str | None = None,
        path_prefix: str | None = None,
        status: int = 503,
        hang_seconds: float | None = None,
    ) -> None:
        """Make the next ``count`` matching requests fail.

        Args:
            kind: ``status`` answers ``status`` without doing anything; ``hang`` holds the request
                for ``hang_seconds`` (or until stop) and then drops the connection; ``drop``
                closes the connection without an answer; ``drop_after`` does the work, then
                closes the connection without an answer (the answer is lost); ``slow`` waits
                ``hang_seconds`` (or until stop), then does the work and answers as usual.
            count: How many matching requests this applies to.
            method: Only requests with this method match.
            path_prefix: Only route paths (without ``/storage/v1``) starting with this match,
                e.g. ``/object/workspace-temp/``.
            status: The HTTP status of a ``status`` fault.
            hang_seconds: Overrides the stand-in's ``hang_seconds`` for a ``hang`` or ``slow``
                fault.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"Unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        rule = _FaultRule(
            kind=kind,
            remaining=count,
            method=method.upper() if method else None,
            path_prefix=path_prefix,
            status=status,
            hang_seconds=self.hang_seconds if hang_seconds is None else hang_seconds,
        )
        with self._lock:
            self._faults.append(rule)

    def set_fault_rate(
        self,
        rate: float,
        *,
        seed: int | None = None,
        kind: FaultKind = "status",
        method: str | None = None,
        path_prefix: str | None = None,
        status: int = 503,
        hang_seconds: float | None = None,
    ) -> None:
        """Fail a random share ``rate`` of matching requests, reproducibly with ``seed``."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"Fault rate must be within [0, 1], got {rate}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"Unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        with self._lock:
            self._fault_rate = rate
            self._fault_random = random.Random(seed)
            self._fault_rate_rule = _FaultRule(
                kind=kind,
                remaining=-1,
                method=method.upper() if method else None,
                path_prefix=path_prefix,
                status=status,
                hang_seconds=self.hang_seconds if hang_seconds is None else hang_seconds,
            )

    def clear_faults(self) -> None:
        """Drop every pending fault and the random fault rate."""
        with self._lock:
            self._faults.clear()
            self._fault_rate = 0.0
            self._fault_rate_rule = None

    @property
    def pending_faults(self) -> int:
        """How many injected (counted) faults are still to fire."""
        with self._lock:
            return sum(rule.remaining for rule in self._faults)

    @property
    def requests(self) -> list[LoggedRequest]:
        """Every request so far, in order of completion."""
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def _next_fault(self, method: str, path: str) -> _FaultRule | None:
        with self._lock:
            for rule in self._faults:
                if rule.remaining > 0 and rule.matches(method, path):
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        self._faults.remove(rule)
                    return rule
            rate_rule = self._fault_rate_rule
            if (
                rate_rule is not None
                and rate_rule.matches(method, path)
                and self._fault_random.random() < self._fault_rate
            ):
                return rate_rule
        return None

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    def release_hangs(self) -> None:
        """Let every request held by a ``hang`` fault (to be dropped) or a ``slow`` one (to be
        answered) go on now."""
        with self._lock:
            released, self._release = self._release, threading.Event()
        released.set()

    def _wait_for_release(self, seconds: float) -> None:
        with self._lock:
            release = self._release
        release.wait(seconds)

    # Request handling

    def _answer(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> _Response:
        """Answer one request (no faults): route, authenticate, act, render the answer."""
        request = self._request(method, raw_path, headers, body)
        try:
            return self._route(request)
        except StorageApiFault as refusal:
            return _json_response(refusal.body(), refusal.http_status)
        except Exception:
            logger.exception("Storage stand-in failed on %s %s", method, request.path)
            internal = _internal_error()
            return _json_response(internal.body(), internal.http_status)

    @staticmethod
    def route_path(raw_path: str) -> str:
        """The decoded path without query and without the ``/storage/v1`` prefix."""
        path = unquote(urlsplit(raw_path).path)
        if path == STORAGE_PREFIX or path.startswith(STORAGE_PREFIX + "/"):
            path = path[len(STORAGE_PREFIX) :] or "/"
        return path

    def _request(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> _Request:
        return _Request(
            method=method,
            path=self.route_path(raw_path),
            query=parse_qs(urlsplit(raw_path).query),
            headers={name.lower(): value for name, value in headers.items()},
            body=body,
        )

    def _route(self, request: _Request) -> _Response:
        for methods, pattern, handler, needs_auth in _ROUTES:
            if request.method not in methods:
                continue
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if not needs_auth:
                return handler(self, request, None, **match.groupdict())
            try:
                principal = self._authenticate(request)
            except StorageApiFault:
                if handler not in _PUBLIC_FALLBACK or "/authenticated/" in request.path:
                    raise
                # These routes read a public bucket without a usable key; a private bucket
                # then reads as missing, whatever was wrong with the key.
                if not self._existing_bucket(match["bucket"]).public:
                    raise _no_such_bucket() from None
                return handler(self, request, None, **match.groupdict())
            return handler(self, request, principal, **match.groupdict())
        message = f"Route {request.method}:{request.path} not found"
        return _json_response({"statusCode": 404, "error": "Not Found", "message": message}, 404)

    def _authenticate(self, request: _Request) -> _Principal:
        header = request.headers.get("authorization")
        if not header:
            raise _missing_authorization()
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _access_denied("invalid authorization header")
        try:
            claims = jwt.decode(
                token.strip(),
                self.jwt_secret,
                algorithms=["HS256"],
                options={"verify_aud": False, "verify_iat": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _access_denied('"exp" claim timestamp check failed') from exc
        except jwt.InvalidSignatureError as exc:
            raise _access_denied("signature verification failed") from exc
        except jwt.PyJWTError as exc:
            raise _access_denied("Invalid Compact JWS") from exc
        sub = claims.get("sub")
        return _Principal(
            role=str(claims.get("role", "anon")), sub=None if sub is None else str(sub)
        )

    def _uid(self, principal: _Principal) -> str | None:
        """``auth.uid()::text``: the canonical UUID of ``sub``; a non-UUID fails the cast."""
        if principal.sub is None:
            return None
        try:
            return str(uuid.UUID(principal.sub))
        except ValueError as exc:
            raise _invalid_uuid(principal.sub) from exc

    def _policy_allows(self, principal: _Principal | None, name: str) -> bool:
        """The folder policy: ``(storage.foldername(name))[1] = auth.uid()::text``."""
        if principal is None or principal.bypasses_rls:
            return True
        uid = self._uid(principal)
        folders = name.split("/")[:-1]
        return uid is not None and bool(folders) and folders[0] == uid

    def _existing_bucket(self, bucket_id: str) -> StandInBucket:
        with self._lock:
            bucket = self._buckets.get(bucket_id)
        if bucket is None:
            raise _no_such_bucket()
        return bucket

    def _visible_object(
        self, principal: _Principal | None, bucket_id: str, name: str
    ) -> StandInObject:
        with self._lock:
            obj = self._objects.get(bucket_id, {}).get(name)
        if obj is None or not self._policy_allows(principal, name):
            raise _no_such_key()
        return obj

    def _effective_limit(self, bucket: StandInBucket) -> int | None:
        limits = [lim for lim in (bucket.file_size_limit, self.max_file_size) if lim is not None]
        return min(limits) if limits else None

    # Buckets

    def _list_buckets(self, request: _Request, principal: _Principal) -> _Response:
        if not principal.bypasses_rls:
            return _json_response([])
        with self._lock:
            rows = [self._buckets[key].row() for key in sorted(self._buckets)]
        return _json_response(rows)

    def _get_bucket(self, request: _Request, principal: _Principal, bucket: str) -> _Response:
        if not principal.bypasses_rls:
            raise _no_such_bucket()
        return _json_response(self._existing_bucket(bucket).row())

    def _create_bucket(self, request: _Request, principal: _Principal) -> _Response:
        body = request.json()
        bucket_id = body.get("id") or body.get("name")
        if not isinstance(bucket_id, str):
            raise _invalid_request("body must have required property 'name'")
        if not _BUCKET_PATTERN.match(bucket_id):
            raise _invalid_bucket_name()
        if not principal.bypasses_rls:
            raise _rls_refused()
        limit = _parse_size(body.get("file_size_limit"))
        mime_types = body.get("allowed_mime_types")
        with self._lock:
            if bucket_id in self._buckets:
                raise _bucket_exists()
            self._buckets[bucket_id] = StandInBucket(
                id=bucket_id,
                name=str(body.get("name") or bucket_id),
                public=bool(body.get("public", False)),
                file_size_limit=limit,
                allowed_mime_types=tuple(mime_types) if mime_types else None,
                owner=principal.sub,
            )
            self._objects.setdefault(bucket_id, {})
        return _json_response({"name": bucket_id})

    def _update_bucket(self, request: _Request, principal: _Principal, bucket: str) -> _Response:
        if not principal.bypasses_rls:
            raise _no_such_bucket()
        body = request.json()
        current = self._existing_bucket(bucket)
        changes: dict[str, Any] = {"updated_at": _now()}
        if "public" in body:
            changes["public"] = bool(body["public"])
        if "file_size_limit" in body:
            changes["file_size_limit"] = _parse_size(body["file_size_limit"])
        if "allowed_mime_types" in body:
            mime_types = body["allowed_mime_types"]
            changes["allowed_mime_types"] = tuple(mime_types) if mime_types else None
        with self._lock:
            self._buckets[bucket] = replace(current, **changes)
        return _json_response({"message": "Successfully updated"})

    def _empty_bucket(self, request: _Request, principal: _Principal, bucket: str) -> _Response:
        if not principal.bypasses_rls:
            raise _no_such_bucket()
        self._existing_bucket(bucket)
        with self._lock:
            self._objects[bucket] = {}
        return _json_response({"message": "Successfully emptied"})

    def _delete_bucket(self, request: _Request, principal: _Principal, bucket: str) -> _Response:
        if not principal.bypasses_rls:
            raise _no_such_bucket()
        self._existing_bucket(bucket)
        with self._lock:
            if self._objects.get(bucket):
                raise _bucket_not_empty()
            del self._buckets[bucket]
            self._objects.pop(bucket, None)
        return _json_response({"message": "Successfully deleted"})

    # Objects

    def _read_upload(self, request: _Request) -> tuple[bytes, str, str, dict[str, Any] | None]:
        """Bytes, MIME type, cache control and user metadata of a multipart or raw upload."""
        request_type = request.headers.get("content-type", "")
        if request_type.lower().startswith("multipart/form-data"):
            parts = _parse_multipart(request.body, request_type)
            fields = {part.name: part for part in parts if part.filename is None}
            files = [part for part in parts if part.filename is not None or part.name == "file"]
            if not files:
                raise _invalid_request("No content provided")
            file_part = files[0]
            cache = fields["cacheControl"].content.decode() if "cacheControl" in fields else ""
            metadata = None
            if "metadata" in fields:
                try:
                    metadata = json.loads(fields["metadata"].content)
                except ValueError as exc:
                    raise _invalid_request("metadata is not valid JSON") from exc
            # The server's multipart parser keeps a part's type without its parameters.
            part_type = (file_part.content_type or "text/plain").split(";", 1)[0].strip()
            return file_part.content, part_type, cache, metadata
        cache = request.headers.get("cache-control", "")
        return request.body, request_type or "application/octet-stream", cache, None

    @staticmethod
    def _cache_control(value: str) -> str:
        value = value.strip()
        if not value:
            return "no-cache"
        return f"max-age={value}" if value.isdigit() else value

    def _upload(
        self, request: _Request, principal: _Principal, bucket: str, name: str
    ) -> _Response:
        _check_key(name)
        upsert = request.method == "PUT" or request.headers.get("x-upsert", "") == "true"
        target = self._existing_bucket(bucket)
        data, content_type, cache, metadata = self._read_upload(request)
        if not _mime_allowed(target.allowed_mime_types, content_type):
            raise _invalid_mime_type(content_type)
        if not self._may_write(principal, name):
            raise _rls_refused()
        limit = self._effective_limit(target)
        with self._lock:
            previous = self._objects.setdefault(bucket, {}).get(name)
            if previous is not None and not upsert:
                raise _key_exists()
            if limit is not None and len(data) > limit:
                raise _too_large()
            obj = _new_object(
                bucket,
                name,
                data,
                content_type,
                self._cache_control(cache),
                owner=principal.sub,
                user_metadata=metadata,
                previous=previous,
            )
            self._objects[bucket][name] = obj
        return _json_response({"Key": f"{bucket}/{name}", "Id": obj.id})

    def _object_response(self, obj: StandInObject, *, head_only: bool) -> _Response:
        headers = {
            "Content-Type": obj.content_type,
            "ETag": obj.etag,
            "Cache-Control": obj.cache_control,
            "Last-Modified": format_datetime(obj.updated_at.astimezone(UTC), usegmt=True),
        }
        return _Response(200, obj.data, headers, head_only=head_only)

    def _download(
        self, request: _Request, principal: _Principal, bucket: str, name: str
    ) -> _Response:
        self._existing_bucket(bucket)
        obj = self._visible_object(principal, bucket, name)
        return self._object_response(obj, head_only=request.method == "HEAD")

    def _download_public(
        self, request: _Request, principal: None, bucket: str, name: str
    ) -> _Response:
        target = self._existing_bucket(bucket)
        if not target.public:
            raise _no_such_bucket()
        obj = self._visible_object(None, bucket, name)
        return self._object_response(obj, head_only=request.method == "HEAD")

    def _info(self, request: _Request, principal: _Principal, bucket: str, name: str) -> _Response:
        self._existing_bucket(bucket)
        obj = self._visible_object(principal, bucket, name)
        return _json_response(
            {
                "id": obj.id,
                "name": obj.name,
                "version": obj.version,
                "bucket_id": obj.bucket_id,
                "size": obj.size,
                "content_type": obj.content_type,
                "cache_control": obj.cache_control,
                "etag": obj.etag,
                "metadata": obj.user_metadata,
                "last_modified": _iso(obj.updated_at),
                "created_at": _iso(obj.created_at),
            }
        )

    def _list(self, request: _Request, principal: _Principal, bucket: str) -> _Response:
        """``storage.search``: the folders (``id`` null) and files at the prefix's level. Sorted by
        name, folders and files interleave as the server sorts them; by a time column, the
        folders (whose times are null) come first."""
        body = request.json()
        prefix = body.get("prefix")
        if not isinstance(prefix, str):
            raise _invalid_request("body must have required property 'prefix'")
        try:
            limit = int(body.get("limit", 100))
            offset = int(body.get("offset", 0))
        except (TypeError, ValueError) as exc:
            raise _invalid_request("body/limit and body/offset must be integer") from exc
        if limit < 1 or offset < 0:
            raise _invalid_request("body/limit must be >= 1 and body/offset must be >= 0")
        sort_by = body.get("sortBy") or {}
        column = sort_by.get("column", "name")
        order = str(sort_by.get("order", "asc")).lower()
        if column not in _SORT_COLUMNS or order not in ("asc", "desc"):
            raise _invalid_request("body/sortBy must be a known column and order")
        search = str(body.get("search") or "")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        level = len(prefix.split("/"))
        pattern = _like(prefix + search)
        with self._lock:
            candidates = list(self._objects.get(bucket, {}).values())
        folders: set[str] = set()
        files: list[StandInObject] = []
        for obj in candidates:
            if not pattern.match(obj.name.lower()) or not self._policy_allows(principal, obj.name):
                continue
            tokens = obj.name.split("/")
            if len(tokens) > level:
                folders.add(tokens[level - 1])
            elif len(tokens) == level:
                files.append(obj)
        descending = order == "desc"

        def sort_key(obj: StandInObject) -> Any:
            if column == "name":
                return obj.name.split("/")[level - 1]
            moment: datetime = getattr(obj, column)
            return moment

        rows: list[dict[str, Any]] = [
            {
                "name": folder,
                "id": None,
                "updated_at": None,
                "created_at": None,
                "last_accessed_at": None,
                "metadata": None,
            }
            for folder in sorted(folders, reverse=descending)
        ]
        for obj in sorted(files, key=sort_key, reverse=descending):
            rows.append(
                {
                    "name": obj.name.split("/")[level - 1],
                    "id": obj.id,
                    "updated_at": _iso(obj.updated_at),
                    "created_at": _iso(obj.created_at),
                    "last_accessed_at": _iso(obj.last_accessed_at),
                    "metadata": obj.metadata(),
                }
            )
        if column == "name":
            rows.sort(key=lambda row: str(row["name"]), reverse=descending)
        return _json_response(rows[offset : offset + limit])

    def _sign(self, request: _Request, principal: _Principal, bucket: str, name: str) -> _Response:
        body = request.json()
        if "expiresIn" not in body:
            raise _invalid_request("body must have required property 'expiresIn'")
        try:
            expires_in = int(body["expiresIn"])
        except (TypeError, ValueError) as exc:
            raise _invalid_request("body/expiresIn must be integer") from exc
        if expires_in < 1:
            raise _invalid_request("body/expiresIn must be >= 1")
        self._visible_object(principal, bucket, name)
        url = f"{bucket}/{name}"
        token = make_jwt(self.jwt_secret, role="anon", exp_seconds=expires_in, url=url)
        return _json_response({"signedURL": f"/object/sign/{url}?token={token}"})

    def _get_signed(self, request: _Request, principal: None, bucket: str, name: str) -> _Response:
        tokens = request.query.get("token")
        if not tokens:
            raise _invalid_request("querystring must have required property 'token'")
        try:
            claims = jwt.decode(
                tokens[0], self.jwt_secret, algorithms=["HS256"], options={"verify_iat": False}
            )
        except jwt.ExpiredSignatureError as exc:
            raise _invalid_jwt("jwt expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise _invalid_jwt("invalid signature") from exc
        except jwt.PyJWTError as exc:
            raise _invalid_jwt("jwt malformed") from exc
        if claims.get("url") != f"{bucket}/{name}":
            raise StorageApiFault(
                "400", "InvalidSignature", "Invalid signature", "InvalidSignature"
            )
        obj = self._visible_object(None, bucket, name)
        return self._object_response(obj, head_only=False)

    def _copy_or_move(self, request: _Request, principal: _Principal, *, move: bool) -> _Response:
        body = request.json()
        for required in ("bucketId", "sourceKey", "destinationKey"):
            if not isinstance(body.get(required), str):
                raise _invalid_request(f"body must have required property '{required}'")
        source_bucket: str = body["bucketId"]
        source_key: str = body["sourceKey"]
        destination_key: str = body["destinationKey"]
        destination_bucket = body.get("destinationBucket") or source_bucket
        _check_key(destination_key)
        source = self._visible_object(principal, source_bucket, source_key)
        self._existing_bucket(destination_bucket)
        if (source_bucket, source_key) == (destination_bucket, destination_key):
            return _json_response({"Id": source.id, "Key": f"{destination_bucket}/{source_key}"})
        if not self._may_write(principal, destination_key):
            raise _rls_refused()
        upsert = request.headers.get("x-upsert", "") == "true" and not move
        with self._lock:
            existing = self._objects[destination_bucket].get(destination_key)
            if existing is not None and not upsert:
                raise _key_exists()
            copied = _new_object(
                destination_bucket,
                destination_key,
                source.data,
                source.content_type,
                source.cache_control,
                owner=principal.sub,
                user_metadata=source.user_metadata,
                previous=existing,
            )
            if move:
                copied = replace(copied, id=source.id, owner=source.owner)
                self._objects[source_bucket].pop(source_key, None)
            self._objects[destination_bucket][destination_key] = copied
        if move:
            return _json_response(
                {"message": "Successfully moved", "Id": copied.id, "Key": destination_key}
            )
        return _json_response({"Id": copied.id, "Key": f"{destination_bucket}/{destination_key}"})

    def _copy(self, request: _Request, principal: _Principal) -> _Response:
        return self._copy_or_move(request, principal, move=False)

    def _move(self, request: _Request, principal: _Principal) -> _Response:
        return self._copy_or_move(request, principal, move=True)

    def _may_write(self, principal: _Principal, name: str) -> bool:
        if principal.bypasses_rls:
            return True
        return self.users_can_write and self._policy_allows(principal, name)

    def _may_delete(self, principal: _Principal, name: str) -> bool:
        if principal.bypasses_rls:
            return True
        return self.users_can_delete and self._policy_allows(principal, name)

    def _delete_many(self, request: _Request, principal: _Principal, bucket: str) -> _Response:
        prefixes = request.json().get("prefixes")
        if not isinstance(prefixes, list):
            raise _invalid_request("body must have required property 'prefixes'")
        if not prefixes:
            raise _invalid_request("body/prefixes must NOT have fewer than 1 items")
        deleted: list[dict[str, Any]] = []
        with self._lock:
            stored = self._objects.get(bucket, {})
            for name in dict.fromkeys(str(p) for p in prefixes):
                obj = stored.get(name)
                if obj is not None and self._may_delete(principal, name):
                    deleted.append(stored.pop(name).row())
        return _json_response(deleted)

    def _delete_one(
        self, request: _Request, principal: _Principal, bucket: str, name: str
    ) -> _Response:
        if not principal.bypasses_rls and not self.users_can_delete:
            # Without a DELETE policy the server's delete matches no row.
            raise _access_denied("Access denied")
        self._visible_object(principal, bucket, name)
        with self._lock:
            if not self._may_delete(principal, name):
                raise _no_such_key()
            self._objects[bucket].pop(name, None)
        return _json_response({"message": "Successfully deleted"})


_Handler_t = Callable[..., _Response]
_B = r"(?P<bucket>[^/]+)"
_N = r"(?P<name>.+)"
_ROUTES: list[tuple[tuple[str, ...], re.Pattern[str], _Handler_t, bool]] = [
    (("GET",), re.compile(r"/bucket/?"), StorageStandIn._list_buckets, True),
    (("POST",), re.compile(r"/bucket/?"), StorageStandIn._create_bucket, True),
    (("POST",), re.compile(rf"/bucket/{_B}/empty/?"), StorageStandIn._empty_bucket, True),
    (("GET",), re.compile(rf"/bucket/{_B}/?"), StorageStandIn._get_bucket, True),
    (("PUT",), re.compile(rf"/bucket/{_B}/?"), StorageStandIn._update_bucket, True),
    (("DELETE",), re.compile(rf"/bucket/{_B}/?"), StorageStandIn._delete_bucket, True),
    (("POST",), re.compile(rf"/object/list/{_B}/?"), StorageStandIn._list, True),
    (("POST",), re.compile(r"/object/copy/?"), StorageStandIn._copy, True),
    (("POST",), re.compile(r"/object/move/?"), StorageStandIn._move, True),
    (("POST",), re.compile(rf"/object/sign/{_B}/{_N}"), StorageStandIn._sign, True),
    (("GET",), re.compile(rf"/object/sign/{_B}/{_N}"), StorageStandIn._get_signed, False),
    (
        ("GET",),
        re.compile(rf"/object/info/(?:authenticated/)?{_B}/{_N}"),
        StorageStandIn._info,
        True,
    ),
    (
        ("GET", "HEAD"),
        re.compile(rf"/object/public/{_B}/{_N}"),
        StorageStandIn._download_public,
        False,
    ),
    (
        ("GET", "HEAD"),
        re.compile(rf"/object/authenticated/{_B}/{_N}"),
        StorageStandIn._download,
        True,
    ),
    (("POST", "PUT"), re.compile(rf"/object/{_B}/{_N}"), StorageStandIn._upload, True),
    (("GET", "HEAD"), re.compile(rf"/object/{_B}/{_N}"), StorageStandIn._download, True),
    (("DELETE",), re.compile(rf"/object/{_B}/?"), StorageStandIn._delete_many, True),
    (("DELETE",), re.compile(rf"/object/{_B}/{_N}"), StorageStandIn._delete_one, True),
]

_PUBLIC_FALLBACK = (StorageStandIn._download, StorageStandIn._info)
"""Handlers whose routes (not their ``/authenticated/`` forms) fall back to public access."""


# --- HTTP plumbing ----------------------------------------------------------------------------


class _StandInServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        standin: StorageStandIn,
    ):
        self.standin = standin
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("Storage stand-in connection from %s ended with an error", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _StandInServer
    timeout = 60

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("Storage stand-in %s: " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _serve(self, method: str) -> None:
        standin = self.server.standin
        try:
            body = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        path = standin.route_path(self.path)
        fault = standin._next_fault(method, path)
        entry = LoggedRequest(method, path, 0, fault.kind if fault else None, self.path)
        if fault is not None and fault.kind == "slow":
            standin._wait_for_release(fault.hang_seconds)
            fault = None  # then answered as usual, its status logged as sent
        if fault is not None and fault.kind != "drop_after":
            if fault.kind == "status":
                message = "Injected fault: service unavailable"
                payload = {
                    "statusCode": str(fault.status),
                    "error": "Service Unavailable",
                    "message": message,
                    "code": "InternalError",
                }
                response = _json_response(payload, fault.status)
                standin._record(replace(entry, status=response.status))
                self._write(response)
                return
            standin._record(entry)
            if fault.kind == "hang":
                standin._wait_for_release(fault.hang_seconds)
            self._drop()
            return
        headers = {name: value for name, value in self.headers.items()}
        response = standin._answer(method, self.path, headers, body)
        if fault is not None:
            standin._record(entry)
            self._drop()
            return
        standin._record(replace(entry, status=response.status))
        self._write(response)

    def _write(self, response: _Response) -> None:
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if not response.head_only and self.command != "HEAD":
                self.wfile.write(response.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True


# --- Command line -----------------------------------------------------------------------------


def serve_standin(
    jwt_secret: str = DEV_JWT_SECRET,
    host: str = "127.0.0.1",
    port: int = DEV_PORT,
    *,
    buckets: Sequence[str] | None = None,
    stop_event: threading.Event | None = None,
    on_ready: Callable[[StorageStandIn], None] | None = None,
) -> None:
    """Run a stand-in in the foreground until interrupted or ``stop_event`` is set.

    Args:
        jwt_secret: The HS256 secret for bearer JWTs (the Supabase local development one by
            default).
        host: Address to bind.
        port: Port to bind; 0 picks a free one.
        buckets: Contract buckets to create (names from :data:`CONTRACT_BUCKETS`); all of them
            by default.
        stop_event: Set it to stop serving.
        on_ready: Called with the running stand-in, e.g. to print its URL or mint a key.
    """
    stop = stop_event or threading.Event()
    with StorageStandIn(jwt_secret, host, port) as standin:
        standin.create_contract_buckets(buckets)
        logger.info(
            "Storage stand-in ready at %s (also under %s) with buckets %s",
            standin.url,
            standin.storage_url,
            ", ".join(standin.bucket_ids()),
        )
        if on_ready is not None:
            on_ready(standin)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            logger.info("Storage stand-in interrupted")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m devstack.storage_standin``: serve a stand-in on a fixed port."""
    parser = argparse.ArgumentParser(description="Local Supabase Storage stand-in")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEV_PORT)
    parser.add_argument("--jwt-secret", default=DEV_JWT_SECRET)
    parser.add_argument(
        "--bucket", action="append", dest="buckets", choices=sorted(CONTRACT_BUCKETS)
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve_standin(args.jwt_secret, args.host, args.port, buckets=args.buckets)


if __name__ == "__main__":
    main()
