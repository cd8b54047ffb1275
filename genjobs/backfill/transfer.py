"""Source objects into the target bucket, verified, with their thumbnails. Synchronous storage.

Each object is downloaded once: its bytes are fingerprinted (size, SHA-256, MD5), written to the
target (by the server where it can copy, else uploaded), and thumbnailed. A copy counts only once
the target is verified: by its listed size and MD5 ETag, which the server computes from the bytes
it stored (after a server-side copy, the row the server answers the copy with holds the same size
and ETag and spares the listing), or by reading the target back and comparing size and SHA-256
where the listing carries no MD5 (a backend without ETags, an object stored in parts) and in a
run that removes its sources (a source goes only once a copy with its SHA-256 is read back).

:func:`copy_and_verify` raises storage errors a retry could fix and returns refusals for good
(a MIME type or size the target refuses, a source that vanished) as a result.
:func:`run_copy_batch` does a whole batch and reports each object's outcome, transient failures
included (the caller retries those one by one with :func:`backfill_single`). Its sources are
read ahead of their copies, on threads of their own, so that the link from the server stays busy
while earlier objects are written and thumbnailed (:class:`ReadAhead` bounds the bytes held).

A batch is safe to run again: it lists the targets afresh, and an object it finds that the
order says did not exist before the run is its own work, verified again rather than copied again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from genjobs.backfill.plan import PlannedCopy
from genjobs.backfill.throttle import RateLimiter
from genjobs.backfill.thumbnails import make_thumbnail
from genjobs.errors import ErrorCode, StorageError, ThumbnailError
from genjobs.storage.base import MIME_BY_EXTENSION, ObjectInfo, StorageBackend, job_prefix

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
        source_bytes: The source's bytes as read (for its thumbnail; not compared or shown).
    """

    outcome: Literal["copied", "already_present", "conflict", "refused"]
    fingerprint: Fingerprint | None = None
    method: CopyMethod | None = None
    written: bool = False
    detail: str | None = None
    server_copy_refused: bool = False
    source_bytes: bytes | None = field(default=None, repr=False, compare=False)


_MD5_ETAG = re.compile(r"[0-9a-f]{32}")


def listed_match(info: ObjectInfo, source: Fingerprint) -> bool | None:
    """Whether a listed object holds the source's bytes, by its size and MD5 ETag; ``None``
    when the listing cannot tell (no ETag, or one that is not an MD5: an object in parts)."""
    if info.size != source.size:
        return False
    etag = (info.etag or "").lower()
    if _MD5_ETAG.fullmatch(etag) is None:
        return None
    return etag == source.md5


def _listed_target(storage: StorageBackend, item: PlannedCopy) -> ObjectInfo | None:
    """The target as its folder's listing shows it (no download); None when not listed."""
    for info in storage.list(item.target_bucket, job_prefix_of(item)):
        if info.path == item.target_path:
            return info
    return None


def _target_holds(
    storage: StorageBackend, item: PlannedCopy, source: Fingerprint, listed: ObjectInfo | None
) -> bool | None:
    """Whether the target holds the source's bytes (``None``: there is no target), by its
    listing where that tells, else by reading it back."""
    if listed is not None:
        verdict = listed_match(listed, source)
        if verdict is not None:
            return verdict
    current = _read_optional(storage, item.target_bucket, item.target_path)
    if current is None:
        return None
    return fingerprint(current) == source


def _read_optional(storage: StorageBackend, bucket: str, path: str) -> bytes | None:
    try:
        return storage.get(bucket, path)
    except StorageError as exc:
        if exc.status == "404" and not exc.retryable:
            return None
        raise


@dataclass(frozen=True)
class _Written:
    """How :func:`_write_target` wrote a target, and the target as the server recorded it
    where its answer said (a server-side copy's row: size and ETag)."""

    method: CopyMethod
    fell_back: bool
    recorded: ObjectInfo | None = None


