"""The generation flow: validate -> render -> encode -> upload -> metadata -> signed callback.

Every run ends with exactly one terminal callback: ``completed`` with every rendered asset, or
``failed`` with the error's message, type, code and retryability, also when the payload itself is
refused (before any render) and when the process crashes (the ``on_crashed`` hook).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

from prefect import Flow, flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.events import emit_event
from prefect.runtime import flow_run as current_flow_run
from prefect.settings import get_current_settings
from prefect.states import State
from pydantic import BaseModel

from genjobs.assets import scratch_dir
from genjobs.callback.payload import CallbackPayload, failure_payload
from genjobs.errors import JobCancelled, JobError
from genjobs.jobs.form import JobParameter
from genjobs.jobs.payload import parse_job, raw_job_id
from genjobs.jobs.plan import RenderPlan, plan_job
from genjobs.runtime import Runtime, aget_runtime, current_settings, get_runtime
from genjobs.storage.base import asset_path, thumbnail_path
from tasks.callback import deliver_callback
from tasks.encode import encode_assets
from tasks.metadata import assemble_metadata, publish_asset_artifacts
from tasks.render import FlowRunCancelled
from tasks.render_dispatch import start_render
from tasks.run_logger import run_logger
from tasks.upload import remove_uploads, upload_job_assets
from tasks.validate import validate_job


class JobOutcome(BaseModel):
    """What a generation run returns: small, no secrets."""

    job_id: str
    status: str
    assets: list[str]
    thumbnails: list[str | None]
    callback_status_code: int
    callback_skipped: bool
    error_code: str | None = None


def _flow_run_name() -> str:
    job = current_flow_run.get_parameters().get("job")
    return f"job-{raw_job_id(job) or 'unidentified'}"


def _planned_paths(plan: RenderPlan) -> list[str]:
    paths = []
    for index in range(plan.num_images):
        paths += [
            asset_path(plan.user_id, plan.job_id, index, plan.extension),
            thumbnail_path(plan.user_id, plan.job_id, index),
        ]
    return paths


def _plan_or_none(job: Any) -> RenderPlan | None:
    """The job's plan, or ``None`` when the payload cannot be planned (nothing was stored)."""
    try:
        return plan_job(parse_job(job))
    except Exception:
        return None


def _emit_outcome(job_id: str, status: str, payload: CallbackPayload) -> None:
    emit_event(
        event=f"genjobs.job.{status}",
        resource={"prefect.resource.id": f"genjobs.job.{job_id}"},
        payload={
            "error_code": payload.metadata.get("error_code"),
            "assets": [a.url for a in payload.assets],
        },
    )


async def _runtime_or_none() -> Runtime | None:
    """The run's runtime, or ``None`` when its blocks cannot be loaded: then there is no
    callback endpoint to report to, and the run fails with the block's error alone."""
    try:
        return await aget_runtime()
    except Exception:
        return None


async def _report_failure(job: Any, error: BaseException, plan: RenderPlan | None) -> None:
    """Remove partial uploads, then send the one failed callback (when the job has an id)."""
    logger = run_logger(__name__)
    job_id = plan.job_id if plan else raw_job_id(job)
    if plan is not None:
        await remove_uploads(plan.job_id, _planned_paths(plan))
    if job_id is None:
        logger.error("The payload has no usable 'id', so no failed callback can be sent: %s", error)
        return
    payload = failure_payload(job_id, error)
    _emit_outcome(job_id, "failed", payload)
    await deliver_callback(payload)


async def _on_abnormal_end(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Crash or cancellation: the body could not send its terminal callback, so send it here."""
    job = flow_run.parameters.get("job")
    if state.is_cancelled() or state.is_cancelling():
        error: JobError = JobCancelled("The job was cancelled before it finished")
    else:
        error = JobError(
            f"The worker crashed while running the job: {state.message}",
            code="WORKER_CRASHED",
            retryable=True,
        )
    if await _callback_delivered(flow_run):
        return  # the run already reported (completed, or failed): undo nothing, send nothing
    plan = _plan_or_none(job)
    if plan is not None:
        shutil.rmtree(scratch_dir(get_runtime().settings.work_dir, plan.job_id), ignore_errors=True)
    await _report_failure(job, error, plan)


async def _callback_delivered(flow_run: FlowRun) -> bool:
    """Whether a callback of this run was accepted before it stopped (API trouble: no)."""
    try:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            )
    except Exception:
        return False
    return any(
        run.task_key.startswith("send_callback")
        and run.state is not None
        and run.state.is_completed()
        for run in runs
    )


@flow(
    name="generate-job",
    flow_run_name=_flow_run_name,
    # Nothing of a run is persisted: its outcome goes to the backend in the callback. Naming
    # both spares every run Prefect's three look-ups of the server's default result storage.
    persist_result=False,
    result_storage=get_current_settings().results.local_storage_path,
    on_crashed=[_on_abnormal_end],
    on_cancellation=[_on_abnormal_end],
)
async def generate_job(job: JobParameter) -> JobOutcome:
    """Render one job from the app and report it to the backend.

    Args:
        job: The job payload exactly as queue-job sends it: id and user_id (UUIDs), type,
            prompt, negative_prompt, config and metadata. The flow validates it; a refusal
            names the field and is reported to the backend as a failed job.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    plan: RenderPlan | None = None
    blocks_failed = False
    try:
        plan = await validate_job(job)
        started_render = await start_render(plan)
        # A fresh run loads its blocks and builds its storage client while the GPU workers
        # render; a render in this process starts when awaited, after them (it reads the
        # model registry).
        try:
            settings = (await aget_runtime()).settings
        except Exception:
            blocks_failed = True
            await started_render.withdraw("The run's blocks did not load")
            raise
        batch = await started_render.result()
        encoded = await encode_assets(batch)
        uploaded = await upload_job_assets(encoded, plan.user_id, plan.job_id, settings)
        payload = await assemble_metadata(
            plan, batch.details, uploaded, time.perf_counter() - started
        )
    except FlowRunCancelled:
        raise  # cancelled through Prefect: the on_cancellation hook reports it, once
    except Exception as exc:
        logger.error("Job %s failed: %s", plan.job_id if plan else raw_job_id(job), exc)
        if blocks_failed or await _runtime_or_none() is None:
            logger.error("No failed callback can be sent: the run's blocks did not load.")
        else:
            await _report_failure(job, exc, plan)
        raise
    finally:
        if plan is not None:
            work_dir = current_settings().work_dir
            shutil.rmtree(scratch_dir(work_dir, plan.job_id), ignore_errors=True)
    # The asset artifacts are written while the backend hears of the job; neither waits.
    receipt, _ = await asyncio.gather(
        deliver_callback(payload), publish_asset_artifacts(plan, payload), return_exceptions=True
    )
    if isinstance(receipt, BaseException):
        raise receipt
    _emit_outcome(plan.job_id, "completed", payload)
    logger.info(
        "Job %s completed with %d asset(s) in %.2f s.",
        plan.job_id,
        len(payload.assets),
        time.perf_counter() - started,
    )
    return JobOutcome(
        job_id=plan.job_id,
        status="completed",
        assets=[a.url for a in payload.assets],
        thumbnails=[a.thumbnail_url for a in payload.assets],
        callback_status_code=receipt.status_code,
        callback_skipped=receipt.skipped,
    )
