"""The generation flow: validate -> check the job's folder -> render -> encode -> upload ->
metadata -> signed callback.

Every run ends with exactly one terminal callback: ``completed`` with every rendered asset, or
``failed`` with the error's message, type, code and retryability, also when the payload itself is
refused (before any render), when the job's folder already holds objects (a re-run: refused
before any render, nothing removed) and when the process crashes (the ``on_crashed`` hook).

A failed run undoes only what it stored: the objects its upload journal names, where the stored
bytes still hash to what it wrote (genjobs/storage/provenance.py). Whatever the undo does, the
failed callback names the run's own error.

The flow is an edge: it reads its settings at entry (flows/entry_settings.py), loads the blocks
they name into its :class:`~genjobs.connections.Connections` once (while a GPU worker already
renders), and hands every task what it uses. The crash/cancel hook builds its own.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Flow, flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.events import emit_event
from prefect.runtime import flow_run as current_flow_run
from prefect.settings import get_current_settings
from prefect.states import State
from pydantic import BaseModel

from blocks.connections import aload_connections
from flows.entry_settings import entry_settings
from genjobs.assets import scratch_dir
from genjobs.callback.payload import CallbackPayload, failure_payload
from genjobs.connections import Connections
from genjobs.errors import ErrorCode, JobCancelled, JobError
from genjobs.jobs.form import JobParameter
from genjobs.jobs.payload import parse_job, raw_job_id
from genjobs.jobs.plan import RenderPlan, plan_job
from genjobs.settings import Settings
from genjobs.storage.provenance import JournalUnreadable, UploadJournal
from tasks.callback import deliver_callback
from tasks.encode import encode_assets
from tasks.hook_context import hook_run_context
from tasks.metadata import assemble_metadata, publish_asset_artifacts
from tasks.render import FlowRunCancelled
from tasks.render_ahead import GENERATE_FLOW_NAME
from tasks.render_dispatch import start_render
from tasks.run_logger import run_logger
from tasks.upload import check_job_folder, undo_uploads, upload_job_assets
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


async def run_connections(settings: Settings) -> Connections:
    """The run's connections: the blocks ``settings`` name laid over them; without the model
    registry where the renders run on the GPU workers (this process loads no pipeline)."""
    return await aload_connections(settings, renders=settings.render_dispatch != "gpu_workers")


async def _connections_or_none(settings: Settings | None) -> Connections | None:
    """The run's connections, or ``None`` when its settings or blocks cannot be loaded: then
    there is no callback endpoint to report to, and the run fails with that error alone."""
    try:
        return await run_connections(settings or entry_settings())
    except Exception:
        return None


async def _report_failure(
    job_id: str | None,
    error: BaseException,
    journal: UploadJournal | None,
    connections: Connections,
    *,
    orchestrated: bool = True,
) -> None:
    """Undo what this run stored (by its journal), then send the one failed callback (when the
    job has an id), naming ``error`` whatever the undo did; ``orchestrated=False`` sends it
    without a Prefect task run (the API is unreachable)."""
    logger = run_logger(__name__)
    if journal is not None and journal.writes:
        try:
            await undo_uploads(job_id or "unidentified", journal, connections.storage)
        except Exception as exc:  # the callback below must go out whatever the undo did
            logger.error(
                "The undo of job %s stopped with an error; what it had not removed is kept: %s",
                job_id,
                exc,
            )
    if job_id is None:
        logger.error("The payload has no usable 'id', so no failed callback can be sent: %s", error)
        return
    payload = failure_payload(job_id, error)
    _emit_outcome(job_id, "failed", payload)
    await deliver_callback(
        payload, connections.callback, connections.settings, orchestrated=orchestrated
    )


async def _on_abnormal_end(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Crash or cancellation: the body could not send its terminal callback, so send it here.

    The run's callback accepted: nothing to do. Not accepted: undo by the run's journal, then
    the failed callback. The API cannot be read: remove nothing, still send the failed callback
    (the backend skips it after an accepted ``completed``; without it the job stays queued).
    """
    job = flow_run.parameters.get("job")
    if state.is_cancelled() or state.is_cancelling():
        error: JobError = JobCancelled("The job was cancelled before it finished")
    else:
        error = JobError(
            f"The worker crashed while running the job: {state.message}",
            code=ErrorCode.WORKER_CRASHED,
            retryable=True,
        )
    delivered = await _callback_delivered(flow_run)
    if delivered:
        return  # the run already reported (completed, or failed): undo nothing, send nothing
    if delivered is None:  # the API cannot be read: no task runs, no run context to enter
        await _report_abnormal_end(flow_run, job, error, api_answered=False)
        return
    # A worker runs the hook in its own process: the undo and callback task runs and the log
    # lines belong to the flow run only inside its context.
    async with hook_run_context(flow, flow_run):
        await _report_abnormal_end(flow_run, job, error, api_answered=True)


