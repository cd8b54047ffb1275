"""Where a flow's render runs: in its own process, or on the warm GPU workers.

With ``render_dispatch = "gpu_workers"`` the flow hands the plan to the family's background task
(``render_sdxl`` / ``render_wan``), as ``.delay()`` would (:func:`submit`), and waits for it.
Prefect keeps that queue in the server's memory and a task run held by a worker that dies is
never handed out again, so the flow watches its render:

- not started within ``render_queue_timeout_seconds`` (or still waiting after the API was
  unreachable, as across a server restart, which empties the queue): presumed lost;
- running for more than ``render_run_timeout_seconds``: presumed stuck (a crashed worker leaves
  its task run Running for ever);
- running while its GPU worker has sent no heartbeat (:data:`HEARTBEAT_EVENT`, every
  ``render_heartbeat_seconds`` while it holds the render) for ``render_stall_seconds``:
  presumed lost with its worker (killed, its host gone).

Either way the old task run is marked Cancelled with the name ``Superseded`` and the same plan is
submitted again, at most ``render_resubmits`` times. A superseded render that still runs or later
reaches a worker stops at its first check (tasks/render.py), so a job is not rendered twice; were
it to finish anyway, its pixels, seeds and object paths are the same (seeds derive from the job
id and uploads upsert), so nothing is duplicated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx

# Submitting imports prefect.task_worker on first use (0.14 s): at start-up here, not in a job.
import prefect.task_worker  # noqa: F401
from prefect import Task, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType, TaskRun
from prefect.context import FlowRunContext
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, State
from prefect.types import DateTime
from prefect.utilities.engine import emit_task_run_state_change_event

from genjobs.assets import RenderedBatch
from genjobs.connections import Connections
from genjobs.errors import RenderTimeout
from genjobs.jobs.plan import RenderPlan
from genjobs.settings import Settings
from tasks.render import SUPERSEDED, gpu_render_task, render_assets, render_tags
from tasks.render_ahead import plan_key, render_ahead_id
from tasks.render_completion import RenderCompletion

logger = logging.getLogger(__name__)

_NOT_STARTED = {StateType.SCHEDULED, StateType.PENDING}
HEARTBEAT_EVENT = "genjobs.render.heartbeat"
"""The event a GPU worker emits every ``render_heartbeat_seconds`` for each render it holds."""
_API_TROUBLE = (httpx.HTTPError, OSError)
ADOPTED_RECHECKS = (0.25, 0.5, 1.0, 2.0)
"""After it adopts a render that had not ended, a flow reads it again after these waits before
its usual poll: a render that ended just before the flow subscribed sent its final event to no
one, and the API records that state from the event only a moment later (later under load)."""


def heartbeat_resource(task_run_id: UUID) -> dict[str, str]:
    """The resource of a render's heartbeat events: the render's task run."""
    return {"prefect.resource.id": f"genjobs.render.{task_run_id}"}


class LocalRender:
    """A render in this process: its task runs when :meth:`result` is awaited."""

    def __init__(self, plan: RenderPlan) -> None:
        self.plan = plan

    async def result(self, connections: Connections) -> RenderedBatch:
        """Render now, with the flow's ``connections``."""
        render = render_assets.with_options(tags=render_tags(self.plan))
        return await render(self.plan, connections)

    async def withdraw(self, message: str) -> None:
        """Give the render up before :meth:`result`: nothing has started, nothing to undo."""


async def start_render(plan: RenderPlan, settings: Settings) -> LocalRender | QueuedRender:
    """Queue ``plan`` on the GPU workers, or prepare it to render here (the settings'
    ``render_dispatch``; a queued render is watched with their ``render_*`` limits).

    The flow makes the rest of its job ready while a queued render runs, then awaits
    ``result(connections)`` (a local render uses them; a queued one renders with its GPU
    worker's); ``withdraw(message)`` gives it up instead.
    """
    if settings.render_dispatch == "gpu_workers":
        queued = QueuedRender(plan, settings)
        await queued.start()
        return queued
    return LocalRender(plan)


