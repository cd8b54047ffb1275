"""A render queued by the worker as it takes a generation run (tasks/render_ahead.py), on the
session's Prefect API: the run adopts it, withdraws one of another plan, and a render queued for
a run that ended stops before its first step. What the worker decides to queue is checked
without an API.

The renders use the timed renderer, local storage and the local callback receiver; the GPU
worker runs in a thread of this process (tests/deploy/test_render_dispatch.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.exceptions import ObjectNotFound
from prefect.flow_engine import run_flow
from prefect.settings import PREFECT_API_URL, get_current_settings
from prefect.states import AwaitingRetry, Crashed, Running, State
from prefect.workers.process import ProcessJobConfiguration

from entrypoints.flow_worker import EventDrivenProcessWorker
from flows.generate import generate_job
from genjobs.connections import Connections
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.errors import InvalidPayload, JobError
from genjobs.jobs.plan import RenderPlan
from tasks.render import SUPERSEDED, render_sdxl
from tasks.render_ahead import (
    GENERATE_FLOW_NAME,
    own_prefect_environment,
    plan_ahead,
    plan_key,
    queue_render_ahead,
    render_ahead_id,
    settings_differ,
)
from tasks.validate import checked_plan
from tests.deploy.test_render_dispatch import gpu_worker_thread
from tests.flows.helpers import USER_ID, sdxl_job, task_runs

GPU_ENV = {"GENJOBS_RENDER_DISPATCH": "gpu_workers"}


# -- what a worker queues ---------------------------------------------------------------------
def test_a_worker_plans_the_render_of_a_generation_run_as_the_run_itself_would() -> None:
    job = sdxl_job(num_images=3)
    plan = plan_ahead(GENERATE_FLOW_NAME, {"job": job}, GPU_ENV)

    assert plan == checked_plan(job, ())
    assert plan is not None and plan.num_images == 3 and len(plan.seeds) == 3
    assert plan_key(plan, 1) == plan_key(checked_plan(job, ()), 1)  # the run finds the same key
    assert plan_key(plan, 1) != plan_key(checked_plan(sdxl_job(num_images=3), ()), 1)  # another job
    assert plan_key(plan, 2) != plan_key(plan, 1)  # a retry of the run
    assert render_ahead_id(UUID(int=7), 2) != render_ahead_id(UUID(int=7), 1)


def test_a_worker_queues_nothing_for_other_flows_local_renders_or_refused_payloads() -> None:
    job = sdxl_job()
    assert plan_ahead("backfill-legacy-buckets", {"job": job}, GPU_ENV) is None
    assert plan_ahead(GENERATE_FLOW_NAME, {"other": job}, GPU_ENV) is None
    assert plan_ahead(GENERATE_FLOW_NAME, {"job": job}, {}) is None  # renders in process
    local = {"GENJOBS_RENDER_DISPATCH": "in_process"}
    assert plan_ahead(GENERATE_FLOW_NAME, {"job": job}, local) is None
    refused = sdxl_job(resolution="12x12")
    with pytest.raises(InvalidPayload, match="resolution"):
        checked_plan(refused, ())  # the run's own validation names the field
    assert plan_ahead(GENERATE_FLOW_NAME, {"job": refused}, GPU_ENV) is None


def test_a_worker_plans_with_the_runs_reference_hosts_not_its_own() -> None:
    job = sdxl_job(num_images=1, pipeline="img2img")
    job["metadata"]["reference_image_url"] = "http://10.1.2.3:9000/ref.png"
    with pytest.raises(JobError, match=r"10\.1\.2\.3"):
        checked_plan(job, ())
    assert plan_ahead(GENERATE_FLOW_NAME, {"job": job}, GPU_ENV) is None
    allowed = {**GPU_ENV, "GENJOBS_REFERENCE_ALLOW_HOSTS": "10.1.2.3:9000"}
    plan = plan_ahead(GENERATE_FLOW_NAME, {"job": job}, allowed)
    assert plan is not None and plan == checked_plan(job, ("10.1.2.3:9000",))


def test_a_run_whose_prefect_settings_differ_from_the_workers_is_named() -> None:
    own = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
    worker = own_prefect_environment()
    assert settings_differ(own, worker) == []
    per_run = {**own, "PREFECT__FLOW_RUN_ID": "x", "GENJOBS_RENDER_DISPATCH": "gpu_workers"}
    assert settings_differ(per_run, worker) == []  # per-run values and the project's settings
    other_storage = {**own, "PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK": "s3-bucket/x"}
    assert settings_differ(other_storage, worker) == [
        "PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK"
    ]
    other_api = {**own, "PREFECT_API_URL": "http://elsewhere:4200/api"}
    assert settings_differ(other_api, worker) == ["PREFECT_API_URL"]
    assert PREFECT_API_URL.value() != "http://elsewhere:4200/api"


# -- the run and the render its worker queued -------------------------------------------------
async def _flow_run_for(job: dict[str, Any]) -> FlowRun:
    """A flow run of the generation flow, created as a deployment's trigger creates one."""
    async with get_client() as client:
        return await client.create_flow_run(generate_job, parameters={"job": job})