def _write_target(
    storage: StorageBackend, item: PlannedCopy, data: bytes, server_copy: bool
) -> _Written:
    source = item.source
    if server_copy:
        try:
            recorded = storage.copy(
                source.bucket, source.path, item.target_path, destination_bucket=item.target_bucket
            )
            return _Written("server_copy", False, recorded)
        except StorageError as exc:
            if exc.retryable:
                raise
            logger.warning(
                "Server-side copy of %s was refused (%s); uploading it instead.", item.key, exc.code
            )
            storage.put(item.target_bucket, item.target_path, data, source.content_type)
            return _Written("upload", True)
    storage.put(item.target_bucket, item.target_path, data, source.content_type)
    return _Written("upload", False)


def copy_and_verify(
    storage: StorageBackend,
    item: PlannedCopy,
    *,
    existing_target: ObjectInfo | None,
    may_overwrite: bool,
    server_copy: bool,
    read_back: bool = False,
    read_source: Callable[[], bytes] | None = None,
) -> CopyResult:
    """Copy one source to its target and verify the target, downloading the source once.

    Args:
        storage: The backend holding both buckets.
        item: The planned copy.
        existing_target: The target as listed before this run touched it (None: not there).
        may_overwrite: The existing target is the backfill's own unfinished work, so other
            bytes there may be replaced; otherwise they are a conflict and stay.
        server_copy: Let the server copy the bytes (``storage.copy``); falls back to an upload
            when the server refuses.
        read_back: Verify the written target by reading it back (size and SHA-256) rather than
            by its listed size and MD5 ETag: a run that removes its sources does.
        read_source: Returns the source's bytes or raises the StorageError of reading them
            (a read started ahead); default: download the source now.

    Raises:
        StorageError: A retryable failure, or a verification mismatch (retryable).
    """
    try:
        data = read_source() if read_source else storage.get(item.source.bucket, item.source.path)
    except StorageError as exc:
        if exc.retryable:
            raise
        return CopyResult("refused", detail=f"The source could not be read: {exc.message}")
    source_print = fingerprint(data)
    if existing_target is not None:
        listed = None if read_back else existing_target
        holds = _target_holds(storage, item, source_print, listed)
        if holds:
            return CopyResult(
                "already_present",
                source_print,
                detail="The target already holds the same bytes",
                source_bytes=data,
            )
        if holds is not None and not may_overwrite:
            return CopyResult(
                "conflict",
                source_print,
                detail=f"The target holds other bytes than its source ({existing_target.size} "
                "listed); left alone",
            )
    try:
        written = _write_target(storage, item, data, server_copy)
    except StorageError as exc:
        if exc.retryable:
            raise
        return CopyResult(
            "refused", source_print, detail=f"The target refused the object: {exc.message}"
        )
    # The server's row of its copy tells what a listing would (the same size and ETag).
    listed = None if read_back else written.recorded or _listed_target(storage, item)
    if not _target_holds(storage, item, source_print, listed):
        raise StorageError(
            f"The copy of {item.key} at {item.target_bucket}/{item.target_path} does not hold "
            f"the bytes of its source ({source_print.size} bytes, sha256 "
            f"{source_print.sha256[:12]})",
            code=ErrorCode.VERIFY_MISMATCH,
            retryable=True,
        )
    return CopyResult(
        "copied",
        source_print,
        method=written.method,
        written=True,
        server_copy_refused=written.fell_back,
        source_bytes=data,
    )


@dataclass(frozen=True)
class ThumbnailResult:
    """The thumbnail written for a target, or why there is none."""

    path: str | None
    created: bool
    error: str | None = None
    undecodable: bool = False
    sha256: str | None = None


