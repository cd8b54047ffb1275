"""A failed, cancelled or crashed run undoes only what it stored, with the bytes it stored, and
ends with one failed callback: a real Prefect API, local storage, the local callback receiver."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelled, Crashed

from flows.generate import generate_job
from genjobs.connections import Connections
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.render.cache import PIPELINES
from genjobs.storage.provenance import UploadJournal, Write, journal_file
from tests.flows.helpers import USER_ID, sdxl_job, task_run_counts
from tests.settings_env import install_settings

pytestmark = pytest.mark.usefixtures("prefect_api")
BUCKET = "workspace-temp"


def folder(connections: Connections, job: dict[str, Any]) -> dict[str, bytes]:
    """Every object under the job's folder: path -> bytes."""
    return {
        info.path: connections.storage.get(BUCKET, info.path)
        for info in connections.storage.list(BUCKET, f"{USER_ID}/{job['id']}/")
    }


def callbacks(receiver: CallbackReceiver, job: dict[str, Any]) -> list[tuple[dict[str, Any], bool]]:
    """Every callback the receiver answered 200 for the job: (body, skipped), in order."""
    found = []
    for request in receiver.requests:
        body = json.loads(request.body)
        if request.answered == 200 and body["job_id"] == job["id"]:
            found.append((body, request.skipped))
    return found


async def completed_job(connections: Connections) -> dict[str, Any]:
    job = sdxl_job(num_images=1, seed=11)
    state = await generate_job(job, return_state=True)
    assert state.is_completed(), state.message
    return job


async def new_flow_run(job: dict[str, Any]) -> FlowRun:
    """A flow run of the job as a trigger creates it (the hooks get it from Prefect)."""
    async with get_client() as client:
        return await client.create_flow_run(generate_job, parameters={"job": job})


def store_as_run(connections: Connections, flow_run: FlowRun, objects: dict[str, bytes]) -> None:
    """Store objects as a run's upload step does: each recorded in its journal, then put."""
    journal = UploadJournal.for_run(connections.settings.home, flow_run.id)
    for path, data in objects.items():
        journal.record([Write.of(BUCKET, path, data)])
        connections.storage.put(BUCKET, path, data, "image/png")


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


@pytest.mark.parametrize("model_source", [None, "missing-model-folder"])
async def test_a_rerun_of_a_completed_job_is_refused_before_any_render_and_removes_nothing(
    connections: Connections,
    receiver: CallbackReceiver,
    tmp_path: Path,
    model_source: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = await completed_job(connections)
    before = folder(connections, job)
    rows_before = receiver.assets(job["id"])
    assert len(before) == 2 and len(rows_before) == 1
    if model_source is not None:  # a run that would fail after validation, at the model load
        settings = connections.settings.model_copy(
            update={"sdxl_source": str(tmp_path / model_source)}
        )
        install_settings(monkeypatch, settings)
    loads_before = PIPELINES.load_count()

    state = await generate_job(job, return_state=True)

    assert state.is_failed()
    counts = await task_run_counts(state.state_details.flow_run_id)
    assert counts["check"] == 1 and counts["render"] == 0 and counts["undo"] == 0
    assert PIPELINES.load_count() == loads_before
    assert folder(connections, job) == before  # same paths, same bytes
    assert receiver.job(job["id"])["status"] == "completed"  # type: ignore[index]
    assert receiver.assets(job["id"]) == rows_before
    (first, _), (second, skipped) = callbacks(receiver, job)
    assert first["status"] == "completed"
    assert second["status"] == "failed" and skipped  # the backend keeps the completed job
    assert second["metadata"] == {
        "error_type": "JobAssetsExist",
        "error_code": "JOB_ASSETS_EXIST",
        "retryable": False,
    }
    assert f"already has 2 object(s) in {BUCKET}/{USER_ID}/{job['id']}/" in second["error_message"]


async def test_the_cancellation_hook_of_a_rerun_removes_nothing(
    connections: Connections, receiver: CallbackReceiver
) -> None:
    job = await completed_job(connections)
    before = folder(connections, job)
    rerun = await new_flow_run(job)  # a second run of the job, cancelled before it stored

    await generate_job.on_cancellation_hooks[0](generate_job, rerun, Cancelled())

    assert folder(connections, job) == before
    assert receiver.job(job["id"])["status"] == "completed"  # type: ignore[index]
    (body, skipped) = callbacks(receiver, job)[-1]
    assert (body["status"], body["metadata"]["error_code"]) == ("failed", "CANCELLED")
    assert skipped


async def test_the_crash_hook_undoes_exactly_what_the_run_stored_with_its_bytes(
    connections: Connections, receiver: CallbackReceiver
) -> None:
    job = sdxl_job(num_images=2)
    prefix = f"{USER_ID}/{job['id']}"
    crashed = await new_flow_run(job)
    store_as_run(
        connections,
        crashed,
        {f"{prefix}/0.png": b"0", f"{prefix}/0.thumb.webp": b"thumb 0", f"{prefix}/1.png": b"1"},
    )
    connections.storage.put(BUCKET, f"{prefix}/1.png", b"rewritten since", "image/png")
    connections.storage.put(BUCKET, f"{prefix}/notes.png", b"not this run's", "image/png")

    await generate_job.on_crashed_hooks[0](generate_job, crashed, Crashed(message="killed"))

    assert folder(connections, job) == {
        f"{prefix}/1.png": b"rewritten since",
        f"{prefix}/notes.png": b"not this run's",
    }
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "failed"
    assert payload["metadata"]["error_code"] == "WORKER_CRASHED"
    assert "killed" in payload["error_message"]
    assert not journal_file(connections.settings.home, crashed.id).exists()


async def test_the_crash_hook_without_the_prefect_api_removes_nothing_and_still_reports(
    connections: Connections, receiver: CallbackReceiver
) -> None:
    job = sdxl_job(num_images=1)
    prefix = f"{USER_ID}/{job['id']}"
    crashed = await new_flow_run(job)
    stored = {f"{prefix}/0.png": b"run 0", f"{prefix}/0.thumb.webp": b"thumb 0"}
    store_as_run(connections, crashed, stored)

    with temporary_settings({PREFECT_API_URL: closed_port_url()}):
        await generate_job.on_crashed_hooks[0](generate_job, crashed, Crashed(message="killed"))

    assert folder(connections, job) == stored  # it cannot tell whether the job completed
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "failed"
    assert payload["metadata"]["error_code"] == "WORKER_CRASHED"
    assert not journal_file(connections.settings.home, crashed.id).exists()
