"""The backfill manifest: a JSON-lines log of what happened to every source, and the checkpoint.

One line per event, appended and flushed as it happens, never rewritten::

    {"ts": "2026-11-25T10:00:00.123456Z", "run_id": "<flow run id>", "outcome": "copied",
     "source_bucket": "sdxl_image_fast", "source_path": "<user>/sdxl_<job>_1754550000_2.png",
     "target_bucket": "workspace-temp", "target_path": "<user>/<job>/1.png",
     "thumbnail_path": "<user>/<job>/1.thumb.webp", "size": 1834, "sha256": "<hex>",
     "md5": "<hex>", "thumbnail_sha256": "<hex>", "content_type": "image/png", "method": "upload",
     "created_target": true, "created_thumbnail": true, "thumbnail_undecodable": false,
     "target_preexisting": null, "thumbnail_preexisting": null, "detail": null}

Outcomes: ``started`` (written before any write to the target: it says whether the target and
its thumbnail already existed, so an interrupted run still knows what it created),
``copied`` (target written and verified), ``already_present`` (the target already held the same
bytes), ``duplicate`` (same bytes as another source of the same asset, which was copied),
``conflict`` (the target holds other bytes, also when they replaced a verified copy; left
alone), ``collision`` (sources of one asset
differ; none copied), ``refused`` (storage refused for good: MIME type, size, source gone),
``failed`` (still failing after the retries), ``unmappable``, ``source_removed``,
``rolled_back`` and ``rollback_skipped``.

Folding the lines in order gives each source's :class:`EntryState`; a later run skips sources
whose state is verified while the target is still there with the recorded size and MD5, and
never overwrites the target of a source verified once (other bytes there are a conflict).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genjobs.backfill.plan import source_key

logger = logging.getLogger(__name__)

Outcome = Literal[
    "started",
    "copied",
    "already_present",
    "duplicate",
    "conflict",
    "collision",
    "refused",
    "failed",
    "unmappable",
    "source_removed",
    "rolled_back",
    "rollback_skipped",
]

VERIFIED_OUTCOMES: frozenset[str] = frozenset({"copied", "already_present", "duplicate"})
"""Outcomes after which the target holds exactly the source's bytes."""

_UNFINISHED_OUTCOMES = frozenset({"started", "failed"})
_CARRIED_FIELDS = (
    "target_bucket",
    "target_path",
    "thumbnail_path",
    "size",
    "sha256",
    "md5",
    "thumbnail_sha256",
)
"""Fields a record sets only when it knows them; a later record without them keeps them."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class ManifestRecord(BaseModel):
    """One line of the manifest."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    ts: datetime = Field(default_factory=utc_now)
    run_id: str | None = None
    outcome: Outcome
    source_bucket: str
    source_path: str
    target_bucket: str | None = None
    target_path: str | None = None
    thumbnail_path: str | None = None
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    thumbnail_sha256: str | None = None
    content_type: str | None = None
    method: str | None = None
    created_target: bool = False
    created_thumbnail: bool = False
    thumbnail_undecodable: bool = False
    target_preexisting: bool | None = None
    thumbnail_preexisting: bool | None = None
    detail: str | None = None

    @property
    def key(self) -> str:
        return source_key(self.source_bucket, self.source_path)

    def to_line(self) -> str:
        data = self.model_dump(mode="json")
        data["ts"] = self.ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


