"""What a run stored, and the rule for undoing it.

A run's upload step records every object before it puts it: the bucket, the path, and the
sha256 and size of the bytes it sends. The records are kept in memory, for the run's own failure
path, and appended to the run's journal file ``{home}/uploads/{flow_run_id}.jsonl`` (flushed to
disk before the put), for the crash and cancellation hooks, which may run in another process.

The undo removes an object only when it is in the run's journal and the bytes stored there now
hash to what the run wrote: an object changed since (another run of the job, a user) is kept. A
missing object needs no removal. When it cannot tell (a storage error while checking) it removes
nothing. It never raises a storage error: the caller reports the run's own error whatever the
undo did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from genjobs.errors import ErrorCode, StorageError
from genjobs.storage.base import StorageBackend

logger = logging.getLogger(__name__)

JOURNAL_DIR = "uploads"
_ABSENT = {ErrorCode.OBJECT_NOT_FOUND, ErrorCode.BUCKET_NOT_FOUND}


@dataclass(frozen=True)
class Write:
    """One object a run put: where, and the digest and size of the bytes it sent."""

    bucket: str
    path: str
    sha256: str
    size: int

    @classmethod
    def of(cls, bucket: str, path: str, data: bytes) -> Write:
        return cls(bucket, path, hashlib.sha256(data).hexdigest(), len(data))


class JournalUnreadable(Exception):
    """A journal file exists but cannot be read as one record per line."""


def journal_file(home: Path, flow_run_id: str | uuid.UUID) -> Path:
    """``{home}/uploads/{flow_run_id}.jsonl``; the id must be a UUID (never a payload value)."""
    return Path(home) / JOURNAL_DIR / f"{uuid.UUID(str(flow_run_id))}.jsonl"


class UploadJournal:
    """The writes of one run, in memory and in its journal file."""

    def __init__(self, file: Path, writes: Iterable[Write] = ()):
        self.file = file
        self._writes = list(writes)
        self._lock = threading.Lock()

    @classmethod
    def for_run(cls, home: Path, flow_run_id: str | uuid.UUID) -> UploadJournal:
        """A new, empty journal of the run (its file is created at the first record)."""
        return cls(journal_file(home, flow_run_id))

    @classmethod
    def load(cls, home: Path, flow_run_id: str | uuid.UUID) -> UploadJournal:
        """The journal of a run as its file holds it; no file: a run that recorded nothing.

        Raises:
            JournalUnreadable: The file exists but cannot be read.
        """
        file = journal_file(home, flow_run_id)
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return cls(file)
        except (OSError, UnicodeDecodeError) as exc:
            raise JournalUnreadable(f"The upload journal {file} cannot be read: {exc}") from exc
        try:
            writes = [Write(**json.loads(line)) for line in lines if line.strip()]
        except (ValueError, TypeError) as exc:
            raise JournalUnreadable(f"The upload journal {file} is damaged: {exc}") from exc
        return cls(file, writes)

    @property
    def writes(self) -> list[Write]:
        with self._lock:
            return list(self._writes)

    def record(self, writes: Iterable[Write]) -> None:
        """Append ``writes`` to the file and flush it to disk, then keep them in memory. Call
        before the puts: a put whose record could not be written must not happen."""
        batch = list(writes)
        lines = "".join(json.dumps(asdict(write)) + "\n" for write in batch)
        with self._lock:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with self.file.open("a", encoding="utf-8") as handle:
                handle.write(lines)
                handle.flush()
                os.fsync(handle.fileno())
            self._writes.extend(batch)

    def discard(self) -> None:
        """Remove the file: the run has ended and nothing will undo its writes any more."""
        try:
            self.file.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("The upload journal %s could not be removed: %s", self.file, exc)


@dataclass
class UndoReport:
    """What an undo removed, and each object it kept with the reason."""

    removed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


def undo_writes(storage: StorageBackend, writes: Iterable[Write]) -> UndoReport:
    """Remove each recorded object whose stored bytes still hash to the recorded digest.

    The last record of a path counts (a retry sends the same bytes again). Every object is
    checked before anything is removed; a storage error while checking keeps them all.
    """
    latest = {(write.bucket, write.path): write for write in writes}
    report = UndoReport()
    doomed: dict[str, list[str]] = {}
    for write in latest.values():
        try:
            stored = storage.get(write.bucket, write.path)
        except StorageError as exc:
            if exc.code in _ABSENT:
                continue  # never stored, or already gone: nothing to remove
            reason = f"the storage could not be read to check it ({exc.code}: {exc})"
            return UndoReport(kept={w.path: reason for w in latest.values()})
        if hashlib.sha256(stored).hexdigest() != write.sha256:
            report.kept[write.path] = "its bytes changed since this run wrote them"
        else:
            doomed.setdefault(write.bucket, []).append(write.path)
    for bucket, paths in doomed.items():
        try:
            report.removed += storage.remove(bucket, paths)
        except StorageError as exc:
            reason = f"the storage refused its removal ({exc.code}: {exc})"
            report.kept.update(dict.fromkeys(paths, reason))
    return report