async def _queue(flow_run: FlowRun, plan: RenderPlan) -> TaskRun:
    """Queue the render as the worker does as it takes ``flow_run``."""
    async with get_client() as client:
        return await queue_render_ahead(generate_job, flow_run, plan, client)


async def _run(flow_run: FlowRun, job: dict[str, Any]) -> State[Any]:
    state = await run_flow(  # type: ignore[misc]
        generate_job, flow_run=flow_run, parameters={"job": job}, return_type="state"
    )
    assert isinstance(state, State)
    return state


async def _renders(flow_run_id: UUID) -> list[TaskRun]:
    return [r for r in await task_runs(flow_run_id) if r.task_key.startswith("render")]


async def _until_final(task_run_id: UUID, seconds: float = 30) -> TaskRun:
    deadline = time.monotonic() + seconds
    async with get_client() as client:
        while True:
            run = await client.read_task_run(task_run_id)
            if (run.state and run.state.is_final()) or time.monotonic() > deadline:
                return run
            await asyncio.sleep(0.1)


pytestmark = pytest.mark.usefixtures("prefect_api")


async def test_a_run_adopts_the_render_its_worker_queued_even_when_it_already_ended(
    timed: Callable[..., Connections],
    receiver: CallbackReceiver,
    steps: list[tuple[int, int]],
) -> None:
    # A poll far longer than the test may wait: the run must take the render's end from its
    # read of the render, not from its next poll.
    connections = timed(0.01, render_dispatch="gpu_workers", render_poll_seconds=60.0)
    job = sdxl_job(num_images=3, num_inference_steps=10)
    plan: RenderPlan = checked_plan(job, ())
    flow_run = await _flow_run_for(job)
    queued = await _queue(flow_run, plan)
    assert queued.id == render_ahead_id(flow_run.id, 1) and queued.flow_run_id == flow_run.id

    with gpu_worker_thread(connections, render_sdxl):
        rendered = await _until_final(queued.id)
        assert rendered.state is not None and rendered.state.is_completed()
        state = await asyncio.wait_for(_run(flow_run, job), 30)

    assert state.is_completed(), state.message
    (render,) = await _renders(flow_run.id)  # the run queued none of its own
    assert render.id == queued.id and render.dynamic_key == plan_key(plan, 1)
    assert steps.count((10, 10)) == 1 and len(steps) == 10  # rendered once
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "completed"
    assert [a["url"] for a in payload["assets"]] == [
        f"{USER_ID}/{job['id']}/{i}.png" for i in range(3)
    ]
    assert [a["metadata"]["seed"] for a in payload["assets"]] == list(plan.seeds)
    folder = connections.settings.resolved_storage_root / "workspace-temp" / USER_ID / job["id"]
    assert (folder / "0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_a_run_that_adopts_a_running_render_reads_it_again_soon_without_its_events(
    timed: Callable[..., Connections],
    receiver: CallbackReceiver,
    steps: list[tuple[int, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The render's final event can reach no one (it ended just before the run subscribed, or
    # here: the subscription fails), and the poll is far longer than the test may wait: the
    # run must read the render again soon after adopting it.
    connections = timed(0.1, render_dispatch="gpu_workers", render_poll_seconds=60.0)
    job = sdxl_job(num_images=1, num_inference_steps=10)
    flow_run = await _flow_run_for(job)
    queued = await _queue(flow_run, checked_plan(job, ()))

    def no_events(*args: Any, **kwargs: Any) -> Any:
        raise OSError("the event stream is unreachable")

    monkeypatch.setattr("tasks.render_completion.get_events_subscriber", no_events)
    with gpu_worker_thread(connections, render_sdxl):
        deadline = time.monotonic() + 30
        while not steps and time.monotonic() < deadline:  # it renders when the run adopts it
            await asyncio.sleep(0.05)
        state = await asyncio.wait_for(_run(flow_run, job), 20)

    assert state.is_completed(), state.message
    (render,) = await _renders(flow_run.id)
    assert render.id == queued.id
    assert steps == [(i, 10) for i in range(1, 11)]
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "completed" and len(payload["assets"]) == 1


async def test_a_render_queued_with_another_plan_is_withdrawn_and_the_run_renders_its_own(
    timed: Callable[..., Connections],
    receiver: CallbackReceiver,
    steps: list[tuple[int, int]],
) -> None:
    connections = timed(0.01, render_dispatch="gpu_workers", render_poll_seconds=0.2)
    job = sdxl_job(num_images=1, num_inference_steps=10)
    flow_run = await _flow_run_for(job)
    other = checked_plan({**job, "config": {**job["config"], "num_inference_steps": 12}}, ())
    queued = await _queue(flow_run, other)

    running = asyncio.create_task(_run(flow_run, job))
    withdrawn = await _until_final(queued.id)  # no GPU worker yet: only the run can end it
    with gpu_worker_thread(connections, render_sdxl):
        state = await asyncio.wait_for(running, 60)

    assert withdrawn.state is not None and withdrawn.state.name == SUPERSEDED
    assert state.is_completed(), state.message
    renders = {r.id: r for r in await _renders(flow_run.id)}
    assert set(renders) - {queued.id}, "the run queued its own render"
    (own,) = [r for i, r in renders.items() if i != queued.id]
    assert own.state is not None and own.state.is_completed()
    assert steps == [(i, 10) for i in range(1, 11)]  # the run's plan (10 steps), once
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "completed" and len(payload["assets"]) == 1


async def test_a_render_queued_for_a_run_that_ended_stops_before_its_first_step(
    timed: Callable[..., Connections],
    receiver: CallbackReceiver,
    steps: list[tuple[int, int]],
) -> None:
    connections = timed(0.01, render_dispatch="gpu_workers")
    job = sdxl_job(num_images=1, num_inference_steps=10)
    flow_run = await _flow_run_for(job)
    async with get_client() as client:  # its process never started
        await client.set_flow_run_state(flow_run.id, Crashed(message="no process"), force=True)
    queued = await _queue(flow_run, checked_plan(job, ()))

    with gpu_worker_thread(connections, render_sdxl):
        ended = await _until_final(queued.id)

    assert ended.state is not None and ended.state.is_final() and not ended.state.is_completed()
    assert "ended" in (ended.state.message or ""), ended.state.message
    assert steps == []  # not one render step
    assert receiver.accepted(job["id"]) == []


async def test_a_run_started_again_gets_a_render_of_its_own_not_its_first_runs(
    timed: Callable[..., Connections],
    receiver: CallbackReceiver,
    steps: list[tuple[int, int]],
) -> None:
    connections = timed(0.01, render_dispatch="gpu_workers", render_poll_seconds=0.2)
    job = sdxl_job(num_images=1, num_inference_steps=10)
    plan = checked_plan(job, ())
    flow_run = await _flow_run_for(job)
    first = await _queue(flow_run, plan)
    async with get_client() as client:  # its first run crashed before its render began
        await client.set_flow_run_state(flow_run.id, Running(), force=True)
        await client.set_flow_run_state(flow_run.id, Crashed(message="host lost"), force=True)

    with gpu_worker_thread(connections, render_sdxl):
        stopped = await _until_final(first.id)
        async with get_client() as client:  # started again, as a retry from the UI does
            await client.set_flow_run_state(flow_run.id, AwaitingRetry(), force=True)
            again = await client.read_flow_run(flow_run.id)
        assert again.run_count == 1
        second = await _queue(again, plan)  # its worker takes it again
        state = await asyncio.wait_for(_run(again, job), 60)

    assert first.id == render_ahead_id(flow_run.id, 1)
    assert second.id == render_ahead_id(flow_run.id, 2) != first.id
    assert stopped.state is not None and not stopped.state.is_completed()
    assert state.is_completed(), state.message
    renders = {r.id: r for r in await _renders(flow_run.id)}
    assert set(renders) == {first.id, second.id}  # the run adopted its own attempt's render
    assert renders[second.id].state is not None and renders[second.id].state.is_completed()
    assert steps == [(i, 10) for i in range(1, 11)]  # rendered once, by the second
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "completed" and len(payload["assets"]) == 1


# -- the worker's side ------------------------------------------------------------------------
def _configuration(**env: str) -> ProcessJobConfiguration:
    """A generation run's job configuration, as the worker prepares it: its own environment and
    settings, the pool's variables, the flow's name."""
    own = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
    return ProcessJobConfiguration(
        env={**own, **GPU_ENV, **env},
        labels={"prefect.io/flow-name": GENERATE_FLOW_NAME},
        command="python -m genjobs.warm_client",
    )


async def _render_ahead_of(flow_run_id: UUID) -> TaskRun | None:
    async with get_client() as client:
        try:
            return await client.read_task_run(render_ahead_id(flow_run_id, 1))
        except ObjectNotFound:
            return None


async def test_the_worker_queues_the_render_unless_told_not_to_or_its_settings_differ(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENJOBS_HOME", str(tmp_path))
    queued, switched_off, other_settings, refused = [
        await _flow_run_for(sdxl_job()) for _ in range(4)
    ]
    async with EventDrivenProcessWorker(work_pool_name="gpu-pool") as worker:
        await worker._queue_render_ahead(queued, _configuration())
        worker.render_ahead = False  # GENJOBS_RENDER_AHEAD=false in the worker's environment
        await worker._queue_render_ahead(switched_off, _configuration())
        worker.render_ahead = True
        differing = _configuration(PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK="s3-bucket/x")
        await worker._queue_render_ahead(other_settings, differing)
        refused.parameters["job"]["config"]["resolution"] = "12x12"
        await worker._queue_render_ahead(refused, _configuration())

    render = await _render_ahead_of(queued.id)
    assert render is not None and render.flow_run_id == queued.id
    assert render.dynamic_key == plan_key(checked_plan(queued.parameters["job"], ()), 1)
    assert render.state is not None and render.state.is_scheduled()  # no GPU worker here
    assert await _render_ahead_of(switched_off.id) is None
    assert await _render_ahead_of(other_settings.id) is None
    assert await _render_ahead_of(refused.id) is None
    assert "PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK" in caplog.text
    async with get_client() as client:  # its run never starts: a later GPU worker skips it
        await client.set_flow_run_state(queued.id, Crashed(message="test over"), force=True)
