"""Two measured Prefect adjustments for a process or server that runs many jobs.

Held clients: each flow run called in a process that holds no Prefect client builds its own (an
async one, and sync ones for the engine's result-storage look-ups), each with a TLS context whose
CA bundle takes about 25 ms to read. A process running many jobs in a row holds one of each::

    async with held_prefect_clients():
        for job in jobs:
            await generate_job(job)

Batched task-run writes: a Prefect server on SQLite records every task-run event in its own
write transaction by default. Writes landing while the next flow run is created make that insert
fail with "database is locked" (503), which the client retries after about 2 s: on this
project's back-to-back jobs, most of them. Batching the recorder's writes removed those retries
in the benchmarks; task runs then reach the database up to a second later. Servers on
PostgreSQL do not need it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager

BATCHED_TASK_RUN_WRITES = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
}
"""Server settings: the task-run recorder writes up to 200 events at once, at least every 1 s."""


def batch_task_run_writes(environ: MutableMapping[str, str] | None = None) -> None:
    """Set :data:`BATCHED_TASK_RUN_WRITES` where unset, for a server started from ``environ``
    (default ``os.environ``: the ephemeral API this process may start inherits it)."""
    target = os.environ if environ is None else environ
    for name, value in BATCHED_TASK_RUN_WRITES.items():
        target.setdefault(name, value)


@asynccontextmanager
async def held_prefect_clients() -> AsyncIterator[None]:
    """Reuse one async and one sync Prefect client for every run started inside."""
    from prefect.context import AsyncClientContext, SyncClientContext  # after settings are set

    async with AsyncClientContext.get_or_create():
        with SyncClientContext.get_or_create():
            yield
