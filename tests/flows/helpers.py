"""Helpers for flow tests: job payloads, run inspection through the Prefect API."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun

USER_ID = "3f1b6a52-8c0d-4d8e-9b9a-2f4c7e1d0a11"


def sdxl_job(**config: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"num_images": 3, "num_inference_steps": 10, "resolution": "256x256"}
    base.update(config)
    return {
        "id": str(uuid.uuid4()),
        "user_id": USER_ID,
        "type": "sdxl_image_fast",
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "blurry",
        "config": base,
        "metadata": {"aspect_ratio": "1:1"},
    }


async def task_runs(flow_run_id: uuid.UUID) -> list[TaskRun]:
    """Every task run of the flow run the API has recorded."""
    async with get_client() as client:
        return await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


async def settled_task_runs(
    flow_run_id: uuid.UUID, last_step: str = "callback", deadline_seconds: float = 60.0
) -> list[TaskRun]:
    """The flow run's task runs once the API has recorded its ``last_step`` task run in a
    final state (task run states reach the API as events, after the flow returns).

    Raises:
        AssertionError: Not recorded within ``deadline_seconds`` (a bound, not a measure).
    """
    deadline = time.monotonic() + deadline_seconds
    while True:
        runs = await task_runs(flow_run_id)
        if any(
            run.name.startswith(f"{last_step}-") and run.state is not None and run.state.is_final()
            for run in runs
        ):
            return runs
        if time.monotonic() > deadline:
            raise AssertionError(
                f"No final {last_step} task run of flow run {flow_run_id} was recorded within "
                f"{deadline_seconds} s: {sorted(run.name for run in runs)}"
            )
        await asyncio.sleep(0.05)


async def task_run_names(flow_run_id: uuid.UUID) -> list[str]:
    """The names of every task run of the flow run the API has recorded, sorted."""
    return sorted(run.name for run in await task_runs(flow_run_id))


async def task_run_counts(flow_run_id: uuid.UUID) -> Counter[str]:
    """How many task runs of each task the flow run made (by task name prefix)."""
    return Counter(name.split("-")[0] for name in await task_run_names(flow_run_id))
