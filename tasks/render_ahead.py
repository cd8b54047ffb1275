"""A generation run's render, queued by the project's worker as it takes the run.

A deployed flow run spends 0.25 to 0.35 s between its worker taking it and its own first step
(its process starts, reads the flow run and the deployment, runs the pull step, starts Prefect's
suspension observer and proposes Running), then validates the payload and queues its render,
which costs it another 0.1 s. The project's worker (entrypoints/flow_worker.py) holds the run's
payload as it takes the run: it validates it with the flow's own code (tasks/validate.py) and
queues the render itself (:func:`queue_render_ahead`) before it starts the run's process, so the
GPU worker renders while the run starts. The run adopts that render instead of queuing one
(``QueuedRender.start``, tasks/render_dispatch.py).

- **The same render.** The task run is the family's background task with the plan as its
  parameter, as the run would queue it, linked to the flow run: it is one of the run's task
  runs, and the run's cancellation or end stops it at the render's next check
  (tasks/render.py). Its id derives from the flow run's and the attempt's
  (:func:`render_ahead_id`), its dynamic key from the plan and the attempt (:func:`plan_key`):
  a run started again (a retry) gets a render of its own, never the ended one of the attempt
  before. The run adopts the render only where that key is its own plan's; otherwise it
  withdraws it (Superseded, which stops it) and queues its own.
- **The same settings.** The worker queues only where the run's Prefect settings are its own
  (:func:`settings_differ`): the render then reads its parameters from the storage the run would
  have written them to, and gets the settings the run would have handed it. The plan is made
  with the run's ``GENJOBS_REFERENCE_ALLOW_HOSTS`` (:func:`plan_ahead`).
- **Nothing rendered that the run refuses.** A payload the validation refuses is queued nothing:
  the run refuses it again and sends its failed callback, before any GPU second.
- **Nothing lost.** Where the worker cannot queue (an API error), it says so and starts the run,
  which queues its render as before; a run whose process never starts ends Crashed, and its
  render stops at its first check.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any
from uuid import UUID, uuid4, uuid5

from prefect import Flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.context import FlowRunContext, serialize_context
from prefect.results import (
    ResultStore,
    get_or_create_default_task_scheduling_storage,
    get_result_store,
)
from prefect.settings import get_current_settings
from prefect.states import Scheduled, State
from prefect.task_worker import store_parameters
from prefect.utilities.engine import emit_task_run_state_change_event

from genjobs.jobs.plan import RenderPlan
from genjobs.settings import Settings
from tasks.render import gpu_render_task
from tasks.validate import checked_plan

GENERATE_FLOW_NAME = "generate-job"
"""The name of the generation flow (flows/generate.py), whose renders a worker queues."""
RENDER_AHEAD_NAMESPACE = UUID("6f1d2c59-4b1e-4f0c-9a57-3e0f3b6c2d1a")
KEY_PREFIX = "ahead-"


def render_ahead_id(flow_run_id: UUID, attempt: int) -> UUID:
    """The id of the render a worker queues for attempt ``attempt`` (the flow run's run count
    once it runs: 1 for its first run) of flow run ``flow_run_id``."""
    return uuid5(RENDER_AHEAD_NAMESPACE, f"{flow_run_id}/{attempt}")


def plan_key(plan: RenderPlan, attempt: int) -> str:
    """The dynamic key of a render queued ahead: it names the plan (the run compares it with
    its own) and the attempt, and no key of a task run the flow itself creates looks like it
    (the server answers a create with a used key with the task run that has it)."""
    digest = hashlib.sha256(plan.model_dump_json().encode()).hexdigest()
    return f"{KEY_PREFIX}{attempt}-{digest[:32]}"


def _prefect_environment(env: Mapping[str, str | None]) -> dict[str, str | None]:
    """The Prefect settings among ``env`` (``PREFECT__`` names are per run, not settings)."""
    return {
        name: value
        for name, value in env.items()
        if name.startswith("PREFECT_") and not name.startswith("PREFECT__")
    }


def own_prefect_environment() -> dict[str, str | None]:
    """This process's Prefect settings as a run's environment carries them: its environment
    and its settings in force (the worker reads them once: about 10 ms of CPU)."""
    return _prefect_environment(
        {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
    )


def settings_differ(run_env: Mapping[str, str | None], own: Mapping[str, str | None]) -> list[str]:
    """The Prefect settings where a run's environment ``run_env`` differs from ``own``
    (:func:`own_prefect_environment`); empty where they agree."""
    run = _prefect_environment(run_env)
    return sorted(name for name in own.keys() | run.keys() if own.get(name) != run.get(name))


def plan_ahead(
    flow_name: str | None, parameters: Mapping[str, Any], run_env: Mapping[str, str | None]
) -> RenderPlan | None:
    """The plan whose render a worker queues for a flow run, or ``None`` where it queues none:
    the run is not a generation run, it renders in its own process, or its payload is refused
    (the run refuses it again, with its failed callback).

    Raises:
        pydantic.ValidationError: The run's GENJOBS_ settings are not valid (the run fails too).
    """
    if flow_name != GENERATE_FLOW_NAME or "job" not in parameters:
        return None
    values: dict[str, Any] = {
        field: run_env[name]
        for field, name in (
            ("render_dispatch", "GENJOBS_RENDER_DISPATCH"),
            ("reference_allow_hosts", "GENJOBS_REFERENCE_ALLOW_HOSTS"),
        )
        if run_env.get(name) is not None
    }
    run_settings = Settings(**values)
    if run_settings.render_dispatch != "gpu_workers":
        return None
    try:
        return checked_plan(parameters["job"], run_settings.reference_allow_hosts)
    except Exception:
        return None


async def queue_render_ahead(
    flow: Flow[..., Any], flow_run: FlowRun, plan: RenderPlan, client: PrefectClient
) -> TaskRun:
    """Queue the render of ``plan`` on the GPU workers for the run of ``flow_run`` (of
    ``flow``) about to start (its attempt ``run_count + 1``), from outside the run, as the run
    itself queues it (Prefect's ``Task.create_run`` for a background task), with the key and id
    of :func:`plan_key` and :func:`render_ahead_id`, through ``client``.

    The render gets the context the run would hand it (:func:`run_context`): a GPU worker
    renders inside it, so the render's events, and the task run the server records from them,
    stay the run's.
    """
    attempt = flow_run.run_count + 1
    task = gpu_render_task(plan)
    task.persist_result = True  # as Prefect marks a background task it queues
    parameters_id = uuid4()
    state: State[Any] = Scheduled()
    state.state_details.deferred = True
    state.state_details.task_parameters_id = parameters_id
    storage = await get_or_create_default_task_scheduling_storage()
    store = await ResultStore(result_storage=storage).aupdate_for_task(task)  # type: ignore[arg-type]
    context = await run_context(flow, flow_run, client)
    await store_parameters(store, parameters_id, {"context": context, "parameters": {"plan": plan}})
    task_run = await client.create_task_run(
        task=task,
        flow_run_id=flow_run.id,
        dynamic_key=plan_key(plan, attempt),
        id=render_ahead_id(flow_run.id, attempt),
        name=f"{task.name}-ahead",
        state=state,
        task_inputs={"plan": []},
    )
    assert task_run.state is not None  # created Scheduled
    emit_task_run_state_change_event(
        task_run=task_run, initial_state=None, validated_state=task_run.state
    )
    return task_run


async def run_context(
    flow: Flow[..., Any], flow_run: FlowRun, client: PrefectClient
) -> dict[str, Any]:
    """The context a run of ``flow`` hands the renders it queues, as Prefect serialises it
    inside the run (``serialize_context``): the flow run, the flow, its parameters and result
    store, and the settings in force."""
    result_store = await get_result_store().aupdate_for_flow(flow)
    with FlowRunContext(
        flow=flow,
        flow_run=flow_run,
        client=client,
        task_runner=flow.task_runner.duplicate(),
        parameters=flow_run.parameters,
        result_store=result_store,
        persist_result=flow.persist_result if flow.persist_result is not None else False,
    ):
        return serialize_context()