class QueuedRender:
    """A render handed to the GPU workers; :meth:`result` waits for it, submitting it again
    when it is lost or stuck."""

    def __init__(self, plan: RenderPlan, settings: Settings) -> None:
        self.plan = plan
        self.settings = settings
        self.task = gpu_render_task(plan)
        self.task_run_id: UUID | None = None
        self.completion: RenderCompletion | None = None
        self.submitted = 0.0
        self.rechecks: list[float] = []  # waits before the next reads, then every poll

    async def start(self) -> None:
        """Adopt the render the project's worker queued for this run's attempt, where it queued
        one of this plan (tasks/render_ahead.py), or queue it. Outside a flow run, or where the
        worker queued another plan (withdrawn here), :meth:`submit`."""
        context = FlowRunContext.get()
        if context is None or context.flow_run is None:
            await self.submit()
            return
        attempt = context.flow_run.run_count  # read once Running: 1 for its first run
        task_run_id = render_ahead_id(context.flow_run.id, attempt)
        self.completion = RenderCompletion(task_run_id)  # before the read: no end is missed
        await self.completion.start()
        try:
            async with get_client() as client:
                task_run: TaskRun | None = await client.read_task_run(task_run_id)
        except ObjectNotFound:
            task_run = None
        except BaseException:
            await self._stop_listening()
            raise
        if task_run is None:  # the worker queued none: queue it under that id, heard already
            await self._create(task_run_id)
            return
        self.task_run_id, self.submitted = task_run_id, time.monotonic()
        if task_run.dynamic_key != plan_key(self.plan, attempt):
            await self.withdraw("The worker queued a render of another plan than the run's")
            await self.submit()
            return
        if task_run.state is not None and task_run.state.is_final():
            self.completion.ended(task_run.state)  # it ended before the subscription
        else:
            self.rechecks = list(ADOPTED_RECHECKS)
        logger.debug("Flow run %s renders with the render its worker queued.", context.flow_run.id)

    async def submit(self) -> None:
        """Queue the render, listening for its final state before its task run exists."""
        await self._stop_listening()
        task_run_id = uuid4()
        self.completion = RenderCompletion(task_run_id)
        await self.completion.start()
        await self._create(task_run_id)

    async def _create(self, task_run_id: UUID) -> None:
        """Create the render's task run, its completion already listened for."""
        try:
            self.task_run_id = await submit(self.task, self.plan, task_run_id)
        except BaseException:
            await self._stop_listening()
            raise
        self.submitted = time.monotonic()

    async def _stop_listening(self) -> None:
        if self.completion is not None:
            await self.completion.close()
            self.completion = None

    async def withdraw(self, message: str) -> None:
        """Mark the queued render Cancelled/Superseded: no worker renders it any more, and one
        that already started stops at its next step."""
        if self.task_run_id is None:
            return
        await self._stop_listening()
        async with get_client() as client:
            await client.set_task_run_state(
                self.task_run_id, Cancelled(name=SUPERSEDED, message=message), force=True
            )

    async def _stalled(self, *, ever_taken: bool) -> bool:
        """Whether the render's worker has sent no heartbeat for ``render_stall_seconds``;
        with ``ever_taken``, only where a worker sent one before (it took the render).
        ``False`` when the API cannot tell: a render is not given up on an unanswered question.
        """
        assert self.task_run_id is not None
        try:
            last = await _last_heartbeat(self.task_run_id)
        except _API_TROUBLE as exc:
            logger.warning("The heartbeats of render %s cannot be read: %s", self.task_run_id, exc)
            return False
        if last is None:
            return not ever_taken
        silent = (datetime.now(UTC) - last).total_seconds()
        return silent > self.settings.render_stall_seconds

    async def result(self, connections: Connections) -> RenderedBatch:
        """Wait for the render; submit it again when lost or stuck. ``connections`` are the
        flow's: the GPU worker renders with its own.

        Raises:
            RenderTimeout: The render was lost or stuck once more than ``render_resubmits``.
            JobError: Whatever the render raised (for example JobCancelled, OutOfMemory).
        """
        try:
            state = await self._final_state()
        finally:
            await self._stop_listening()
        batch: RenderedBatch = await state.aresult()  # raises what the render raised
        return batch

    async def _final_state(self) -> State[Any]:
        plan, settings = self.plan, self.settings
        assert self.task_run_id is not None, "submit() first"
        run_logger = get_run_logger()
        resubmits = 0
        running_since: float | None = None
        api_trouble = False
        stalled = f"its worker sent no heartbeat for {settings.render_stall_seconds:.0f} s"
        while True:
            try:
                assert self.completion is not None
                wait = self.rechecks.pop(0) if self.rechecks else settings.render_poll_seconds
                state = await self.completion.wait(min(wait, settings.render_poll_seconds))
                if state is None:  # no completion event yet: how is it doing?
                    state = await _read_state(self.task_run_id)
            except _API_TROUBLE as exc:
                if not api_trouble:
                    run_logger.warning(
                        "The Prefect API is unreachable while job %s waits for its render (%s).",
                        plan.job_id,
                        exc,
                    )
                api_trouble = True
                await asyncio.sleep(min(settings.render_poll_seconds, 1.0))
                continue
            if state is not None and state.is_final():
                break
            now = time.monotonic()
            reason: str | None = None
            if state is None or state.type in _NOT_STARTED:
                running_since = None
                if api_trouble:
                    reason = "the API was unreachable while it waited (a restart empties the queue)"
                elif now - self.submitted > settings.render_queue_timeout_seconds:
                    reason = f"it waited {now - self.submitted:.0f} s without starting"
                elif now - self.submitted > settings.render_stall_seconds and (
                    await self._stalled(ever_taken=True)
                ):  # a worker took it, then died before it started
                    reason = stalled
            elif state.type == StateType.RUNNING:
                running_since = running_since or now
                if now - running_since > settings.render_run_timeout_seconds:
                    reason = f"it ran for {now - running_since:.0f} s without finishing"
                elif now - running_since > settings.render_stall_seconds and (
                    await self._stalled(ever_taken=False)
                ):
                    reason = stalled
            api_trouble = False
            if reason is None:
                continue
            if resubmits >= settings.render_resubmits:
                raise RenderTimeout(
                    f"The render of job {plan.job_id} did not finish: {reason}, and it was "
                    f"already submitted again {resubmits} time(s)"
                )
            await self.withdraw(f"Submitted again: {reason}")
            resubmits += 1
            run_logger.warning(
                "The render of job %s is presumed lost or stuck (%s); submitting it again "
                "(%d of %d).",
                plan.job_id,
                reason,
                resubmits,
                settings.render_resubmits,
            )
            await self.submit()
            running_since = None
        return state


