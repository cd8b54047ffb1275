"""A flow run's context for the state hooks a worker runs outside the flow's process.

When a deployed run is cancelled (or its process dies), the worker runs the flow's hook in its
own process, with no run context: the hook's task runs would then belong to no flow run and its
log lines would not reach the run's page. :func:`hook_run_context` enters a flow run context
naming the hook's flow run, so its tasks and its run logger are attached to that run.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.results import ResultStore
from prefect.task_runners import ThreadPoolTaskRunner


@contextlib.asynccontextmanager
async def hook_run_context(flow: Flow[..., Any], flow_run: FlowRun) -> AsyncIterator[None]:
    """Run the body inside ``flow_run``'s context; as it is where a context already names it
    (a hook the flow engine runs in the flow's own process)."""
    current = FlowRunContext.get()
    if current is not None and current.flow_run is not None and current.flow_run.id == flow_run.id:
        yield
        return
    task_runner: ThreadPoolTaskRunner[Any] = ThreadPoolTaskRunner()
    async with get_client() as client:
        with (
            task_runner,
            FlowRunContext(
                flow=flow,
                flow_run=flow_run,
                parameters=flow_run.parameters,
                client=client,
                result_store=ResultStore(),
                task_runner=task_runner,
                persist_result=False,
            ),
        ):
            yield
