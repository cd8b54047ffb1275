"""A generation run's render, queued by the project's worker as it takes the run.

A deployed flow run spends 0.25 to 0.35 s between its worker taking it and its own first step
(its process starts, reads the flow run and the deployment, runs the pull step, starts Prefect's
suspension observer and proposes Running), then validates the payload and queues its render,
which costs it another 0.1 s. The project's worker (entrypoints/flow_worker.py) holds the run's
payload as it takes the run: it validates it with the flow's own code (tasks/validate.py) and
queues the render itself (:func:`queue_render_ahead`) before it starts the run's process, so the
GPU worker renders while the run starts. The run adopts that render instead of queuing one
(``QueuedRender.adopt``, tasks/render_dispatch.py).

- **The same render.** The task run is the family's background task with the plan as its
  parameter, as the run would queue it, linked to the flow run: it is one of the run's task
  runs, and the run's cancellation or end stops it at the render's next check
  (tasks/render.py). Its id derives from the flow run's (:func:`render_ahead_id`), its dynamic
  key from the plan (:func:`plan_key`). The run adopts it only where that key is its own plan's;
  otherwise it withdraws it (Superseded, which stops it) and queues its own.
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

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import TaskRun
from prefect.context import serialize_context
from prefect.results import ResultStore, get_or_create_default_task_scheduling_storage
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


def render_ahead_id(flow_run_id: UUID) -> UUID:
    """The id of the render a worker queues for flow run ``flow_run_id``."""
    return uuid5(RENDER_AHEAD_NAMESPACE, str(flow_run_id))


def plan_key(plan: RenderPlan) -> str:
    """The dynamic key of a render queued ahead: it names the plan (the run compares it with
    its own), and no key of a task run the flow itself creates looks like it."""
    digest = hashlib.sha256(plan.model_dump_json().encode()).hexdigest()
    return f"{KEY_PREFIX}{digest[:32]}"


def _prefect_environment(env: Mapping[str, str | None]) -> dict[str, str | None]:
    """The Prefect settings among ``env`` (``PREFECT__`` names are per run, not settings)."""
    return {
        name: value
        for name, value in env.items()
        if name.startswith("PREFECT_") and not name.startswith("PREFECT__")
    }


def settings_differ(run_env: Mapping[str, str | None]) -> list[str]:
    """The Prefect settings where a run's environment ``run_env`` differs from this process's
    (its environment and its settings in force); empty where they agree."""
    own = _prefect_environment(
        {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
    )
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


async def queue_render_ahead(flow_run_id: UUID, plan: RenderPlan) -> TaskRun:
    """Queue the render of ``plan`` on the GPU workers for flow run ``flow_run_id``, from
    outside the run, as the run itself queues it (Prefect's ``Task.create_run`` for a
    background task, with the key and id of :func:`plan_key` and :func:`render_ahead_id`).
    """
    task = gpu_render_task(plan)
    task.persist_result = True  # as Prefect marks a background task it queues
    parameters_id = uuid4()
    state: State[Any] = Scheduled()
    state.state_details.deferred = True
    state.state_details.task_parameters_id = parameters_id
    storage = await get_or_create_default_task_scheduling_storage()
    store = await ResultStore(result_storage=storage).aupdate_for_task(task)  # type: ignore[arg-type]
    await store_parameters(
        store, parameters_id, {"context": serialize_context(), "parameters": {"plan": plan}}
    )
    async with get_client() as client:
        task_run = await client.create_task_run(
            task=task,
            flow_run_id=flow_run_id,
            dynamic_key=plan_key(plan),
            id=render_ahead_id(flow_run_id),
            name=f"{task.name}-ahead",
            state=state,
            task_inputs={"plan": []},
        )
    assert task_run.state is not None  # created Scheduled
    emit_task_run_state_change_event(
        task_run=task_run, initial_state=None, validated_state=task_run.state
    )
    return task_run
