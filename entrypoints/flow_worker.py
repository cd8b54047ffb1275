"""The project's worker type, ``genjobs-process``: Prefect's process worker that takes a flow run
as soon as the server schedules it, instead of at its next poll.

A process worker finds new flow runs by polling its pool every ``PREFECT_WORKER_QUERY_SECONDS``,
so a triggered job waits half that interval on average before anything happens, and a short
interval costs the server a query per worker several times a second. This worker also listens
on the server's event stream (``/api/events/out``) for ``prefect.flow-run.Scheduled`` and polls
at once when a run is scheduled in its own pool (and queues, where it serves only some). Events
that arrive together are answered by one poll. The timed poll stays as the safety net: for runs
scheduled for later, and while the event stream is down (the worker subscribes again every few
seconds, and says so in its log). With the events, the poll can run every few seconds.

Where the API is plain HTTP (and the operator set no CA file for Prefect, nor skip-verify), the
worker's Prefect clients read a one-certificate CA file instead of the system's or certifi's
bundle (genjobs/plain_http_ca.py): the worker opens clients for every run it starts, and the
bundle's OpenSSL memory grew a process worker from 95 to 215 MiB over 1,000 jobs. The file is
``$GENJOBS_HOME/worker-plain-http-ca.pem``; the flow runs the worker starts inherit the setting
(Prefect passes a worker's settings on to its runs), so the file is never removed: a run may
outlive the worker.

As it takes a generation run whose renders go to the GPU workers, the worker validates the
payload and queues the render itself, before it starts the run's process: the GPU worker renders
while the run starts, and the run adopts that render (tasks/render_ahead.py). It does so only
where the run's Prefect settings are its own; a refused payload is queued nothing.

Everything else is the process worker's, unchanged: the job template and its variables, the
flow-run command (``python -m genjobs.warm_client`` on the GPU pool), the limit, cancellation and
crash reporting. Only public members of Prefect's worker classes are used: ``setup``,
``teardown``, ``run`` and ``get_and_submit_flow_runs``.

The project registers the type through the ``prefect.collections`` entry point, so with the
project installed::

    prefect work-pool create gpu-pool --type genjobs-process
    prefect worker start --pool gpu-pool

A pool created as ``--type process`` works too: start the worker with ``--type genjobs-process``
(Prefect logs that the types differ; the job template is the same).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio.abc
from prefect.client.schemas.objects import FlowRun
from prefect.events import Event
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.logging.loggers import get_worker_logger
from prefect.settings import PREFECT_API_SSL_CERT_FILE, get_current_settings, temporary_settings
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from flows.generate import generate_job
from genjobs.plain_http_ca import spares_bundle, write_plain_http_ca_file
from genjobs.settings import Settings
from tasks.render_ahead import (
    own_prefect_environment,
    plan_ahead,
    queue_render_ahead,
    settings_differ,
)

WAKE_EVENT = "prefect.flow-run.Scheduled"
RESUBSCRIBE_SECONDS = 5.0
"""How long the worker waits before subscribing again after the event stream failed."""


WORKER_CA_NAME = "worker-plain-http-ca.pem"


@contextlib.contextmanager
def plain_http_ca_settings(folder: Path) -> Iterator[Path | None]:
    """Within: Prefect's settings point API clients at a one-certificate CA file written to
    ``folder`` (and left there), where the API is plain HTTP and the operator set no CA file for
    Prefect, nor skip-verify. Yields the file, or ``None`` where the settings stay."""
    api = get_current_settings().api
    # A file the operator set for Prefect stays; Prefect's default (SSL_CERT_FILE, else
    # certifi's bundle) is what this spares.
    operator_file = api.ssl_cert_file if "ssl_cert_file" in api.model_fields_set else None
    if not spares_bundle(api.url, operator_file, api.tls_insecure_skip_verify):
        yield None
        return
    ca_file = write_plain_http_ca_file(folder, WORKER_CA_NAME)
    if ca_file is None:
        yield None
        return
    with temporary_settings(updates={PREFECT_API_SSL_CERT_FILE: str(ca_file)}):
        yield ca_file


def scheduled_in(event: Event, pool: str, queues: Sequence[str]) -> bool:
    """Whether ``event`` schedules a flow run in ``pool`` (and one of ``queues``, when given)."""
    if event.event != WAKE_EVENT:
        return False
    related = {resource.role: resource.get("prefect.resource.name") for resource in event.related}
    if related.get("work-pool") != pool:
        return False
    return not queues or related.get("work-queue") in queues


class EventDrivenProcessWorker(ProcessWorker):
    """A process worker that also polls when the server schedules a run in its pool."""

    type = "genjobs-process"
    _display_name = "Process (event-driven)"
    _description = (
        "Runs each flow run as a subprocess, like the process worker, and takes a new run as "
        "soon as the server schedules it instead of at its next poll."
    )

    def __init__(
        self, work_pool_name: str, work_queues: list[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(work_pool_name=work_pool_name, work_queues=work_queues, **kwargs)
        self.pool_name = work_pool_name
        self.queue_names = tuple(work_queues or ())
        self._wake: asyncio.Event | None = None
        self._listeners: list[asyncio.Task[None]] = []
        self.ca_file: Path | None = None
        """The worker's own CA file while it runs (:func:`plain_http_ca_settings`)."""
        self._settings = contextlib.ExitStack()
        self.render_ahead = True
        """Whether it queues the renders of generation runs (GENJOBS_RENDER_AHEAD)."""
        self._own_prefect_env: dict[str, str | None] | None = None  # read at its first run

    async def setup(self) -> None:
        # First: the worker's client and every task it starts (each run's clients among them)
        # inherit the settings. Entered and left in the task that enters the worker.
        try:
            settings = Settings()
            self.render_ahead = settings.render_ahead
            home: Path | None = settings.ensure_home()
        except Exception as exc:
            home = None
            get_worker_logger(self).warning(
                "Worker %r keeps the full CA bundle: GENJOBS_HOME is not usable (%s).",
                self.name,
                exc,
            )
        if home is not None:
            self.ca_file = self._settings.enter_context(plain_http_ca_settings(home))
        if self.ca_file is not None:
            get_worker_logger(self).info(
                "Worker %r reads a one-certificate CA file for its plain-HTTP API.", self.name
            )
        try:
            await super().setup()
        except BaseException:
            self._leave_settings()
            raise
        self._wake = asyncio.Event()
        self._listeners = [
            asyncio.create_task(self._listen(), name="scheduled-events"),
            asyncio.create_task(self._poll_when_woken(), name="poll-on-event"),
        ]

    async def teardown(self, *exc_info: Any) -> None:
        for task in self._listeners:
            task.cancel()
        for task in self._listeners:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._listeners = []
        try:
            await super().teardown(*exc_info)
        finally:
            self._leave_settings()

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        """Queue the run's render (where it is a generation run), then run it as the process
        worker does."""
        await self._queue_render_ahead(flow_run, configuration)
        return await super().run(flow_run, configuration, task_status)

    async def _queue_render_ahead(
        self, flow_run: FlowRun, configuration: ProcessJobConfiguration
    ) -> None:
        """Queue the render of ``flow_run`` (tasks/render_ahead.py); never raises: the run
        queues its own render where this one is not there."""
        if not self.render_ahead:
            return
        logger = get_worker_logger(self)
        try:
            plan = plan_ahead(
                configuration.labels.get("prefect.io/flow-name"),
                flow_run.parameters,
                configuration.env,
            )
            if plan is None:
                return
            if self._own_prefect_env is None:
                self._own_prefect_env = own_prefect_environment()
            differ = settings_differ(configuration.env, self._own_prefect_env)
            if differ:
                logger.info(
                    "Worker %r leaves the render of flow run %s to the run: its Prefect "
                    "settings differ from the worker's (%s).",
                    self.name,
                    flow_run.id,
                    ", ".join(differ),
                )
                return
            await queue_render_ahead(generate_job, flow_run, plan, self.client)
        except Exception as exc:
            logger.warning(
                "Worker %r could not queue the render of flow run %s; the run queues it itself: %s",
                self.name,
                flow_run.id,
                exc,
            )
            return
        logger.info("Worker %r queued the render of job %s.", self.name, plan.job_id)

    def _leave_settings(self) -> None:
        self._settings.close()
        self.ca_file = None

    async def _listen(self) -> None:
        """Set the wake-up for each run scheduled in this pool; subscribe again on failure."""
        logger = get_worker_logger(self)
        event_filter = EventFilter(event=EventNameFilter(name=[WAKE_EVENT]))  # type: ignore[call-arg]
        while True:
            try:
                async with get_events_subscriber(
                    filter=event_filter, reconnect_on_clean_close=True
                ) as events:
                    logger.info(
                        "Worker %r takes flow runs of pool %r as they are scheduled.",
                        self.name,
                        self.pool_name,
                    )
                    async for event in events:
                        if scheduled_in(event, self.pool_name, self.queue_names):
                            assert self._wake is not None
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "Worker %r lost the server's event stream (%s); it polls on its interval "
                    "and subscribes again in %.0f s.",
                    self.name,
                    exc,
                    RESUBSCRIBE_SECONDS,
                )
            await asyncio.sleep(RESUBSCRIBE_SECONDS)

    async def _poll_when_woken(self) -> None:
        """One poll per wake-up: events that arrive during a poll are answered by the next."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.get_and_submit_flow_runs()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                get_worker_logger(self).warning(
                    "Worker %r could not take the newly scheduled flow runs (%s); its next "
                    "poll will.",
                    self.name,
                    exc,
                )
