"""RenderCompletion on the session's Prefect API: it hears its own task run's final state, and
only that; it hears one that was recorded before it subscribed; it sends nothing back when it
cannot subscribe (the flow then polls), and it stops listening when closed. A job whose render
runs on a GPU worker (in a thread here) ends on that event, long before its next poll.

The events are emitted as a task worker emits a task run's state change, with the state in the
payload's ``validated_state``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.events.filters import EventFilter, EventResourceFilter
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.generate import generate_job
from genjobs.devserver.receiver import CallbackReceiver
from tasks.render import render_sdxl
from tasks.render_completion import FINAL_STATE_EVENTS, RenderCompletion
from tests.deploy.test_render_dispatch import gpu_worker_thread, timed_connections
from tests.flows.helpers import sdxl_job

pytestmark = pytest.mark.usefixtures("prefect_api")


def emit_state(task_run_id: UUID, name: str, message: str) -> None:
    emit_event(
        event=f"prefect.task-run.{name}",
        resource={"prefect.resource.id": f"prefect.task-run.{task_run_id}"},
        payload={
            "intended": {"from": "RUNNING", "to": name.upper()},
            "validated_state": {"type": name.upper(), "name": name, "message": message},
        },
    )


async def flushed() -> None:
    """Until the events emitted so far have been sent to the API."""
    await asyncio.to_thread(EventsWorker.drain_all)


async def stored(task_run_id: UUID) -> None:
    """Until the API lists an event of the task run (the server writes events in batches)."""
    events = EventFilter(resource=EventResourceFilter(id=[f"prefect.task-run.{task_run_id}"]))
    async with get_client() as client:
        for _ in range(100):
            if (await client.read_events(filter=events, limit=1)).events:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"No event of task run {task_run_id} was stored in 20 s")


def test_the_final_state_events_are_prefects_four() -> None:
    assert FINAL_STATE_EVENTS == [
        "prefect.task-run.Cancelled",
        "prefect.task-run.Completed",
        "prefect.task-run.Crashed",
        "prefect.task-run.Failed",
    ]


async def test_it_hears_its_own_task_runs_final_state_and_no_other() -> None:
    mine, other = uuid4(), uuid4()
    completion = RenderCompletion(mine)
    await completion.start()
    try:
        emit_state(other, "Completed", "another render")
        emit_state(mine, "Running", "not final")
        await flushed()
        assert await completion.wait(1.0) is None  # neither another's nor a Running state

        emit_state(mine, "Failed", "out of memory")
        await flushed()
        state = await completion.wait(10.0)
    finally:
        await completion.close()

    assert state is not None
    assert (state.type.value, state.name, state.message) == ("FAILED", "Failed", "out of memory")
    assert state.state_details.task_run_id == mine


async def test_it_hears_a_final_state_recorded_before_it_subscribed() -> None:
    mine = uuid4()
    emit_state(mine, "Completed", "done early")
    await flushed()
    await stored(mine)

    completion = RenderCompletion(mine)
    await completion.start()
    try:
        state = await completion.wait(10.0)
    finally:
        await completion.close()

    assert state is not None
    assert (state.name, state.message) == ("Completed", "done early")


async def test_without_a_subscription_it_returns_nothing_and_raises_nothing() -> None:
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens
        completion = RenderCompletion(uuid4())
        await asyncio.wait_for(completion.start(), 30)  # refused: at once, not after 5 s
        assert completion._listening is not None and completion._listening.done()
        assert await completion.wait(0.2) is None
        await completion.close()


async def test_a_subscription_that_does_not_answer_holds_the_submission_for_at_most_its_limit() -> (
    None
):
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts the connection and never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            completion = RenderCompletion(uuid4())
            started = asyncio.get_running_loop().time()
            await completion.start(within=0.5)
            held = asyncio.get_running_loop().time() - started
            assert completion._listening is not None and not completion._listening.done()
            await completion.close()
    finally:
        server.close()
    assert 0.5 <= held < 5.0


async def test_closed_it_no_longer_listens() -> None:
    completion = RenderCompletion(uuid4())
    await completion.start()
    listening = completion._listening
    assert listening is not None and not listening.done()

    await completion.close()

    assert listening.cancelled()


async def test_a_job_ends_on_its_renders_completion_event_without_waiting_for_a_poll(
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The state is read every 600 s: only the completion event can end the wait in time.
    connections = timed_connections(
        tmp_path, model_cache, receiver, callback_secret, monkeypatch, 0.01,
        render_dispatch="gpu_workers", render_poll_seconds=600.0,
    )  # fmt: skip
    job = sdxl_job(num_images=1)
    with gpu_worker_thread(connections, render_sdxl):
        state = await asyncio.wait_for(
            generate_job(job, return_state=True),  # type: ignore[arg-type]
            120,
        )

    assert state.is_completed(), state.message
    assert [p["status"] for p in receiver.accepted(job["id"])] == ["completed"]