async def _report_abnormal_end(
    flow_run: FlowRun, job: Any, error: JobError, *, api_answered: bool
) -> None:
    """The hook's report: remove the scratch folder, undo by the journal (where the API
    answered), send the failed callback. The hook is an edge: it builds its own connections
    (no model registry: it renders nothing); where they cannot be built it touches nothing."""
    connections = await aload_connections(entry_settings(), renders=False)
    settings = connections.settings
    plan = _plan_or_none(job)
    if plan is not None:
        shutil.rmtree(scratch_dir(settings.work_dir, plan.job_id), ignore_errors=True)
    journal = _journal_to_undo(settings.home, flow_run.id, can_tell=api_answered)
    job_id = plan.job_id if plan else raw_job_id(job)
    await _report_failure(job_id, error, journal, connections, orchestrated=api_answered)


def _journal_to_undo(home: Path, flow_run_id: UUID, can_tell: bool) -> UploadJournal | None:
    """The run's upload journal where its writes may be undone: it is readable and records
    writes, and the API told that the run's callback was not accepted."""
    logger = run_logger(__name__)
    try:
        journal = UploadJournal.load(home, flow_run_id)
    except JournalUnreadable as exc:
        logger.error("Nothing that flow run %s stored is removed: %s", flow_run_id, exc)
        return None
    if journal.writes and not can_tell:
        logger.error(
            "Whether flow run %s delivered its callback cannot be told (the Prefect API could "
            "not be read), so nothing it stored is removed: %s.",
            flow_run_id,
            ", ".join(sorted({write.path for write in journal.writes})),
        )
    if not journal.writes or not can_tell:
        journal.discard()
        return None
    return journal


async def _callback_delivered(flow_run: FlowRun) -> bool | None:
    """Whether a callback of this run was accepted before it stopped; ``None`` when the API
    cannot be read."""
    try:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            )
    except Exception as exc:
        run_logger(__name__).warning(
            "The task runs of flow run %s cannot be read: %s", flow_run.id, exc
        )
        return None
    return any(
        run.task_key.startswith("send_callback")
        and run.state is not None
        and run.state.is_completed()
        for run in runs
    )


@flow(
    name=GENERATE_FLOW_NAME,
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
    settings: Settings | None = None
    connections: Connections | None = None
    plan: RenderPlan | None = None
    journal: UploadJournal | None = None
    blocks_failed = False
    try:
        settings = entry_settings()
        plan = await validate_job(job, settings.reference_allow_hosts)
        started_render = await start_render(plan, settings)
        # A fresh run loads its blocks and builds its storage client while the GPU workers
        # render; a render in this process starts when awaited, after them (it reads the
        # model registry) and after the check of the job's folder.
        try:
            connections = await run_connections(settings)
        except Exception:
            blocks_failed = True
            await started_render.withdraw("The run's blocks did not load")
            raise
        storage, settings = connections.storage, connections.settings
        try:
            await check_job_folder(plan.user_id, plan.job_id, storage, settings)
        except Exception as exc:
            await started_render.withdraw(f"The job was refused before its render: {exc}")
            raise
        flow_run_id = current_flow_run.get_id()
        assert flow_run_id is not None, "a flow body always runs in a flow run"
        journal = UploadJournal.for_run(settings.home, flow_run_id)
        batch = await started_render.result(connections)
        encoded = await encode_assets(batch, settings.png_compress_level)
        uploaded = await upload_job_assets(
            encoded, plan.user_id, plan.job_id, journal, storage, settings
        )
        payload = await assemble_metadata(
            plan, batch.details, uploaded, time.perf_counter() - started
        )
    except FlowRunCancelled:
        raise  # cancelled through Prefect: the on_cancellation hook reports it, once
    except Exception as exc:
        job_id = plan.job_id if plan else raw_job_id(job)
        logger.error("Job %s failed: %s", job_id, exc)
        if connections is None and not blocks_failed:
            connections = await _connections_or_none(settings)
        if connections is None:
            logger.error("No failed callback can be sent: the run's blocks did not load.")
        else:
            await _report_failure(job_id, exc, journal, connections)
        raise
    finally:
        if plan is not None and settings is not None:
            shutil.rmtree(scratch_dir(settings.work_dir, plan.job_id), ignore_errors=True)
    # The stored objects now belong to the job: whatever becomes of the completed callback
    # (accepted, or kept in the outbox), no undo may remove them, a crash hook's included.
    journal.discard()
    # The asset artifacts are written while the backend hears of the job; neither waits.
    receipt, _ = await asyncio.gather(
        deliver_callback(payload, connections.callback, settings),
        publish_asset_artifacts(plan, payload, storage, settings),
        return_exceptions=True,
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