def write_thumbnail(storage: StorageBackend, item: PlannedCopy, data: bytes) -> ThumbnailResult:
    """Decode ``data`` (the source's bytes, which the verified target holds) and store its
    WEBP poster next to the target.

    Undecodable bytes or a refused upload leave no thumbnail (the asset keeps no poster);
    retryable storage errors are raised.
    """
    try:
        webp = make_thumbnail(data, item.source.is_video)
    except ThumbnailError as exc:
        logger.warning("No thumbnail for %s: %s", item.target_path, exc.message)
        return ThumbnailResult(path=None, created=False, error=exc.message, undecodable=True)
    try:
        storage.put(item.target_bucket, item.thumbnail_path, webp, MIME_BY_EXTENSION["webp"])
    except StorageError as exc:
        if exc.retryable:
            raise
        return ThumbnailResult(
            path=None, created=False, error=f"The thumbnail was refused: {exc.message}"
        )
    return ThumbnailResult(
        path=item.thumbnail_path, created=True, sha256=hashlib.sha256(webp).hexdigest()
    )


@dataclass(frozen=True)
class CopyOrder:
    """One source to copy, with what existed at its target before the run touched it.

    Attributes:
        item: The planned copy.
        target_preexisting: The target existed and is not the backfill's own work.
        thumbnail_preexisting: The thumbnail existed and is not the backfill's own work.
        server_copy: Let the server copy the bytes.
        verified_before: An earlier run verified this copy, so other bytes at the target now
            were written by someone else: a conflict, never overwritten.
        read_back: Verify the copy by reading it back (SHA-256), as a run that removes its
            sources does.
    """

    item: PlannedCopy
    target_preexisting: bool
    thumbnail_preexisting: bool
    server_copy: bool = False
    verified_before: bool = False
    read_back: bool = False

    @property
    def may_overwrite(self) -> bool:
        """Other bytes at the target may be replaced: they are this backfill's unfinished work."""
        return not (self.target_preexisting or self.verified_before)


@dataclass(frozen=True)
class CopyOutcome:
    """What happened to one source in a batch.

    ``outcome`` is ``copied``, ``already_present``, ``conflict``, ``refused`` or ``failed``;
    ``transient`` marks a failure a retry may fix. ``created_*`` say whether the object is the
    backfill's work (written now or by an unfinished earlier attempt); ``written`` whether this
    attempt wrote the target.
    """

    key: str
    outcome: Literal["copied", "already_present", "conflict", "refused", "failed"]
    fingerprint: Fingerprint | None = None
    method: CopyMethod | None = None
    written: bool = False
    created_target: bool = False
    thumbnail_path: str | None = None
    created_thumbnail: bool = False
    thumbnail_written: bool = False
    thumbnail_undecodable: bool = False
    thumbnail_sha256: str | None = None
    transient: bool = False
    detail: str | None = None
    server_copy_refused: bool = False


def job_prefix_of(item: PlannedCopy) -> str:
    return job_prefix(item.source.user_id, item.source.job_id)


@dataclass(frozen=True)
class Listing:
    """Objects found under some folders, by path, and the folders that failed transiently."""

    found: dict[str, ObjectInfo]
    failed: dict[str, str]


def list_prefixes(
    storage: StorageBackend, bucket: str, prefixes: list[str], concurrency: int
) -> Listing:
    """Every object under the given folders, listed ``concurrency`` at a time.

    A folder whose listing fails with a retryable error is reported in ``failed`` (folder ->
    error) so the caller can retry just that one; other errors are raised.
    """

    def one(prefix: str) -> tuple[list[ObjectInfo], str | None]:
        try:
            return storage.list(bucket, prefix), None
        except StorageError as exc:
            if not exc.retryable:
                raise
            return [], str(exc)

    if not prefixes:
        return Listing(found={}, failed={})
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(prefixes)))) as pool:
        results = list(pool.map(one, prefixes))
    found = {info.path: info for listing, _ in results for info in listing}
    failed = {prefix: error for prefix, (_, error) in zip(prefixes, results, strict=True) if error}
    return Listing(found=found, failed=failed)


