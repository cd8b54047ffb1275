"""Validate the job payload and decide every effective value, before any GPU second."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from genjobs.jobs.payload import parse_job
from genjobs.jobs.plan import RenderPlan, plan_job
from genjobs.references import classify_references
from tasks.naming import run_name


def checked_plan(job: dict[str, Any], allow_hosts: tuple[str, ...]) -> RenderPlan:
    """The render plan of ``job``, or the error naming the field that refuses it; no I/O.

    ``allow_hosts`` are the private hosts a reference URL may name (``reference_allow_hosts``).
    """
    plan = plan_job(parse_job(job))
    # Refuses other users' objects and unsafe URLs, without I/O.
    classify_references(plan, allow_hosts)
    return plan


@task(name="validate-job", task_run_name=run_name("validate"), cache_policy=NO_CACHE)
async def validate_job(job: dict[str, Any], allow_hosts: tuple[str, ...]) -> RenderPlan:
    """Refuse a bad payload with an error naming the field; return the render plan.

    It needs no connection: a deployed run validates before it loads its blocks.
    """
    plan = checked_plan(job, allow_hosts)
    get_run_logger().info(
        "Job %s is a %s %s job: %d asset(s) at %dx%d, %d steps, guidance %s, seeds %s.",
        plan.job_id,
        plan.job_type,
        plan.mode,
        plan.num_images,
        plan.width,
        plan.height,
        plan.steps,
        plan.guidance_scale,
        list(plan.seeds),
    )
    return plan
