"""A durable outbox: callbacks that could not be delivered wait here, one JSON file each.

The exact body bytes are kept (so a re-send signs the same bytes); secrets are not: the
signature is recomputed from the configured secret when the entry is re-sent.

File names never come from the payload: an entry is named by the SHA-256 of its job id and
status (so a later callback of the same job and status replaces it), and the job id is kept
only inside the file. The folder is created with mode 0700 and every file with mode 0600.
Entries that earlier versions named ``{job_id}.{status}.json`` are read and renamed to the
hashed name the first time they are listed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genjobs.settings import PRIVATE_FILE_MODE, make_private_dir

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class OutboxEntry:
    key: str
    job_id: str
    status: str
    body: bytes
    created_at: float


def entry_key(job_id: str, status: str) -> str:
    """The file stem of a (job, status) entry: a hash, so no payload text names a file."""
    return hashlib.sha256(f"{job_id}\n{status}".encode()).hexdigest()


def _write_private(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` through a 0600 temporary file and an atomic rename."""
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # a leftover temporary file keeps its old mode
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            fd = -1
            handle.write(text)
    finally:
        if fd >= 0:
            os.close(fd)
    os.replace(tmp, target)


def _parse(record: Any) -> tuple[str, str, bytes, float]:
    """The fields of a stored record; KeyError, TypeError or ValueError when it is malformed.

    A ``url`` that earlier versions stored is ignored: a re-send goes to the configured URL.
    """
    job_id, status = record["job_id"], record["status"]
    if not all(isinstance(value, str) for value in (job_id, status)):
        raise TypeError("job_id and status must be strings")
    body = base64.b64decode(record["body"], validate=True)
    return job_id, status, body, float(record["created_at"])


class Outbox:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def put(self, job_id: str, status: str, body: bytes) -> OutboxEntry:
        """Keep a callback; one entry per (job, status): a later put replaces it."""
        make_private_dir(self.folder)
        key = entry_key(job_id, status)
        entry = OutboxEntry(key, job_id, status, body, time.time())
        record = {
            "job_id": job_id,
            "status": status,
            "created_at": entry.created_at,
            "body": base64.b64encode(body).decode("ascii"),
        }
        _write_private(self.folder / f"{key}.json", json.dumps(record))
        return entry

    def entries(self) -> list[OutboxEntry]:
        """Every readable entry, oldest first. Unreadable files are logged and left in place."""
        if not self.folder.is_dir():
            return []
        found: dict[str, OutboxEntry] = {}
        for file in sorted(self.folder.glob("*.json")):
            try:
                job_id, status, body, created_at = _parse(json.loads(file.read_bytes()))
            except (OSError, KeyError, TypeError, ValueError, binascii.Error) as exc:
                logger.warning(
                    "Outbox file %r in %s cannot be read as an entry (%s: %s); it is left "
                    "in place for an operator.",
                    file.name,
                    self.folder,
                    type(exc).__name__,
                    exc,
                )
                continue
            key = entry_key(job_id, status)
            entry = OutboxEntry(key, job_id, status, body, created_at)
            if file.stem != key and not self._adopt(file, entry):
                continue
            known = found.get(key)
            if known is None or known.created_at < created_at:
                found[key] = entry
        return sorted(found.values(), key=lambda e: e.created_at)

    def remove(self, key: str) -> None:
        if not _KEY.match(key):
            raise ValueError(f"{key!r} is not an outbox entry key")
        (self.folder / f"{key}.json").unlink(missing_ok=True)

    def _adopt(self, file: Path, entry: OutboxEntry) -> bool:
        """Give an entry an earlier version named after its job id the hashed name.

        A newer entry already under the hashed name wins, and the old file is then removed.
        Returns whether the entry is now stored under its key.
        """
        target = self.folder / f"{entry.key}.json"
        try:
            if target.exists():
                newer = self._created_at(target)
                if newer is None:
                    logger.warning(
                        "Outbox file %r (the %s callback of job %s) is not renamed: %s holds "
                        "an unreadable entry; both are left in place for an operator.",
                        file.name,
                        entry.status,
                        entry.job_id,
                        target.name,
                    )
                    return False
                if newer >= entry.created_at:
                    file.unlink()
                    logger.info(
                        "Outbox file %r is an older copy of the %s callback of job %s; removed.",
                        file.name,
                        entry.status,
                        entry.job_id,
                    )
                    return False
            os.chmod(file, PRIVATE_FILE_MODE)
            os.replace(file, target)
        except OSError as exc:
            logger.warning(
                "Outbox file %r (the %s callback of job %s) could not be renamed to %s (%s); "
                "it is left in place and not re-sent.",
                file.name,
                entry.status,
                entry.job_id,
                target.name,
                exc,
            )
            return False
        logger.info(
            "Outbox file %r has an old-style name; it is kept as %s.", file.name, target.name
        )
        return True

    @staticmethod
    def _created_at(file: Path) -> float | None:
        try:
            return _parse(json.loads(file.read_bytes()))[3]
        except (OSError, KeyError, TypeError, ValueError, binascii.Error):
            return None
