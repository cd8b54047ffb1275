"""A local ``job-callback`` receiver: verifies signatures and records jobs and assets in SQLite.

It answers as contract section 5.4 describes the real function (405, 500 without a secret, 401 on
a missing, wrong or non-ASCII signature, 400 without job_id/status, 200 skipped for unknown or
terminal jobs) and stores one row per asset, unique on (job_id, asset_index), written after the
job status as the backend does. Faults can be injected (answer 503 for a while or for the next N
requests) for tests. Its database file is created with mode 0600.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from genjobs.callback.signing import SIGNATURE_HEADER, verify
from genjobs.settings import PRIVATE_FILE_MODE, make_private_dir

logger = logging.getLogger(__name__)

VALID_STATUSES = {"queued", "processing", "completed", "failed", "cancelled"}
TERMINAL_STATUSES = {"completed", "cancelled"}
BUCKET_PREFIX = "workspace-temp/"

SCHEMA = """
create table if not exists jobs (
    id text primary key,
    user_id text,
    status text not null default 'queued',
    error_message text,
    metadata text not null default '{}',
    completed_at text
);
create table if not exists workspace_assets (
    job_id text not null,
    asset_index integer not null,
    user_id text,
    asset_type text not null,
    temp_storage_path text not null,
    thumbnail_path text,
    mime_type text not null,
    generation_seed integer,
    generation_settings text not null,
    asset_metadata text not null,
    created_at text not null,
    unique (job_id, asset_index)
);
"""


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as it arrived, the status the receiver answered, and whether it skipped it."""

    method: str
    body: bytes
    headers: dict[str, str]
    answered: int
    skipped: bool = False


