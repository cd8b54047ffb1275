"""Render a plan on the GPU (or CPU) and leave the frames in the job's scratch folder."""

from __future__ import annotations

import time

import httpx
import numpy as np
from prefect import get_run_logger, task
from prefect.events import emit_event

from genjobs import progress
from genjobs.assets import RenderedBatch, scratch_dir
from genjobs.jobs.plan import RenderPlan
from genjobs.references import ReferenceFetcher, fetch_all
from genjobs.render.registry import renderer_for
from genjobs.runtime import get_runtime
from tasks.naming import retry_if_transient, run_name


def _step_reporter(plan: RenderPlan):  # type: ignore[no-untyped-def]
    resource = {"prefect.resource.id": f"genjobs.job.{plan.job_id}"}

    def on_step(done: int, total: int) -> None:
        progress.report("render", done, total)
        emit_event(
            event="genjobs.render.step", resource=resource, payload={"step": done, "total": total}
        )

    return on_step


@task(
    name="render",
    task_run_name=run_name("render"),
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_if_transient,
)
def render_assets(plan: RenderPlan) -> RenderedBatch:
    """Fetch references, run the pipeline, save one ``.npy`` frame file per asset."""
    logger = get_run_logger()
    runtime = get_runtime()
    settings = runtime.settings
    started = time.perf_counter()
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
    output = renderer_for(plan.family, settings).render(plan, references, _step_reporter(plan))
    folder = scratch_dir(settings.work_dir, plan.job_id) / "render"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, frames in enumerate(output.frames):
        path = folder / f"{index}.npy"
        np.save(path, frames, allow_pickle=False)
        files.append(str(path))
    seconds = time.perf_counter() - started
    logger.info("Rendered %d asset(s) for job %s in %.2f s.", len(files), plan.job_id, seconds)
    return RenderedBatch(
        plan=plan, frame_files=tuple(files), details=output.details, render_seconds=seconds
    )
