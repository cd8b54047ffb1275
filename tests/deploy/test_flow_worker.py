"""The project's worker type: which scheduled events make it poll, and how Prefect finds it.

Taking runs as they are scheduled is shown end to end in test_deployed_path.py (its worker polls
only every 60 s)."""

from __future__ import annotations

import subprocess
import sys
import uuid

from prefect.events import Event, RelatedResource, Resource
from prefect.workers.base import BaseWorker
from prefect.workers.process import ProcessWorker

from entrypoints.flow_worker import WAKE_EVENT, EventDrivenProcessWorker, scheduled_in


def scheduled(pool: str, queue: str, name: str = WAKE_EVENT) -> Event:
    """A flow-run state event shaped as the server emits it for a deployment's run."""
    run = uuid.uuid4()

    def related(kind: str, value: str) -> RelatedResource:
        return RelatedResource(
            {
                "prefect.resource.id": f"prefect.{kind}.{uuid.uuid4()}",
                "prefect.resource.role": kind,
                "prefect.resource.name": value,
            }
        )

    return Event(
        event=name,
        resource=Resource({"prefect.resource.id": f"prefect.flow-run.{run}"}),
        related=[
            related("flow", "generate-job"),
            related("deployment", "sdxl"),
            related("work-queue", queue),
            related("work-pool", pool),
        ],
    )


def test_a_run_scheduled_in_the_workers_pool_wakes_it() -> None:
    assert scheduled_in(scheduled("gpu-pool", "sdxl"), "gpu-pool", ())
    assert scheduled_in(scheduled("gpu-pool", "sdxl"), "gpu-pool", ("sdxl", "wan"))


def test_runs_of_other_pools_queues_or_states_do_not() -> None:
    assert not scheduled_in(scheduled("cpu-pool", "sdxl"), "gpu-pool", ())
    assert not scheduled_in(scheduled("gpu-pool", "wan"), "gpu-pool", ("sdxl",))
    assert not scheduled_in(
        scheduled("gpu-pool", "sdxl", "prefect.flow-run.Running"), "gpu-pool", ()
    )
    unrelated = Event(
        event=WAKE_EVENT, resource=Resource({"prefect.resource.id": "prefect.flow-run.x"})
    )
    assert not scheduled_in(unrelated, "gpu-pool", ())


def test_prefect_finds_the_worker_type_through_the_package_entry_point() -> None:
    assert BaseWorker.get_worker_class_from_type("genjobs-process") is EventDrivenProcessWorker
    assert issubclass(EventDrivenProcessWorker, ProcessWorker)
    # the same job template as the process worker: a pool of either type serves the flows
    assert (
        EventDrivenProcessWorker.get_default_base_job_template()
        == ProcessWorker.get_default_base_job_template()
    )
    script = (
        "from prefect.workers.base import BaseWorker\n"
        "print(BaseWorker.get_all_available_worker_types())"
    )
    listed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "'genjobs-process'" in listed.stdout
