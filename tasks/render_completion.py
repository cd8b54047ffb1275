"""The final state of one queued render, from the API's event stream.

Prefect's ``TaskRunWaiter`` listens to every task run's final state: each flow run that waits
for a render opens a subscription to all of them, and the server first sends it every such event
of the last minute. At 50 jobs a minute that was about 350 events sent to, and parsed by, each
job, and every job's final task-run states sent to every job in flight.
:class:`RenderCompletion` subscribes to the final states of its render's task run alone.

It only makes the wait shorter: where the subscription fails, or connects only after the
render ended and the server had not stored that event yet, the flow still reads the render's
state every ``render_poll_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from uuid import UUID

from prefect.client.schemas.objects import TERMINAL_STATES
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.schemas.events import Event
from prefect.states import State

logger = logging.getLogger(__name__)

SUBSCRIBE_SECONDS = 5.0
"""The longest a submission waits for the subscription (a server that accepts connections and
does not answer makes the subscriber try again for about ten seconds)."""
FINAL_STATE_EVENTS = sorted(f"prefect.task-run.{state.name.title()}" for state in TERMINAL_STATES)


def final_state_filter(task_run_id: UUID) -> EventFilter:
    """The final-state events of one task run."""
    return EventFilter(
        event=EventNameFilter(name=FINAL_STATE_EVENTS),
        resource=EventResourceFilter(id=[f"prefect.task-run.{task_run_id}"]),
    )


def state_of(event: Event, task_run_id: UUID) -> State[Any]:
    """The state an event of a task run's state change carries, as ``TaskRunWaiter`` reads it."""
    state: State[Any] = State.model_validate(
        {"id": event.id, "timestamp": event.occurred, **event.payload["validated_state"]}
    )
    state.state_details.task_run_id = task_run_id
    return state


class RenderCompletion:
    """Listens for the final state of task run ``task_run_id`` from :meth:`start` to
    :meth:`close`; start it before the task run is created, so its final state cannot come
    first."""

    def __init__(self, task_run_id: UUID) -> None:
        self.task_run_id = task_run_id
        self.state: State[Any] | None = None
        self._arrived = asyncio.Event()
        self._listening: asyncio.Task[None] | None = None

    async def start(self, within: float = SUBSCRIBE_SECONDS) -> None:
        """Subscribe; returns once the server has the subscription, once it failed (logged),
        or after ``within`` seconds (it goes on trying in the background)."""
        subscribed = asyncio.Event()
        self._listening = asyncio.create_task(self._listen(subscribed))
        waiting = asyncio.create_task(subscribed.wait())
        await asyncio.wait(
            {self._listening, waiting}, timeout=within, return_when=asyncio.FIRST_COMPLETED
        )
        waiting.cancel()

    async def _listen(self, subscribed: asyncio.Event) -> None:
        try:
            async with get_events_subscriber(filter=final_state_filter(self.task_run_id)) as sub:
                subscribed.set()
                async for event in sub:
                    self.state = state_of(event, self.task_run_id)
                    self._arrived.set()
                    return
        except Exception as exc:  # the flow polls instead
            logger.debug("The final state of render %s is polled: %s", self.task_run_id, exc)

    def ended(self, state: State[Any]) -> None:
        """The render's final state, read from the API: :meth:`wait` returns it at once."""
        self.state = state
        self._arrived.set()

    async def wait(self, timeout: float) -> State[Any] | None:
        """The render's final state, or ``None`` if it has not arrived within ``timeout``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout)
        return self.state

    async def close(self) -> None:
        """Stop listening."""
        if self._listening is not None and not self._listening.done():
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
