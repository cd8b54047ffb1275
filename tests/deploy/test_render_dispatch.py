"""Render dispatch on the session's Prefect API: cancellation stops a render at its next step and
sends one cancelled callback, and a render presumed lost is submitted again and rendered once.

The renders use the timed renderer (devstack/timed_renderer.py: real pipeline cache, sleeping
steps), the local callback receiver and local storage; the GPU worker runs in a thread of this
process, as entrypoints/gpu_worker.py runs it in its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.states import Cancelling

from entrypoints.gpu_worker import GpuTaskWorker
from flows.generate import generate_job
from genjobs.connections import Connections, connections_from_settings
from genjobs.devserver.receiver import CallbackReceiver
from tasks.render import SUPERSEDED, render_sdxl, serving_with
from tests.conftest import make_settings
from tests.flows.helpers import USER_ID, sdxl_job
from tests.settings_env import install_settings

pytestmark = pytest.mark.usefixtures("prefect_api")
TIMED = "devstack.timed_renderer:TimedRenderer"


def timed_connections(
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    secret: str,
    monkeypatch: pytest.MonkeyPatch,
    step_seconds: float,
    **overrides: Any,
) -> Connections:
    """Settings with the timed renderer installed in the environment; their connections."""
    monkeypatch.setenv("GENJOBS_TIMED_STEP_SECONDS", str(step_seconds))
    monkeypatch.setenv("GENJOBS_TIMED_LOAD_SECONDS", "0")
    settings = make_settings(
        tmp_path, model_cache, receiver, secret, renderer_class=TIMED, **overrides
    )
    return connections_from_settings(install_settings(monkeypatch, settings))


async def flow_run_id_of(job_id: str) -> UUID:
    async with get_client() as client:
        (run,) = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"job-{job_id}"]))
        )
    return run.id


def in_thread(action: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def gpu_worker_thread(connections: Connections, *tasks: Any) -> Iterator[None]:
    """A GpuTaskWorker serving with ``connections`` on its own event loop in a thread,
    cancelled on exit."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner: dict[str, asyncio.Task[Any]] = {}

    async def serve() -> None:
        worker = GpuTaskWorker(*tasks)
        current = asyncio.current_task()
        assert current is not None
        runner["task"] = current
        started.set()
        with (
            contextlib.suppress(asyncio.CancelledError, BaseExceptionGroup),
            serving_with(connections),
        ):
            await worker.astart()

    thread = in_thread(lambda: loop.run_until_complete(serve()))
    assert started.wait(10)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(runner["task"].cancel)
        thread.join(15)
        loop.close()


async def test_cancelling_a_run_stops_its_render_at_a_step_and_reports_it_once(
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[tuple[int, int]],
) -> None:
    connections = timed_connections(
        tmp_path, model_cache, receiver, callback_secret, monkeypatch, 0.1,
        cancel_check_seconds=0.2,
    )  # fmt: skip
    job = sdxl_job(num_images=1, num_inference_steps=40)
    cancelled_at: list[float] = []

    def cancel_after_a_few_steps() -> None:
        deadline = time.monotonic() + 60
        while len(steps) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        run_id = asyncio.run(flow_run_id_of(job["id"]))
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run_id, Cancelling(), force=True)
        cancelled_at.append(time.monotonic())

    canceller = in_thread(cancel_after_a_few_steps)
    state = await generate_job(job, return_state=True)
    stopped_at = time.monotonic()
    canceller.join(10)

    assert state.is_cancelling() or state.is_cancelled(), state
    done = max(step for step, _ in steps)
    assert 3 <= done < 40, done
    assert stopped_at - cancelled_at[0] < 2.0  # the next check after 0.2 s, plus the hook
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "failed" and payload["assets"] == []
    assert payload["metadata"]["error_code"] == "CANCELLED"
    assert "cancelled" in payload["error_message"]
    assert not (connections.settings.resolved_storage_root / "workspace-temp" / USER_ID).exists()
    assert not (connections.settings.work_dir / job["id"]).exists()


async def test_a_render_presumed_lost_is_submitted_again_and_rendered_once(
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[tuple[int, int]],
) -> None:
    connections = timed_connections(
        tmp_path, model_cache, receiver, callback_secret, monkeypatch, 0.01,
        render_dispatch="gpu_workers", render_queue_timeout_seconds=1.0,
        render_poll_seconds=0.2,
    )  # fmt: skip
    job = sdxl_job(num_images=2, num_inference_steps=10)
    running: asyncio.Task[Any] = asyncio.create_task(
        generate_job(job, return_state=True)  # type: ignore[arg-type]
    )
    # No GPU worker yet: the render waits past the queue timeout and is submitted again. The
    # first submission is still queued, so the worker receives both, in order.
    deadline = time.monotonic() + 30
    async with get_client() as client:
        while time.monotonic() < deadline:
            runs = await client.read_task_runs()
            if any(r.state and r.state.name == SUPERSEDED for r in runs):
                break
            await asyncio.sleep(0.1)
    with gpu_worker_thread(connections, render_sdxl):
        state = await asyncio.wait_for(running, 60)

    assert state.is_completed(), state.message
    async with get_client() as client:
        renders = [
            r
            for r in await client.read_task_runs()
            if r.flow_run_id == state.state_details.flow_run_id and r.name.startswith("render")
        ]
    by_state = sorted((r.state.type.value, r.state.message or "") for r in renders if r.state)
    assert [s for s, _ in by_state] == ["COMPLETED", "FAILED"], by_state
    assert "superseded" in by_state[1][1]
    assert steps.count((10, 10)) == 1  # one render ran to its end; the superseded one never began
    assert len(steps) == 10
    assert [p["status"] for p in receiver.accepted(job["id"])] == ["completed"]


async def test_a_run_whose_blocks_do_not_load_withdraws_its_queued_render(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a deployed run: the flow reads the environment at its entry.
    monkeypatch.setenv("GENJOBS_HOME", str(tmp_path))
    monkeypatch.setenv("GENJOBS_RENDER_DISPATCH", "gpu_workers")
    monkeypatch.setenv("GENJOBS_CALLBACK_BLOCK", "no-such-endpoint")
    job = sdxl_job()
    state = await generate_job(job, return_state=True)  # type: ignore[arg-type]

    assert state.is_failed() and "no-such-endpoint" in (state.message or "")
    deadline = time.monotonic() + 30  # the server records task runs in batches
    while True:
        async with get_client() as client:
            renders = [
                r
                for r in await client.read_task_runs()
                if r.flow_run_id == state.state_details.flow_run_id and r.name.startswith("render")
            ]
        if any(r.state and r.state.is_final() for r in renders) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    (queued,) = renders
    assert queued.state is not None and queued.state.name == SUPERSEDED
    assert queued.state.message == "The run's blocks did not load"
