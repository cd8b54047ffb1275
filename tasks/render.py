"""Render a plan on the GPU (or CPU) and leave the frames in the job's scratch folder.

Three tasks share one body. ``render_assets`` runs in the flow's own process (the embedded
default) and takes the flow's :class:`~genjobs.connections.Connections` as a parameter.
``render_sdxl`` and ``render_wan`` are what the warm GPU workers serve
(entrypoints/gpu_worker.py): a flow queues them as ``.delay()`` does (tasks/render_dispatch.py),
one task key per model family, so a worker can serve one family or both.

A queued render's parameters are serialised by Prefect, so they carry the plan alone: no client,
no secret travels. The GPU worker is an edge: it builds its own connections (settings, blocks,
its ``--device``) and serves inside :func:`serving_with`, which sets :data:`serving_connections`
for the tasks it runs (asyncio tasks and ``asyncio.to_thread`` inherit it). A background render
outside it refuses to start: nothing here falls back to the environment.

While a render runs, a :class:`RenderWatch` is called after every diffusion step: it feeds the
process-local progress listeners and emits a ``genjobs.render.step`` event, and its monitor
thread updates a progress artifact at most about once a second (created at the first update, so
a shorter render has none) and asks the API at most every ``cancel_check_seconds`` whether the
job's flow run was cancelled (or this render superseded); the next step then raises
:class:`~genjobs.errors.JobCancelled`, which stops the pipeline there.
The pipeline call holds ``GPU_LOCK`` (genjobs/gpu_schedule.py): one pipeline at a time per
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from contextvars import ContextVar
from typing import Any
from uuid import UUID

import httpx
import numpy as np
from prefect import Task, get_run_logger, task
from prefect.artifacts import ProgressArtifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.context import SyncClientContext, TaskRunContext
from prefect.events import emit_event

from genjobs import progress
from genjobs.assets import RenderedBatch, scratch_dir
from genjobs.connections import Connections
from genjobs.errors import JobCancelled
from genjobs.gpu_schedule import GPU, GPU_LOCK
from genjobs.jobs.plan import RenderPlan
from genjobs.references import ReferenceFetcher, fetch_all
from genjobs.render.cache import PIPELINES
from genjobs.render.registry import renderer_for
from genjobs.settings import Settings
from genjobs.tls import ssl_context
from tasks.naming import run_name
from tasks.retries import retry_if_transient

logger = logging.getLogger(__name__)

SUPERSEDED = "Superseded"
"""Name of the Cancelled state a flow gives a render it has submitted again (render_dispatch)."""

_FLOW_STOPPED = {StateType.CANCELLING, StateType.CANCELLED}


class FlowRunCancelled(JobCancelled):
    """The job's flow run was cancelled through Prefect while it rendered.

    The flow leaves the failed callback to its ``on_cancellation`` hook, which Prefect runs
    exactly once (in the flow's process, or on the worker that stops it).
    """


_FLOW_ENDED = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED}


def worker_label(settings: Settings) -> str:
    """Who renders: ``host/pid/device``, shown in logs and in ``genjobs.render.*`` events."""
    return f"{socket.gethostname()}/{os.getpid()}/{settings.device}"


class RenderWatch:
    """The per-step callback of one render, and the thread that talks to the API for it.

    The callback itself stays cheap (the GPU waits while it runs): it feeds the process-local
    progress listeners, emits a buffered ``genjobs.render.step`` event and raises the stop a
    monitor thread has found. The monitor, while the pipeline runs, updates the progress
    artifact at most every ``progress_update_seconds`` and asks the API at most every
    ``cancel_check_seconds`` whether the flow run was cancelled (or ended) or this render
    superseded.

    Use as a context manager around the pipeline call, after :meth:`start`.

    Args:
        plan: The plan being rendered.
        settings: Throttle intervals (``progress_update_seconds``, ``cancel_check_seconds``).
        flow_run_id: The flow run that asked for the render (cancelling it stops the render).
        task_run_id: This render's task run.
        background: Whether a GPU worker runs it for a flow elsewhere (the flow may then
            supersede it with a new submission); ``False`` when it runs in the flow's process.

    The monitor thread opens one synchronous Prefect client for the whole render (the
    artifact helpers find it in the thread's context), so the pipeline never waits for it.
    It creates the progress artifact at its first update, once the render has run for
    ``progress_update_seconds`` (at once where that is 0): a render that ends sooner has no
    progress to watch (its asset table follows at once), and its job is spared two API writes.
    """

    def __init__(
        self,
        plan: RenderPlan,
        settings: Settings,
        flow_run_id: UUID | None,
        task_run_id: UUID | None,
        *,
        background: bool = False,
    ):
        self.plan = plan
        self.settings = settings
        self.client: SyncPrefectClient | None = None
        self.flow_run_id = flow_run_id
        self.task_run_id = task_run_id
        self.background = background
        self.resource = {"prefect.resource.id": f"genjobs.job.{plan.job_id}"}
        self.checks = 0
        self.artifact_updates = 0
        self._artifact_id: UUID | None = None
        self._step = (0, 0)
        self._shown = (0, 0)
        self._stop: JobCancelled | None = None
        self._done = threading.Event()
        self._monitor: threading.Thread | None = None

    # -- before and after the pipeline -------------------------------------------------------
    def start(self) -> None:
        """Before the pipeline: a background render checks that it was not superseded while it
        waited in the queue and that its flow run has not ended (a run whose process never
        started, for one; tasks/render_ahead.py)."""
        if self.background:
            with get_client(sync_client=True) as client:
                self.client = client
                try:
                    self._probe(self._stopped_while_queued)
                finally:
                    self.client = None
            if self._stop is not None:
                raise self._stop

    def __enter__(self) -> RenderWatch:
        context = contextvars.copy_context()  # the run context: artifacts link to the run
        self._monitor = threading.Thread(
            target=context.run,
            args=(self._watch,),
            name=f"render-watch-{self.plan.job_id}",
            daemon=True,
        )
        self._monitor.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self._step = (1, 1)  # the monitor shows the render complete before it stops
        self._done.set()
        if self._monitor is not None:
            self._monitor.join(timeout=30)

    # The artifact helpers pick their async form inside an async task run, even in this thread;
    # ``_sync=True`` asks for the blocking form the monitor thread needs. The flow run is named:
    # a render its worker queued (tasks/render_ahead.py) runs without the run's context.
    def _create_artifact(self) -> None:
        artifact = ProgressArtifact(
            progress=0.0,
            key=f"render-progress-{self.plan.job_id}",
            description=f"Render of job {self.plan.job_id} ({self.plan.job_type})",
            flow_run_id=self.flow_run_id,
        )
        try:
            created = artifact.create(_sync=True)  # type: ignore[call-arg]
            self._artifact_id = created.id  # type: ignore[union-attr]
        except Exception as exc:
            logger.warning(
                "Could not create the progress artifact of job %s: %s", self.plan.job_id, exc
            )

    # -- the step callback ------------------------------------------------------------------
    def __call__(self, done: int, total: int) -> None:
        GPU.step(done, total)
        self._step = (done, total)
        progress.report("render", done, total)
        emit_event(
            event="genjobs.render.step",
            resource=self.resource,
            payload={"step": done, "total": total},
        )
        if self._stop is not None:
            raise self._stop

    # -- the monitor thread -----------------------------------------------------------------
    def _watch(self) -> None:
        try:
            with SyncClientContext.get_or_create() as context:
                self.client = context.client
                self._monitor_loop()
        except Exception as exc:  # monitoring never fails a render
            logger.warning("Could not watch the render of job %s: %s", self.plan.job_id, exc)
        finally:
            self.client = None

    def _monitor_loop(self) -> None:
        settings = self.settings
        tick = max(min(settings.progress_update_seconds, settings.cancel_check_seconds), 0.05)
        last_check = last_update = time.monotonic()
        if settings.progress_update_seconds <= 0:
            self._create_artifact()
        while not self._done.wait(tick):
            now = time.monotonic()
            if now - last_update >= settings.progress_update_seconds and self._step != self._shown:
                if self._artifact_id is None:
                    self._create_artifact()  # here, so the pipeline does not wait for it
                self._update(self._step)
                last_update = now
            if now - last_check >= settings.cancel_check_seconds and self._stop is None:
                self._probe(self._stop_reason)
                last_check = now
        if self._step == (1, 1):
            self._update(self._step)

    def _probe(self, probe: Any) -> None:
        """Run one check; API trouble is logged and ignored (monitoring never fails a render)."""
        if self.client is None:
            return
        self.checks += 1
        try:
            reason = probe()
        except JobCancelled as exc:
            self._stop = exc
            return
        except Exception as exc:
            logger.warning(
                "Could not check whether job %s is still wanted: %s", self.plan.job_id, exc
            )
            return
        if reason:
            self._stop = JobCancelled(reason)

    def _superseded_while_queued(self) -> str | None:
        assert self.client is not None
        if self.task_run_id is None:
            return None
        history = self.client.read_task_run_states(self.task_run_id)
        if any(state.name == SUPERSEDED for state in history):
            return f"The render of job {self.plan.job_id} was superseded by a new submission"
        return None

    def _stopped_while_queued(self) -> str | None:
        return self._superseded_while_queued() or self._flow_run_stop_reason()

    def _stop_reason(self) -> str | None:
        assert self.client is not None
        if self.background and self.task_run_id is not None:
            state = self.client.read_task_run(self.task_run_id).state
            if state is not None and state.name == SUPERSEDED:
                return f"The render of job {self.plan.job_id} was superseded by a new submission"
        return self._flow_run_stop_reason()

    def _flow_run_stop_reason(self) -> str | None:
        """Why the render's flow run wants it no more: it was cancelled (raises
        :class:`FlowRunCancelled`) or it ended; ``None`` while it waits for the render."""
        assert self.client is not None
        if self.flow_run_id is None:
            return None
        flow_state = self.client.read_flow_run(self.flow_run_id).state
        if flow_state is None:
            return None
        if flow_state.type in _FLOW_STOPPED:
            raise FlowRunCancelled(f"The job {self.plan.job_id} was cancelled during its render")
        if flow_state.type in _FLOW_ENDED:
            return (
                f"The flow run of job {self.plan.job_id} ended ({flow_state.type.value}) "
                "before its render finished"
            )
        return None

    def _update(self, step: tuple[int, int]) -> None:
        self._shown = step
        if self._artifact_id is None:
            return  # no client, or the artifact could not be created
        done, total = step
        try:
            update_progress_artifact(  # type: ignore[call-arg]
                self._artifact_id, progress=100.0 * done / max(total, 1), _sync=True
            )
            self.artifact_updates += 1
        except Exception as exc:
            logger.warning("Could not update the progress of job %s: %s", self.plan.job_id, exc)


def _run_ids() -> tuple[UUID | None, UUID | None]:
    context = TaskRunContext.get()
    if context is None:
        return None, None
    return context.task_run.flow_run_id, context.task_run.id


serving_connections: ContextVar[Connections | None] = ContextVar(
    "genjobs_serving_connections", default=None
)
"""The connections of the GPU worker serving the background renders; set by
:func:`serving_with` alone."""


@contextlib.contextmanager
def serving_with(connections: Connections) -> Iterator[Connections]:
    """Serve the background renders started inside with ``connections`` (a GPU worker's)."""
    token = serving_connections.set(connections)
    try:
        yield connections
    finally:
        serving_connections.reset(token)


def _serving() -> Connections:
    connections = serving_connections.get()
    if connections is None:
        raise RuntimeError(
            "A background render runs only on a GPU worker, inside serving_with(connections)"
        )
    return connections


def _render(plan: RenderPlan, connections: Connections, *, background: bool) -> RenderedBatch:
    """Fetch references, run the pipeline, save one ``.npy`` frame file per asset."""
    run_logger = get_run_logger()
    settings = connections.settings
    started = time.perf_counter()
    loads_before = PIPELINES.load_count()
    flow_run_id, task_run_id = _run_ids()
    watch = RenderWatch(plan, settings, flow_run_id, task_run_id, background=background)
    watch.start()
    with httpx.Client(timeout=settings.reference_timeout_seconds, verify=ssl_context()) as http:
        fetcher = ReferenceFetcher(
            connections.storage,
            http,
            timeout_seconds=settings.reference_timeout_seconds,
            max_bytes=settings.reference_max_bytes,
            allow_hosts=settings.reference_allow_hosts,
            storage_url=settings.supabase_url,
        )
        references = fetch_all(plan, fetcher)  # keyed by ReferenceRole
    renderer = renderer_for(plan.family, settings)
    gpu_key = task_run_id or plan.job_id
    with GPU_LOCK, watch:  # one pipeline at a time in this process
        GPU.pipeline_started(gpu_key)
        pipeline_started = time.time()
        try:
            output = renderer.render(plan, references, watch)
        finally:
            pipeline_finished = time.time()
            GPU.release(gpu_key)
    folder = scratch_dir(settings.work_dir, plan.job_id) / "render"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, frames in enumerate(output.frames):
        path = folder / f"{index}.npy"
        np.save(path, frames, allow_pickle=False)
        files.append(str(path))
    seconds = time.perf_counter() - started
    worker = worker_label(settings)
    loads = PIPELINES.load_count()
    emit_event(
        event="genjobs.render.finished",
        resource=watch.resource,
        related=[
            {"prefect.resource.id": f"genjobs.worker.{worker}", "prefect.resource.role": "worker"}
        ],
        payload={
            "worker": worker,
            "render_seconds": round(seconds, 4),
            "pipeline_started": pipeline_started,
            "pipeline_finished": pipeline_finished,
            "pipeline_loads": loads,
            "pipeline_loads_during_render": loads - loads_before,
        },
    )
    run_logger.info(
        "Rendered %d asset(s) for job %s in %.2f s on %s (%d pipeline load(s) in this process).",
        len(files),
        plan.job_id,
        seconds,
        worker,
        loads,
    )
    return RenderedBatch(
        plan=plan, frame_files=tuple(files), details=output.details, render_seconds=seconds
    )


_RENDER_OPTIONS: dict[str, Any] = {
    "task_run_name": run_name("render"),
    "cache_policy": NO_CACHE,
    "retries": 1,
    "retry_delay_seconds": 5,
    "retry_condition_fn": retry_if_transient,
}


# The tasks are async and run the render in a thread: the event loop of the flow (or of the GPU
# worker) stays free, and an async task run reuses the loop's Prefect client.


@task(name="render", **_RENDER_OPTIONS)
async def render_assets(plan: RenderPlan, connections: Connections) -> RenderedBatch:
    """Render in this process with the flow's ``connections``: fetch references, run the
    pipeline, save the frames."""
    return await asyncio.to_thread(_render, plan, connections, background=False)


@task(name="render-sdxl", **_RENDER_OPTIONS)
async def render_sdxl(plan: RenderPlan) -> RenderedBatch:
    """Render an SDXL plan on a GPU worker (entrypoints/gpu_worker.py), with its connections."""
    return await asyncio.to_thread(_render, plan, _serving(), background=True)


@task(name="render-wan", **_RENDER_OPTIONS)
async def render_wan(plan: RenderPlan) -> RenderedBatch:
    """Render a WAN plan on a GPU worker (entrypoints/gpu_worker.py), with its connections."""
    return await asyncio.to_thread(_render, plan, _serving(), background=True)


GPU_RENDER_TASKS = {"sdxl": render_sdxl, "wan": render_wan}
"""The background task each model family's renders go to on the GPU workers."""


def render_tags(plan: RenderPlan) -> list[str]:
    """Tags of a render task run: the job type and model family, and ``gpu``."""
    return ["gpu", f"job-type:{plan.job_type}", f"family:{plan.family}"]


def gpu_render_task(plan: RenderPlan) -> Task[[RenderPlan], Coroutine[Any, Any, RenderedBatch]]:
    """The background task that renders ``plan`` on the GPU workers, with its tags."""
    return GPU_RENDER_TASKS[plan.family].with_options(tags=render_tags(plan))
