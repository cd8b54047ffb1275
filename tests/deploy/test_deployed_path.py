"""The deployment as shipped: a real ``prefect server start`` on loopback, the pools, the three
blocks, ``prefect deploy`` from prefect.yaml, the warm runner, the project's worker on gpu-pool
(type ``genjobs-process``, found through the package's entry point) whose flow runs the warm
runner forks, and GPU workers (on the CPU), each its own subprocess. Jobs come in through the
REST API as queue-job sends them. The worker polls only every 60 s: every job here is taken
because the server scheduled it.

The blocks point at this test's local stand-ins: the Supabase Storage stand-in (real HTTP, the
real storage3 client) and the local callback receiver. Two GPU workers render SDXL with the tiny
embedded model; a third serves WAN with the timed renderer, slow enough to be cancelled mid-render.
"""

from __future__ import annotations

import io
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from PIL import Image

from devstack.stack import LocalStack, blocks_script, local_stack
from entrypoints.flow_worker import WORKER_CA_NAME
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.render.sdxl import TINY_FOLDER_NAME
from genjobs.render.tiny_sdxl import ensure_tiny_sdxl
from genjobs.storage.base import asset_path, thumbnail_path
from tasks.render_ahead import plan_key, render_ahead_id
from tasks.validate import checked_plan
from tests.flows.helpers import USER_ID, sdxl_job
from tests.real_storage import RealStorage

pytestmark = pytest.mark.slow
BUCKET = "workspace-temp"
SECRET = "deploy-tests-callback-secret"
WORKER_POLL_SECONDS = 60.0  # longer than any test waits for a run to start


@pytest.fixture(scope="module")
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver(SECRET) as running:
        yield running


def stored_object(real: RealStorage, path: str) -> bytes | None:
    """The bytes the real server holds at ``path`` in the bucket, or None."""
    answer = httpx.get(
        f"{real.storage_url}/object/authenticated/{BUCKET}/{path}", headers=real.headers()
    )
    return answer.content if answer.status_code == 200 else None


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    model_cache: Path,
    receiver: CallbackReceiver,
    real_storage: RealStorage,
) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("stack")
    # Progress artifacts from the first step on: the tiny renders take less than a second.
    with local_stack(
        root, GENJOBS_MODEL_CACHE=str(model_cache), GENJOBS_PROGRESS_UPDATE_SECONDS="0"
    ) as running:
        try:
            running.create_pools("gpu-pool")
            running.save_blocks(
                blocks_script(
                    real_storage.url, real_storage.service_key, receiver.url, SECRET, device="cpu"
                )
            )
            # Built here once, so that both SDXL workers load it and all of them start together,
            # while the deployments are made.
            ensure_tiny_sdxl(model_cache / TINY_FOLDER_NAME)
            running.start_gpu_worker(
                "gpu-wan",
                families="wan",
                GENJOBS_RENDERER_CLASS="devstack.timed_renderer:TimedRenderer",
                GENJOBS_TIMED_STEP_SECONDS="0.4",
                GENJOBS_TIMED_LOAD_SECONDS="0.2",
                GENJOBS_CANCEL_CHECK_SECONDS="0.5",
            )
            running.start_gpu_worker("gpu-0", families="sdxl")
            running.start_gpu_worker("gpu-1", families="sdxl")
            running.start_process_worker("gpu-pool", query_seconds=WORKER_POLL_SECONDS)
            running.start_warm_runner()
            running.deploy("sdxl", "wan")
            running.wait_for_task_workers(3)
        except Exception as exc:
            raise RuntimeError(f"The stack did not start:\n{running.logs()}") from exc
        yield running