def backfill_object(
    storage: StorageBackend,
    order: CopyOrder,
    existing: dict[str, ObjectInfo],
    read_source: Callable[[], bytes] | None = None,
) -> CopyOutcome:
    """Copy, verify and thumbnail one source; retryable storage errors are raised.
    ``read_source``: as for :func:`copy_and_verify`."""
    item = order.item
    target_there = item.target_path in existing
    result = copy_and_verify(
        storage,
        item,
        existing_target=existing.get(item.target_path),
        may_overwrite=order.may_overwrite,
        server_copy=order.server_copy,
        read_back=order.read_back,
        read_source=read_source,
    )
    base = {
        "key": item.key,
        "fingerprint": result.fingerprint,
        "detail": result.detail,
        "server_copy_refused": result.server_copy_refused,
    }
    if result.outcome in ("conflict", "refused"):
        return CopyOutcome(outcome=result.outcome, **base)  # type: ignore[arg-type]
    created_target = result.written or (target_there and not order.target_preexisting)
    thumb_path: str | None = item.thumbnail_path
    created_thumb = item.thumbnail_path in existing and not order.thumbnail_preexisting
    thumb_written = undecodable = False
    thumb_sha: str | None = None
    if item.thumbnail_path not in existing and result.source_bytes is not None:
        made = write_thumbnail(storage, item, result.source_bytes)
        thumb_path, created_thumb, thumb_written = made.path, made.created, made.created
        undecodable, thumb_sha = made.undecodable, made.sha256
        if made.error:
            base["detail"] = f"no thumbnail: {made.error}"
    return CopyOutcome(
        outcome=result.outcome,
        method=result.method,
        written=result.written,
        created_target=created_target,
        thumbnail_path=thumb_path,
        created_thumbnail=created_thumb,
        thumbnail_written=thumb_written,
        thumbnail_undecodable=undecodable,
        thumbnail_sha256=thumb_sha,
        **base,  # type: ignore[arg-type]
    )


def backfill_single(storage: StorageBackend, order: CopyOrder) -> CopyOutcome:
    """:func:`backfill_object` after listing the target's folder afresh; errors are raised."""
    existing = {
        info.path: info
        for info in storage.list(order.item.target_bucket, job_prefix_of(order.item))
    }
    return backfill_object(storage, order, existing)


READ_AHEAD_BYTES = 256 * 2**20
"""The most source bytes a batch holds at once: read ahead, or being copied and thumbnailed."""


