"""Every retry policy of the project's tasks, in one place.

A task's decorator names what it retries on (``retry_if_transient``: 5xx, timeouts, dropped
connections); how often, and after which delays, is the policy below that governs it, applied
where the task is called with :func:`with_retries`. The numbers come from the settings, so an
operator tunes them in one place:

- storage tasks (upload, re-upload, folder check, listings, hash checks, removals, copies):
  ``storage_retries`` times, delays doubling from ``storage_retry_base_seconds``;
- database tasks (evidence reads, row writes): ``database_retries`` times, delays doubling from
  ``database_retry_base_seconds``;
- the callback: its own window (``callback_retry_window_seconds``, tasks/callback.py), as the
  contract asks;
- the render: once, five seconds later, on a transient failure (its decorator; a render is too
  expensive to repeat more often).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from genjobs.errors import is_transient
from genjobs.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often a task is retried, and after which delays (seconds)."""

    retries: int
    base_seconds: float

    @property
    def delays(self) -> list[float]:
        return [self.base_seconds * 2**attempt for attempt in range(self.retries)]


def storage_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(settings.storage_retries, settings.storage_retry_base_seconds)


def database_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(settings.database_retries, settings.database_retry_base_seconds)


def with_retries(task_obj: T, policy: RetryPolicy) -> T:
    """The task with the policy's retries and delays (each delay jittered by up to half)."""
    return task_obj.with_options(  # type: ignore[attr-defined,no-any-return]
        retries=policy.retries, retry_delay_seconds=policy.delays, retry_jitter_factor=0.5
    )


def retry_if_transient(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only failures a later attempt could fix (5xx, timeouts, connection errors)."""
    return is_transient(state.data) if isinstance(state.data, BaseException) else False