def wait_until(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not happen within {timeout} s")


def renders_of(stack: LocalStack, flow_run_id: str) -> list[dict[str, Any]]:
    return [t for t in stack.task_runs_of([flow_run_id]) if t["name"].startswith("render")]


def recorded_task_runs(stack: LocalStack, flow_run_id: str, step: str) -> list[dict[str, Any]]:
    """The task runs of a finished flow run once the ``step`` ones are recorded in a final
    state: the server records task runs from their events, in batches (up to 1 s late)."""
    final = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
    return wait_until(  # type: ignore[no-any-return]
        lambda: (
            (runs := stack.task_runs_of([flow_run_id]))
            and all(
                (r["state"] or {}).get("type") in final for r in runs if r["name"].startswith(step)
            )
            and any(r["name"].startswith(step) for r in runs)
            and runs
        ),
        15,
        f"the {step} task run in a final state",
    )


def settled_renders(stack: LocalStack, flow_run_id: str) -> list[dict[str, Any]]:
    runs = recorded_task_runs(stack, flow_run_id, "render")
    return [t for t in runs if t["name"].startswith("render")]


def wait_for_first_step(stack: LocalStack, job_id: str) -> None:
    """Until the job's render has made its first step (its genjobs.render.step event)."""
    wait_until(
        lambda: any(
            e["resource"]["prefect.resource.id"] == f"genjobs.job.{job_id}"
            for e in stack.events("genjobs.render.step")
        ),
        90,
        "the first render step",
    )


def finished_renders(stack: LocalStack, job_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The genjobs.render.finished events of these jobs, by job id."""
    found: dict[str, list[dict[str, Any]]] = {}
    for event in stack.events("genjobs.render.finished"):
        job_id = event["resource"]["prefect.resource.id"].removeprefix("genjobs.job.")
        if job_id in job_ids:
            found.setdefault(job_id, []).append(event)
    return found


def test_a_job_triggered_twice_with_one_key_runs_once_and_lands_everywhere(
    stack: LocalStack, receiver: CallbackReceiver, real_storage: RealStorage
) -> None:
    deployment = stack.deployment_id("generate-job", "sdxl")
    job = sdxl_job(num_images=3)
    first, second = stack.trigger(deployment, job), stack.trigger(deployment, job)
    assert first["id"] == second["id"]
    (run,) = stack.wait_for_flow_runs([first["id"]], timeout=120)
    assert run["state"]["type"] == "COMPLETED", stack.logs()
    same_job = [r for r in stack.flow_runs_of(deployment) if r["name"] == f"job-{job['id']}"]
    assert [r["id"] for r in same_job] == [first["id"]]

    rows = receiver.assets(job["id"])
    assert [r["asset_index"] for r in rows] == [0, 1, 2]
    for index, row in enumerate(rows):
        path = asset_path(USER_ID, job["id"], index, "png")
        stored = stored_object(real_storage, path)
        assert stored is not None and row["temp_storage_path"] == path
        image = Image.open(io.BytesIO(stored))
        assert image.format == "PNG" and image.size == (256, 256)
        assert row["asset_metadata"]["file_size_bytes"] == len(stored)
        thumbnail = stored_object(real_storage, thumbnail_path(USER_ID, job["id"], index))
        assert thumbnail is not None

    (render,) = settled_renders(stack, first["id"])
    assert render["state"]["type"] == "COMPLETED" and render["run_count"] == 1
    assert {"gpu", "job-type:sdxl_image_fast", "family:sdxl"} <= set(render["tags"])
    # The worker queued the render as it took the run, before the run's process started
    # (tasks/render_ahead.py); the run adopted it and queued none of its own.
    assert render["id"] == str(render_ahead_id(UUID(first["id"]), 1))
    assert render["dynamic_key"] == plan_key(checked_plan(job, ()), 1)
    states = stack.request("GET", "/flow_run_states/", params={"flow_run_id": first["id"]}).json()
    (running,) = [s["timestamp"] for s in states if s["type"] == "RUNNING"]
    assert _seconds_between(render["created"], running) > 0
    artifacts = {a["key"]: a for a in stack.artifacts_of(first["id"])}
    table = artifacts[f"assets-{job['id']}"]
    assert table["type"] == "table"
    assert [r["path"] for r in _table_rows(table)] == [r["temp_storage_path"] for r in rows]
    progress = artifacts[f"render-progress-{job['id']}"]
    assert progress["type"] == "progress" and float(progress["data"]) == 100.0
    wait_until(
        lambda: any(
            e["resource"]["prefect.resource.id"] == f"genjobs.job.{job['id']}"
            for e in stack.events("genjobs.job.completed")
        ),
        30,
        "the genjobs.job.completed event",
    )


def test_the_ui_form_is_typed_and_an_off_form_payload_still_gets_a_failed_callback(
    stack: LocalStack, receiver: CallbackReceiver
) -> None:
    deployment = stack.deployment_id("generate-job", "sdxl")
    answer = stack.request("GET", f"/deployments/{deployment}")
    assert answer.json()["enforce_parameter_schema"] is False
    form = answer.json()["parameter_openapi_schema"]["properties"]["job"]
    user_id = form["properties"]["user_id"]
    assert (user_id["format"], user_id["type"]) == ("uuid", "string")
    assert "sdxl_image_fast" in form["properties"]["type"]["enum"]
    num_images = form["properties"]["config"]["properties"]["num_images"]
    assert (num_images["type"], num_images["enum"]) == ("integer", [1, 3, 6])
    assert "job" in answer.json()["parameter_openapi_schema"]["required"]

    job = sdxl_job(num_images=1)
    job["config"]["num_images"] = "three"  # the form would not allow it; the API takes it
    run = stack.trigger(deployment, job)
    (done,) = stack.wait_for_flow_runs([run["id"]], timeout=120)
    assert done["state"]["type"] == "FAILED"
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "failed"
    assert "Field 'config.num_images' is invalid ('three')" in payload["error_message"]
    recorded = recorded_task_runs(stack, run["id"], "validate")
    assert [r["state"]["type"] for r in recorded if r["name"].startswith("validate")] == ["FAILED"]
    assert not [r for r in recorded if r["name"].startswith("render")]


def _table_rows(artifact: dict[str, Any]) -> list[dict[str, Any]]:
    import json

    data = artifact["data"]
    rows: list[dict[str, Any]] = json.loads(data) if isinstance(data, str) else data
    return rows


def test_two_gpu_workers_share_a_backlog_and_render_each_job_once(
    stack: LocalStack, receiver: CallbackReceiver
) -> None:
    deployment = stack.deployment_id("generate-job", "sdxl")
    jobs = [sdxl_job(num_images=3, resolution="384x384") for _ in range(4)]
    # A real backlog: both SDXL workers are paused (SIGSTOP) while the four renders queue, so
    # the tiny renders cannot all be served one after the other by whichever worker is first.
    # Each paused worker's open subscription is sent at most one run it has not acknowledged.
    sdxl_workers = [p for p in stack.processes if p.name in ("gpu-0", "gpu-1")]
    assert len(sdxl_workers) == 2
    for worker in sdxl_workers:
        os.kill(worker.popen.pid, signal.SIGSTOP)
    try:
        runs = [stack.trigger(deployment, job) for job in jobs]
        wait_until(
            lambda: all(renders_of(stack, r["id"]) for r in runs), 120, "four queued renders"
        )
    finally:
        for worker in sdxl_workers:
            os.kill(worker.popen.pid, signal.SIGCONT)
    done = stack.wait_for_flow_runs([r["id"] for r in runs], timeout=240)
    assert {r["state"]["type"] for r in done} == {"COMPLETED"}, stack.logs()

    for run in runs:
        (render,) = settled_renders(stack, run["id"])
        assert render["state"]["type"] == "COMPLETED" and render["run_count"] == 1
    job_ids = {str(job["id"]) for job in jobs}
    events = wait_until(
        lambda: (found := finished_renders(stack, job_ids)) and len(found) == len(jobs) and found,
        30,
        "one genjobs.render.finished event per job",
    )
    assert all(len(found) == 1 for found in events.values())  # no job rendered twice
    workers: dict[str, int] = {}
    for (event,) in events.values():
        worker = event["payload"]["worker"]
        workers[worker] = max(workers.get(worker, 0), event["payload"]["pipeline_loads"])
    assert len(workers) == 2, workers  # both GPU workers took part
    assert set(workers.values()) == {1}, workers  # each loaded its model once, at start
    for job in jobs:
        assert [p["status"] for p in receiver.accepted(str(job["id"]))] == ["completed"]


def test_cancelling_a_run_stops_its_render_removes_its_uploads_and_reports_cancelled(
    stack: LocalStack, receiver: CallbackReceiver, real_storage: RealStorage
) -> None:
    deployment = stack.deployment_id("generate-job", "wan")
    job = {
        **sdxl_job(),
        "type": "video_fast",
        "config": {"num_inference_steps": 40},  # 40 steps x 0.4 s on the timed renderer
        "metadata": {},
    }
    run = stack.trigger(deployment, job)
    wait_for_first_step(stack, job["id"])
    cancelled_at = time.monotonic()
    stack.request(
        "POST",
        f"/flow_runs/{run['id']}/set_state",
        json={"state": {"type": "CANCELLING"}, "force": True},
    ).raise_for_status()
    (final,) = stack.wait_for_flow_runs([run["id"]], timeout=60)
    assert final["state"]["type"] == "CANCELLED", stack.logs()

    (render,) = wait_until(
        lambda: [
            r
            for r in renders_of(stack, run["id"])
            if (r["state"] or {}).get("type") not in (None, "RUNNING")
        ],
        20,
        "the render to stop",
    )
    assert render["state"]["type"] in ("FAILED", "CANCELLED")
    assert time.monotonic() - cancelled_at < 12  # its 40 steps would take 16 s
    steps = [
        e["payload"]["step"]
        for e in stack.events("genjobs.render.step")
        if e["resource"]["prefect.resource.id"] == f"genjobs.job.{job['id']}"
    ]
    assert 1 <= max(steps) < 30, steps  # stopped at a step, long before the last
    (payload,) = wait_until(lambda: receiver.accepted(job["id"]), 30, "the failed callback")
    assert payload["status"] == "failed" and payload["metadata"]["error_code"] == "CANCELLED"
    # Cancelled during its render, the run stored nothing, so nothing is there and nothing was
    # removed (the hook removes only what the run's upload journal names).
    assert real_storage.object_names(BUCKET, f"{USER_ID}/{job['id']}/") == []
    pid = forked_processes(stack)[run["id"]]  # the SIGTERM reached the forked process
    ending = wait_until(lambda: process_endings(stack).get(pid), 15, "the forked process's end")
    assert ending in ("exit 0", f"signal {int(signal.SIGTERM)}"), ending
    time.sleep(1.0)  # nothing else arrives later
    assert len(receiver.accepted(job["id"])) == 1


def forked_processes(stack: LocalStack) -> dict[str, int]:
    """Flow run id -> the process the warm runner forked for it, from the runner's log."""
    runner = next(p for p in stack.processes if p.name == "warm-runner")
    found = re.findall(r"Forked process (\d+) for flow run ([0-9a-f-]+)\.", runner.output())
    return {run_id: int(pid) for pid, run_id in found}


def process_endings(stack: LocalStack) -> dict[int, str]:
    """Forked process -> how it ended (``exit 0``, ``signal 9``), from the runner's log."""
    runner = next(p for p in stack.processes if p.name == "warm-runner")
    return {
        int(pid): how
        for pid, how in re.findall(r"Process (\d+) ended \(([^)]*)\)", runner.output())
    }


def test_a_job_runs_in_a_process_forked_by_the_warm_runner(
    stack: LocalStack, receiver: CallbackReceiver
) -> None:
    deployment = stack.deployment_id("generate-job", "sdxl")
    job = sdxl_job(num_images=3)
    run = stack.trigger(deployment, job)
    (done,) = stack.wait_for_flow_runs([run["id"]], timeout=120)
    assert done["state"]["type"] == "COMPLETED", stack.logs()

    pid = forked_processes(stack)[run["id"]]
    assert wait_until(lambda: process_endings(stack).get(pid), 15, "the process end") == "exit 0"
    worker = next(p for p in stack.processes if p.name == "worker-gpu-pool")
    assert "No warm runner answered" not in worker.output()
    recorded = recorded_task_runs(stack, run["id"], "callback")
    steps = sorted(r["name"].split("-")[0] for r in recorded)
    assert steps == ["callback", "check", "encode", "metadata", "render", "upload", "validate"]
    assert {r["state"]["type"] for r in recorded} == {"COMPLETED"}
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "completed" and len(receiver.assets(job["id"])) == 3
    artifacts = {a["key"] for a in stack.artifacts_of(run["id"])}
    assert f"assets-{job['id']}" in artifacts
    wait_until(  # the run's logs reached the API (shipped in batches, drained at exit)
        lambda: any(
            f"Job {job['id']} completed with 3 asset(s)" in entry["message"]
            for entry in stack.request(
                "POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run["id"]]}}}
            ).json()
        ),
        15,
        "the run's completion log in the API",
    )


def test_the_worker_takes_each_run_when_it_is_scheduled_not_at_its_poll(
    stack: LocalStack, receiver: CallbackReceiver
) -> None:
    deployment = stack.deployment_id("generate-job", "sdxl")
    jobs = [sdxl_job(num_images=1) for _ in range(3)]
    runs = []
    for job in jobs:
        runs.append(stack.trigger(deployment, job))
        time.sleep(1.0)
    done = stack.wait_for_flow_runs([run["id"] for run in runs], timeout=120)
    assert [run["state"]["type"] for run in done] == ["COMPLETED"] * 3, stack.logs()
    for run in runs:
        states = stack.request("GET", "/flow_run_states/", params={"flow_run_id": run["id"]})
        first: dict[str, str] = {}
        for state in sorted(states.json(), key=lambda state: str(state["timestamp"])):
            first.setdefault(state["type"], state["timestamp"])
        waited = _seconds_between(first["SCHEDULED"], first["PENDING"])
        # a poll every 60 s would leave a run scheduled for 30 s on average
        assert waited < 5.0, f"{run['name']} waited {waited:.1f} s for the worker"
    for job in jobs:
        (payload,) = receiver.accepted(job["id"])
        assert payload["status"] == "completed"
    worker = next(p for p in stack.processes if p.name == "worker-gpu-pool")
    assert "takes flow runs of pool 'gpu-pool' as they are scheduled" in worker.output()
    assert "Worker type mismatch" not in worker.output()
    # the API is plain HTTP: the worker's clients, and its runs', read one certificate
    assert "reads a one-certificate CA file for its plain-HTTP API" in worker.output()
    ca_file = stack.genjobs_home / WORKER_CA_NAME
    assert ca_file.read_text().count("-----BEGIN CERTIFICATE-----") == 1


def _seconds_between(earlier: str, later: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def test_a_killed_flow_process_ends_crashed_with_one_failed_callback_and_spares_the_rest(
    stack: LocalStack, receiver: CallbackReceiver
) -> None:
    wan = stack.deployment_id("generate-job", "wan")
    sdxl = stack.deployment_id("generate-job", "sdxl")
    doomed = {
        **sdxl_job(),
        "type": "video_fast",
        "config": {"num_inference_steps": 20},  # 20 steps x 0.4 s on the timed renderer
        "metadata": {},
    }
    neighbour = sdxl_job(num_images=1)
    doomed_run = stack.trigger(wan, doomed)
    neighbour_run = stack.trigger(sdxl, neighbour)
    wait_for_first_step(stack, doomed["id"])
    pid = forked_processes(stack)[doomed_run["id"]]
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would

    crashed, spared = stack.wait_for_flow_runs([doomed_run["id"], neighbour_run["id"]], 120)
    assert crashed["state"]["type"] == "CRASHED", stack.logs()
    assert spared["state"]["type"] == "COMPLETED", stack.logs()
    assert process_endings(stack)[pid] == "signal 9"
    (payload,) = wait_until(lambda: receiver.accepted(doomed["id"]), 60, "the failed callback")
    assert payload["status"] == "failed"
    assert payload["metadata"]["error_code"] == "WORKER_CRASHED"
    assert [p["status"] for p in receiver.accepted(neighbour["id"])] == ["completed"]

    runner = next(p for p in stack.processes if p.name == "warm-runner")
    assert runner.popen.poll() is None  # the runner goes on, and forks the next job
    after = sdxl_job(num_images=1)
    (done,) = stack.wait_for_flow_runs([stack.trigger(sdxl, after)["id"]], timeout=120)
    assert done["state"]["type"] == "COMPLETED"
    time.sleep(1.0)  # nothing else arrives later
    assert len(receiver.accepted(doomed["id"])) == 1
