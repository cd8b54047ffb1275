"""The cancellation hook, run as a worker runs it (in its own process, outside any run context),
attaches its undo and callback task runs and its log lines to the cancelled flow run: a real
Prefect API, local storage, the local callback receiver."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.context import FlowRunContext
from prefect.logging.handlers import APILogHandler
from prefect.states import Cancelling

from flows.generate import generate_job
from genjobs.connections import Connections
from genjobs.devserver.receiver import CallbackReceiver
from tests.flows.helpers import USER_ID, sdxl_job, task_runs
from tests.flows.test_failed_run_undo import folder, new_flow_run, store_as_run

pytestmark = pytest.mark.usefixtures("prefect_api")


async def test_the_cancellation_hook_attaches_its_task_runs_and_logs_to_the_flow_run(
    connections: Connections, receiver: CallbackReceiver
) -> None:
    job = sdxl_job(num_images=1)
    prefix = f"{USER_ID}/{job['id']}"
    cancelled = await new_flow_run(job)
    store_as_run(connections, cancelled, {f"{prefix}/0.png": b"run 0"})
    async with get_client() as client:
        await client.set_flow_run_state(cancelled.id, Cancelling(), force=True)
        cancelled = await client.read_flow_run(cancelled.id)
    assert cancelled.state is not None and FlowRunContext.get() is None

    await generate_job.on_cancellation_hooks[0](generate_job, cancelled, cancelled.state)
    await APILogHandler.aflush()

    assert folder(connections, job) == {}
    (payload,) = receiver.accepted(job["id"])
    assert (payload["status"], payload["metadata"]["error_code"]) == ("failed", "CANCELLED")
    runs = {run.name.split("-")[0]: run for run in await task_runs(cancelled.id)}
    assert sorted(runs) == ["callback", "undo"]
    assert {run.flow_run_id for run in runs.values()} == {cancelled.id}
    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[cancelled.id]))
        )
    messages = {(log.task_run_id, log.message) for log in logs}
    assert (
        runs["undo"].id,
        f"Removed 1 object(s) that this run of job {job['id']} stored.",
    ) in messages, messages
    assert (
        runs["callback"].id,
        f"The backend accepted the failed callback of job {job['id']}.",
    ) in messages, messages