async def submit(task: Task[..., Any], plan: RenderPlan, task_run_id: UUID) -> UUID:
    """Queue a background render, as ``task.delay(plan)`` does, on the flow's own event loop.

    ``delay()`` is synchronous: it runs the submission on another event loop with an API client
    of its own, built for each call (measured 50-80 ms of each deployed job). Here the task run
    and its stored parameters are created with the run's client, then the Scheduled event is
    emitted, as ``delay()`` does.
    """
    task_run = await task.create_run(id=task_run_id, parameters={"plan": plan}, deferred=True)
    assert task_run.state is not None  # created Scheduled
    emit_task_run_state_change_event(
        task_run=task_run, initial_state=None, validated_state=task_run.state
    )
    return task_run.id


async def _read_state(task_run_id: UUID) -> State[Any] | None:
    """The render's current state; ``None`` while the API has not recorded one yet."""
    async with get_client() as client:
        run = await client.read_task_run(task_run_id)
    return run.state


async def _last_heartbeat(task_run_id: UUID) -> datetime | None:
    """When the render's worker last sent a heartbeat (its clock); ``None`` if never."""
    beats = EventFilter(
        occurred=EventOccurredFilter(until=DateTime.now(UTC) + timedelta(days=1)),
        event=EventNameFilter(name=[HEARTBEAT_EVENT]),
        resource=EventResourceFilter(id=[heartbeat_resource(task_run_id)["prefect.resource.id"]]),
    )  # newest first
    async with get_client() as client:
        page = await client.read_events(filter=beats, limit=1)
    return page.events[0].occurred if page.events else None
