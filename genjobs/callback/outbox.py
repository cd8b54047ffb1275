"""A durable outbox: callbacks that could not be delivered wait here, one JSON file each.

The exact body bytes are kept (so a re-send signs the same bytes); secrets are not: the
signature is recomputed from the configured secret when the entry is re-sent.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OutboxEntry:
    key: str
    job_id: str
    status: str
    url: str
    body: bytes
    created_at: float


class Outbox:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def put(self, job_id: str, status: str, url: str, body: bytes) -> OutboxEntry:
        """Keep a callback; one entry per (job, status): a later put replaces it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        key = f"{job_id}.{status}"
        entry = OutboxEntry(key, job_id, status, url, body, time.time())
        record = {
            "job_id": job_id,
            "status": status,
            "url": url,
            "created_at": entry.created_at,
            "body": base64.b64encode(body).decode("ascii"),
        }
        tmp = self.folder / f".{key}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.folder / f"{key}.json")
        return entry

    def entries(self) -> list[OutboxEntry]:
        if not self.folder.is_dir():
            return []
        found = []
        for file in sorted(self.folder.glob("*.json")):
            record = json.loads(file.read_text())
            found.append(
                OutboxEntry(
                    key=file.stem,
                    job_id=record["job_id"],
                    status=record["status"],
                    url=record["url"],
                    body=base64.b64decode(record["body"]),
                    created_at=record["created_at"],
                )
            )
        return sorted(found, key=lambda e: e.created_at)

    def remove(self, key: str) -> None:
        (self.folder / f"{key}.json").unlink(missing_ok=True)
