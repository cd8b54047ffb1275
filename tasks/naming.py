"""Task run names that carry the job id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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