def _private_database(db_path: Path | str) -> str:
    """The database path, its file created (or narrowed) to mode 0600 in a 0700 folder first;
    SQLite gives its journal files the database's mode."""
    name = str(db_path)
    if name == ":memory:" or name.startswith("file:"):
        return name
    make_private_dir(Path(name).parent)
    fd = os.open(name, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
    return name


def backend_mime_type(path: str) -> str:
    """The backend's column rule: video -> video/mp4, .png -> image/png, other -> image/jpeg."""
    if path.endswith((".mp4", ".webm", ".mov")):
        return "video/mp4"
    return "image/png" if path.endswith(".png") else "image/jpeg"


class CallbackReceiver:
    """Serve ``job-callback`` on loopback. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        secret: str | None,
        db_path: Path | str = ":memory:",
        *,
        strict_jobs: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.secret = secret
        self.strict_jobs = strict_jobs
        self._db = sqlite3.connect(_private_database(db_path), check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._fail_next: list[int] = []
        self._down_until = 0.0
        self.requests: list[ReceivedRequest] = []
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/functions/v1/job-callback"

    def start(self) -> CallbackReceiver:
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name="callback-receiver"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> CallbackReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault injection and seeding --------------------------------------------------------
    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._fail_next.extend([status] * count)

    def down_for(self, seconds: float) -> None:
        """Answer 503 to every request for the next ``seconds``."""
        with self._lock:
            self._down_until = time.monotonic() + seconds

    def register_job(self, job_id: str, user_id: str, status: str = "queued") -> None:
        """Insert a jobs row, as queue-job does before a run is created."""
        with self._lock:
            self._db.execute(
                "insert or replace into jobs (id, user_id, status) values (?, ?, ?)",
                (job_id, user_id, status),
            )
            self._db.commit()

    # -- reads for tests and the CLI ----------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("select * from jobs where id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        record = dict(row)
        record["metadata"] = json.loads(record["metadata"])
        return record

    def assets(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "select * from workspace_assets where job_id = ? order by asset_index", (job_id,)
            ).fetchall()
        records = []
        for row in rows:
            record = dict(row)
            record["generation_settings"] = json.loads(record["generation_settings"])
            record["asset_metadata"] = json.loads(record["asset_metadata"])
            records.append(record)
        return records

    def accepted(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """Payloads answered 200 and not skipped, in arrival order."""
        found = []
        for request in list(self.requests):
            if request.answered != 200 or request.skipped:
                continue
            payload = json.loads(request.body)
            if job_id is None or payload.get("job_id") == job_id:
                found.append(payload)
        return found

    # -- the function itself ------------------------------------------------------------------
    def handle(
        self, method: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        status, answer = self._answer(method, body, headers)
        with self._lock:
            self.requests.append(
                ReceivedRequest(method, body, headers, status, bool(answer.get("skipped")))
            )
        return status, answer

    def _answer(
        self, method: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if self._fail_next:
                return self._fail_next.pop(0), {"error": "Injected fault"}
            if time.monotonic() < self._down_until:
                return 503, {"error": "Service unavailable"}
        if method != "POST":
            return 405, {"error": "Method not allowed"}
        if not self.secret:
            return 500, {"error": "Server misconfigured"}
        signature = {k.lower(): v for k, v in headers.items()}.get(SIGNATURE_HEADER.lower())
        if not verify(self.secret, body, signature):
            return 401, {"error": "Unauthorized"}
        try:
            payload = json.loads(body)
        except ValueError:
            return 500, {"error": "Internal server error", "details": "invalid JSON"}
        job_id = payload.get("job_id") or payload.get("jobId")
        status = payload.get("status")
        if not job_id or not status:
            return 400, {"error": "Missing required fields: job_id/jobId, status"}
        if status not in VALID_STATUSES:
            return 500, {"error": "Failed to update job"}
        with self._lock:
            return self._record(str(job_id), status, payload)

    def _record(
        self, job_id: str, status: str, payload: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        job = self._db.execute("select * from jobs where id = ?", (job_id,)).fetchone()
        assets = payload.get("assets") or []
        if job is None:
            if self.strict_jobs:
                return 200, {"success": True, "skipped": True}
            first_url = assets[0]["url"] if assets else ""
            user_id = first_url.removeprefix(BUCKET_PREFIX).split("/")[0] or None
            self._db.execute("insert into jobs (id, user_id) values (?, ?)", (job_id, user_id))
            job = self._db.execute("select * from jobs where id = ?", (job_id,)).fetchone()
        if job["status"] in TERMINAL_STATUSES:
            return 200, {"success": True, "skipped": True}
        job_metadata = {**json.loads(job["metadata"]), **(payload.get("metadata") or {})}
        error_message = payload.get("error_message")
        if status == "failed" and not error_message:
            error_message = f"{job_metadata.get('error_type')}: Internal processing error"
        now = datetime.now(UTC).isoformat()
        self._db.execute(
            "update jobs set status = ?, error_message = ?, metadata = ?, completed_at = ? "
            "where id = ?",
            (status, error_message, json.dumps(job_metadata), now, job_id),
        )
        for position, asset in enumerate(assets):
            url = str(asset["url"]).removeprefix(BUCKET_PREFIX)
            thumb = asset.get("thumbnail_url")
            meta = asset.get("metadata") or {}
            settings = {**meta, **(payload.get("metadata") or {})}
            self._db.execute(
                "insert or ignore into workspace_assets (job_id, asset_index, user_id, asset_type,"
                " temp_storage_path, thumbnail_path, mime_type, generation_seed,"
                " generation_settings, asset_metadata, created_at)"
                " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    position,
                    job["user_id"],
                    "video" if url.endswith(".mp4") else "image",
                    url,
                    thumb.removeprefix(BUCKET_PREFIX) if thumb else None,
                    backend_mime_type(url),
                    meta.get("seed"),
                    json.dumps(settings),
                    json.dumps(meta),
                    now,
                ),
            )
        self._db.commit()
        return 200, {
            "success": True,
            "jobId": job_id,
            "status": status,
            "message": "Callback processed successfully",
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, answer = receiver.handle(self.command, body, dict(self.headers.items()))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("Callback receiver: " + format, *args)

        return Handler
