"""Measured Prefect adjustments for a process or server that runs many jobs, and the ephemeral
API's start-up time.

Held clients: each flow run called in a process that holds no Prefect client builds its own (an
async one, and sync ones for the engine's result-storage look-ups), each with a TLS context whose
CA bundle takes about 25 ms to read. A process running many jobs in a row holds one of each::

    async with held_prefect_clients():
        for job in jobs:
            await generate_job(job)

Batched event writes: a Prefect server on SQLite records task-run events in their own write
transactions, and persists events every 20, so a job's 40-odd events make several writes a
second. A write landing while the next flow run is created makes that insert fail with "database
is locked" (503), which the client retries after about 2 s: measured on back-to-back jobs of the
embedded default, 40 % of flow runs, a mean of 1.02 s per job against a median of 0.2 s.
Batching both (the task-run recorder every second, the event persister at Prefect's own 5 s
interval) brought that to 1 flow run in 60 and the mean to 0.25 s. Task runs then reach the
database up to a second later, events up to 5 s. Servers on PostgreSQL do not need it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager

BATCHED_EVENT_WRITES = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "1000",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "5",
}
"""Server settings: the task-run recorder writes up to 200 events at once, at least every second;
the event persister up to 1,000, at least every 5 s."""


EPHEMERAL_STARTUP_SECONDS = "120"
"""How long the ephemeral API may take to start: its first start migrates a new database, which
took over Prefect's 20 s default on a slow 2-core machine."""


def allow_slow_ephemeral_start(environ: MutableMapping[str, str] | None = None) -> None:
    """Give the ephemeral API :data:`EPHEMERAL_STARTUP_SECONDS` to start, where unset."""
    target = os.environ if environ is None else environ
    target.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_SECONDS)


def batch_event_writes(environ: MutableMapping[str, str] | None = None) -> None:
    """Set :data:`BATCHED_EVENT_WRITES` where unset, for a server started from ``environ``
    (default ``os.environ``: the ephemeral API this process may start inherits it)."""
    target = os.environ if environ is None else environ
    for name, value in BATCHED_EVENT_WRITES.items():
        target.setdefault(name, value)


@asynccontextmanager
async def held_prefect_clients() -> AsyncIterator[None]:
    """Reuse one async and one sync Prefect client for every run started inside."""
    from prefect.context import AsyncClientContext, SyncClientContext  # after settings are set

    async with AsyncClientContext.get_or_create():
        with SyncClientContext.get_or_create():
            yield
