"""Task run names that carry the job id, and the retry rules shared by every task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from genjobs.errors import is_transient
from genjobs.settings import Settings


def _job_id_of(value: Any) -> str | None:
    if isinstance(value, dict):
        job_id = value.get("id") or value.get("job_id")
        return str(job_id) if job_id else None
    for attribute in ("job_id", "plan", "encoded"):
        inner = getattr(value, attribute, None)
        if isinstance(inner, str):
            return inner
        if inner is not None:
            return _job_id_of(inner)
    return None


def run_name(step: str) -> Callable[..., str]:
    """A ``task_run_name`` callable: ``"{step}-{job_id}"`` (job id found in the parameters)."""

    def name(parameters: dict[str, Any]) -> str:
        named = parameters.get("job_id")
        if isinstance(named, str) and named:
            return f"{step}-{named}"
        for value in parameters.values():
            job_id = _job_id_of(value)
            if job_id:
                return f"{step}-{job_id}"
        return step

    return name


def retry_if_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only failures a later attempt could fix (5xx, timeouts, connection errors)."""
    return is_transient(state.data) if isinstance(state.data, BaseException) else False


def with_settings_retries(task_obj: Any, settings: Settings) -> Any:
    """The task with ``upload_retries`` retries, delays doubling from the base delay."""
    retries = settings.upload_retries
    base = settings.upload_retry_base_seconds
    return task_obj.with_options(
        retries=retries, retry_delay_seconds=[base * 2**attempt for attempt in range(retries)]
    )
