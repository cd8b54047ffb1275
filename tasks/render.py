"""Render a plan on the GPU (or CPU) and leave the frames in the job's scratch folder.

Three tasks share one body. ``render_assets`` runs in the flow's own process (the embedded
default). ``render_sdxl`` and ``render_wan`` are what the warm GPU workers serve
(genjobs/gpu_worker.py): a flow hands them over with ``.delay()`` (tasks/render_dispatch.py), one
task key per model family, so a worker can serve one family or both.

While a render runs, a :class:`RenderWatch` is called after every diffusion step: it feeds the
process-local progress listeners, emits a ``genjobs.render.step`` event, updates a progress
artifact at most about once a second, and at most every ``cancel_check_seconds`` asks the API
whether the job's flow run was cancelled (or this render superseded); if so it raises
:class:`~genjobs.errors.JobCancelled`, which stops the pipeline at that step.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any
from uuid import UUID

import httpx
import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.context import TaskRunContext
from prefect.events import emit_event

from genjobs import progress
from genjobs.assets import RenderedBatch, scratch_dir
from genjobs.errors import JobCancelled
from genjobs.jobs.plan import RenderPlan
from genjobs.references import ReferenceFetcher, fetch_all
from genjobs.render.cache import PIPELINES
from genjobs.render.registry import renderer_for
from genjobs.runtime import get_runtime
from genjobs.settings import Settings
from tasks.naming import retry_if_transient, run_name

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
    """The per-step callback of one render: progress, events, artifact, cancellation.

    Args:
        plan: The plan being rendered.
        settings: Throttle intervals (``progress_update_seconds``, ``cancel_check_seconds``).
        client: A synchronous Prefect client, or ``None`` to skip the API checks and artifact.
        flow_run_id: The flow run that asked for the render (cancelling it stops the render).
        task_run_id: This render's task run (a flow may supersede it with a new one).
    """

    def __init__(
        self,
        plan: RenderPlan,
        settings: Settings,
        client: SyncPrefectClient | None,
        flow_run_id: UUID | None,
        task_run_id: UUID | None,
    ):
        self.plan = plan
        self.settings = settings
        self.client = client
        self.flow_run_id = flow_run_id
        self.task_run_id = task_run_id
        self.resource = {"prefect.resource.id": f"genjobs.job.{plan.job_id}"}
        self.checks = 0
        self.artifact_updates = 0
        self._artifact_id: UUID | None = None
        self._last_check = 0.0
        self._last_update = 0.0

    # -- checks -----------------------------------------------------------------------------
    def ensure_wanted(self, *, starting: bool = False) -> None:
        """Raise JobCancelled when the flow run was cancelled or ended, or this render was
        superseded. API trouble is logged and ignored: monitoring never fails a render."""
        self._last_check = time.monotonic()
        if self.client is None:
            return
        self.checks += 1
        try:
            reason = self._stop_reason(starting)
        except JobCancelled:
            raise
        except Exception as exc:  # an API blip must not fail a render
            logger.warning(
                "Could not check whether job %s is still wanted: %s", self.plan.job_id, exc
            )
            return
        if reason:
            raise JobCancelled(reason)

    def _stop_reason(self, starting: bool) -> str | None:
        """Why the render should stop, if it should (raises FlowRunCancelled directly)."""
        assert self.client is not None
        if self.task_run_id is not None:
            if starting:
                names = [s.name for s in self.client.read_task_run_states(self.task_run_id)]
            else:
                state = self.client.read_task_run(self.task_run_id).state
                names = [state.name] if state is not None else []
            if SUPERSEDED in names:
                return f"The render of job {self.plan.job_id} was superseded by a new submission"
        if self.flow_run_id is not None:
            flow_state = self.client.read_flow_run(self.flow_run_id).state
            if flow_state is not None and flow_state.type in _FLOW_STOPPED:
                raise FlowRunCancelled(
                    f"The job {self.plan.job_id} was cancelled during its render"
                )
            if flow_state is not None and flow_state.type in _FLOW_ENDED:
                return (
                    f"The flow run of job {self.plan.job_id} ended ({flow_state.type.value}) "
                    "before its render finished"
                )
        return None

    # -- progress artifact ------------------------------------------------------------------
    def start(self) -> None:
        """Check the render is still wanted, then publish its progress artifact at 0 %."""
        self.ensure_wanted(starting=True)
        if self.client is None:
            return
        try:
            self._artifact_id = create_progress_artifact(  # type: ignore[assignment]
                progress=0.0,
                key=f"render-progress-{self.plan.job_id}",
                description=f"Render of job {self.plan.job_id} ({self.plan.job_type})",
            )
        except Exception as exc:
            logger.warning(
                "Could not create the progress artifact of job %s: %s", self.plan.job_id, exc
            )
        self._last_update = time.monotonic()

    def _update(self, percent: float) -> None:
        self._last_update = time.monotonic()
        if self._artifact_id is None:
            return
        try:
            update_progress_artifact(self._artifact_id, progress=percent)
            self.artifact_updates += 1
        except Exception as exc:
            logger.warning("Could not update the progress of job %s: %s", self.plan.job_id, exc)

    def finish(self) -> None:
        """Show the render as complete."""
        self._update(100.0)

    # -- the step callback ------------------------------------------------------------------
    def __call__(self, done: int, total: int) -> None:
        progress.report("render", done, total)
        emit_event(
            event="genjobs.render.step",
            resource=self.resource,
            payload={"step": done, "total": total},
        )
        now = time.monotonic()
        if now - self._last_update >= self.settings.progress_update_seconds and done < total:
            self._update(100.0 * done / max(total, 1))
        if now - self._last_check >= self.settings.cancel_check_seconds:
            self.ensure_wanted()


def _run_ids() -> tuple[UUID | None, UUID | None]:
    context = TaskRunContext.get()
    if context is None:
        return None, None
    return context.task_run.flow_run_id, context.task_run.id


def _render(plan: RenderPlan) -> RenderedBatch:
    """Fetch references, run the pipeline, save one ``.npy`` frame file per asset."""
    run_logger = get_run_logger()
    runtime = get_runtime()
    settings = runtime.settings
    started = time.perf_counter()
    loads_before = PIPELINES.load_count()
    flow_run_id, task_run_id = _run_ids()
    with get_client(sync_client=True) as client:
        watch = RenderWatch(plan, settings, client, flow_run_id, task_run_id)
        watch.start()
        with httpx.Client(timeout=settings.reference_timeout_seconds) as http:
            fetcher = ReferenceFetcher(
                runtime.storage,
                http,
                timeout_seconds=settings.reference_timeout_seconds,
                max_bytes=settings.reference_max_bytes,
                allow_hosts=settings.reference_allow_hosts,
                storage_url=settings.supabase_url,
            )
            references = fetch_all(plan, fetcher)  # keyed by ReferenceRole
        output = renderer_for(plan.family, settings).render(plan, references, watch)
        watch.finish()
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
    "retries": 1,
    "retry_delay_seconds": 5,
    "retry_condition_fn": retry_if_transient,
}


@task(name="render", **_RENDER_OPTIONS)
def render_assets(plan: RenderPlan) -> RenderedBatch:
    """Render in this process: fetch references, run the pipeline, save the frames."""
    return _render(plan)


@task(name="render-sdxl", **_RENDER_OPTIONS)
def render_sdxl(plan: RenderPlan) -> RenderedBatch:
    """Render an SDXL plan on a GPU worker (served by genjobs/gpu_worker.py)."""
    return _render(plan)


@task(name="render-wan", **_RENDER_OPTIONS)
def render_wan(plan: RenderPlan) -> RenderedBatch:
    """Render a WAN plan on a GPU worker (served by genjobs/gpu_worker.py)."""
    return _render(plan)


GPU_RENDER_TASKS = {"sdxl": render_sdxl, "wan": render_wan}
"""The background task each model family's renders go to on the GPU workers."""