@dataclass
class EntryState:
    """What the manifest knows about one source after folding its records in order."""

    source_bucket: str
    source_path: str
    outcome: Outcome | None = None
    target_bucket: str | None = None
    target_path: str | None = None
    thumbnail_path: str | None = None
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    thumbnail_sha256: str | None = None
    created_target: bool = False
    created_thumbnail: bool = False
    thumbnail_undecodable: bool = False
    target_preexisting: bool | None = None
    thumbnail_preexisting: bool | None = None
    source_removed: bool = False
    verified_once: bool = False
    detail: str | None = None

    @property
    def key(self) -> str:
        return source_key(self.source_bucket, self.source_path)

    @property
    def verified(self) -> bool:
        return self.outcome in VERIFIED_OUTCOMES

    @property
    def owns_target(self) -> bool:
        """The backfill created the target, or an unfinished attempt may have."""
        unfinished = self.outcome in _UNFINISHED_OUTCOMES and self.target_preexisting is False
        return self.created_target or unfinished

    @property
    def owns_thumbnail(self) -> bool:
        """The backfill created the thumbnail, or an unfinished attempt may have."""
        unfinished = self.outcome in _UNFINISHED_OUTCOMES and self.thumbnail_preexisting is False
        return self.created_thumbnail or unfinished

    def apply(self, record: ManifestRecord) -> None:
        """Fold one record into the state."""
        if record.outcome == "source_removed":
            self.source_removed = True
            return
        if record.outcome == "rollback_skipped":
            self.detail = record.detail
            return
        if record.outcome == "rolled_back":
            self.created_target = self.created_thumbnail = self.verified_once = False
            self.target_preexisting = self.thumbnail_preexisting = None
            self.outcome = "rolled_back"
            self.detail = record.detail
            return
        self.outcome = record.outcome
        self.detail = record.detail
        for name in _CARRIED_FIELDS:
            value = getattr(record, name)
            if value is not None:
                setattr(self, name, value)
        if record.outcome == "started":
            self.target_preexisting = record.target_preexisting
            self.thumbnail_preexisting = record.thumbnail_preexisting
        self.created_target = self.created_target or record.created_target
        self.created_thumbnail = self.created_thumbnail or record.created_thumbnail
        if record.outcome in VERIFIED_OUTCOMES:
            self.verified_once = True
            self.thumbnail_undecodable = record.thumbnail_undecodable
            if record.thumbnail_path is None:
                self.thumbnail_path = None


@dataclass
class Manifest:
    """Every record of a manifest file and the folded state per source."""

    path: Path
    records: list[ManifestRecord] = field(default_factory=list)
    states: dict[str, EntryState] = field(default_factory=dict)
    unreadable_lines: int = 0

    def add(self, record: ManifestRecord) -> None:
        self.records.append(record)
        state = self.states.get(record.key)
        if state is None:
            state = EntryState(record.source_bucket, record.source_path)
            self.states[record.key] = state
        state.apply(record)

    def state(self, key: str) -> EntryState | None:
        return self.states.get(key)

    def created_objects(self) -> list[tuple[str, str]]:
        """``(bucket, path)`` of every target and thumbnail the backfill created or may have."""
        found: list[tuple[str, str]] = []
        for state in self.states.values():
            if state.target_bucket is None:
                continue
            if state.owns_target and state.target_path:
                found.append((state.target_bucket, state.target_path))
            if state.owns_thumbnail and state.thumbnail_path:
                found.append((state.target_bucket, state.thumbnail_path))
        return found


def load_manifest(path: Path) -> Manifest:
    """Read a manifest; a missing file is an empty manifest, a torn last line is skipped."""
    manifest = Manifest(path=path)
    if not path.is_file():
        return manifest
    with path.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                manifest.add(ManifestRecord.model_validate_json(line))
            except ValidationError:
                manifest.unreadable_lines += 1
                logger.warning("Skipped unreadable line %d of the manifest %s.", number, path)
    return manifest


class ManifestWriter:
    """Appends records to a manifest file (and to its in-memory :class:`Manifest`).

    Each record is one flushed line; :meth:`sync` also asks the OS to write it to disk.
    """

    def __init__(self, manifest: Manifest, run_id: str | None = None):
        self.manifest = manifest
        self.run_id = run_id
        self._lock = threading.Lock()
        self._handle: IO[str] | None = None

    def __enter__(self) -> ManifestWriter:
        path = self.manifest.path
        path.parent.mkdir(parents=True, exist_ok=True)
        torn = path.is_file() and path.stat().st_size > 0 and not _ends_with_newline(path)
        self._handle = path.open("a", encoding="utf-8")
        if torn:
            self._handle.write("\n")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self.sync()
            self._handle.close()
            self._handle = None

    def append(self, record: ManifestRecord) -> ManifestRecord:
        """Write one record (stamped with this run's id) and fold it into the manifest."""
        if self._handle is None:
            raise RuntimeError("The manifest writer is not open")
        if record.run_id is None and self.run_id is not None:
            record = record.model_copy(update={"run_id": self.run_id})
        with self._lock:
            self._handle.write(record.to_line() + "\n")
            self._handle.flush()
            self.manifest.add(record)
        return record

    def sync(self) -> None:
        if self._handle is not None:
            with self._lock:
                self._handle.flush()
                os.fsync(self._handle.fileno())


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"