class ReadAhead:
    """Bytes held by the sources of a batch, taken in the batch's order and given back when an
    object is done with them.

    A source waits for its turn (every source before it has taken its share) and for room
    within ``budget`` bytes; one larger than the budget goes alone, when nothing else is held.
    Turns in order mean the earliest sources always hold their bytes, so the copies, which
    run in order too, never wait for a read that waits on them.
    """

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"the read-ahead budget must be at least one byte, got {budget}")
        self.budget = budget
        self.held = 0
        self._turn = 0
        self._changed = threading.Condition()

    def take(self, turn: int, size: int) -> None:
        """Block until it is ``turn``'s turn and ``size`` bytes fit, then hold them."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._turn == turn and (self.held == 0 or self.held + size <= self.budget)
            )
            self.held += size
            self._turn += 1
            self._changed.notify_all()

    def give_back(self, size: int) -> None:
        with self._changed:
            self.held -= size
            self._changed.notify_all()


def run_copy_batch(
    storage: StorageBackend,
    orders: list[CopyOrder],
    *,
    target_bucket: str,
    concurrency: int,
    max_objects_per_second: float | None = None,
    read_ahead_bytes: int = READ_AHEAD_BYTES,
) -> list[CopyOutcome]:
    """Run :func:`backfill_object` for each order, in order, ``concurrency`` at a time, with
    the sources read ahead on ``concurrency`` threads of their own (at most
    ``read_ahead_bytes`` held, by the planned sizes), so that downloads go on while earlier
    objects are written: a batch otherwise moves in step, every thread downloading, then every
    thread uploading, each direction of the link idle half the time.

    Lists the targets' folders first (so a repeated attempt sees its own earlier writes).
    A retryable storage error of one object (or of its folder's listing) becomes a ``failed``
    outcome marked transient; any other exception a ``failed`` outcome that is not.
    ``max_objects_per_second`` spaces the objects' first requests (the source reads).
    """
    if not orders:
        return []
    prefixes = sorted({job_prefix_of(order.item) for order in orders})
    listing = list_prefixes(storage, target_bucket, prefixes, concurrency)
    limiter = RateLimiter(max_objects_per_second)
    held = ReadAhead(read_ahead_bytes)
    workers = max(1, min(concurrency, len(orders)))

    def read(turn: int, order: CopyOrder) -> bytes:
        size = max(order.item.size, 1)
        held.take(turn, size)
        try:
            limiter.wait()
            return storage.get(order.item.source.bucket, order.item.source.path)
        except BaseException:
            held.give_back(size)
            raise

    def one(order: CopyOrder, source: Future[bytes] | None) -> CopyOutcome:
        unlisted = listing.failed.get(job_prefix_of(order.item))
        if unlisted is not None or source is None:
            return CopyOutcome(
                key=order.item.key,
                outcome="failed",
                transient=True,
                detail=f"the target folder could not be listed: {unlisted}",
            )
        try:
            return backfill_object(storage, order, listing.found, read_source=source.result)
        except StorageError as exc:
            if not exc.retryable:
                logger.exception("Backfill of %s failed", order.item.key)
            return CopyOutcome(
                key=order.item.key, outcome="failed", transient=exc.retryable, detail=str(exc)
            )
        except Exception as exc:
            logger.exception("Backfill of %s failed unexpectedly", order.item.key)
            return CopyOutcome(
                key=order.item.key, outcome="failed", detail=f"{type(exc).__name__}: {exc}"
            )
        finally:
            if source.exception() is None:  # waits for the read; its bytes are done with
                held.give_back(max(order.item.size, 1))

    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backfill-read") as readers,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backfill-copy") as copiers,
    ):
        reads: list[Future[bytes] | None] = []
        turn = 0
        for order in orders:
            if job_prefix_of(order.item) in listing.failed:
                reads.append(None)
                continue
            reads.append(readers.submit(read, turn, order))
            turn += 1
        return list(copiers.map(one, orders, reads))


@dataclass(frozen=True)
class ContentCheck:
    """An object whose SHA-256 a rollback needs: of its bytes, or of the thumbnail they make."""

    bucket: str
    path: str
    thumbnail_of: bool = False


def _is_video(path: str) -> bool:
    extension = path.rsplit(".", 1)[-1].lower()
    return MIME_BY_EXTENSION.get(extension, "").startswith("video/")


def content_sha256(storage: StorageBackend, check: ContentCheck) -> str | None:
    """The object's SHA-256 (or that of the thumbnail made from it); None when it is gone.

    A thumbnail of undecodable bytes is None too. Retryable storage errors are raised.
    """
    data = _read_optional(storage, check.bucket, check.path)
    if data is None:
        return None
    if not check.thumbnail_of:
        return hashlib.sha256(data).hexdigest()
    try:
        return hashlib.sha256(make_thumbnail(data, _is_video(check.path))).hexdigest()
    except ThumbnailError:
        return None


def content_hashes(
    storage: StorageBackend, checks: list[ContentCheck], concurrency: int
) -> list[str | None]:
    """:func:`content_sha256` of each check, ``concurrency`` at a time, in order."""
    if not checks:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(checks)))) as pool:
        return list(pool.map(lambda check: content_sha256(storage, check), checks))
