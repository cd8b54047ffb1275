"""What Prefect alone costs per job on the deployed path, beside what a real job costs.

    python benchmarks/prefect_floor.py [--jobs 48] [--rounds 2] [--in-flight 8]
                                       [--database-url URL]

It starts the deployment as shipped (benchmarks/scale.py: server, pools, blocks, the sdxl
deployment on the fast renderer, the warm runner, the project's worker and one GPU worker on the
CPU), runs one job, and reads back its Prefect footprint: task runs, log lines and artifacts.
It then deploys ``job_shaped`` below on the same pool and pull steps: a flow of that footprint
that does nothing else (its task runs run in the flow, log a line each and return), given as
many more log lines as its first run lacked against the job's (it prints both footprints).
Rounds of ``--jobs`` runs of each, ``--in-flight`` at a time, alternate; each round prints
the orchestration CPU per job (the server, the worker, the warm runner with the forked runs,
the GPU worker), runs per minute and the median latency, and the end prints both side by side
with their ratio.

The job-shaped flow is the floor any job of that footprint pays on this path: the CPU target of
0.5 s per job cannot be met below it, whatever the project's own code does. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.scale import (  # noqa: E402
    add_database_argument,
    clean_environment,
    fast_sdxl_stack,
    job,
    percentile,
    run_jobs,
    tree_cpu_seconds,
)

FLOOR_DEPLOYMENT = "job-shaped"
FLOOR_FLOW = "job-shaped"


@task(persist_result=False)
def shaped_step(number: int) -> int:
    get_run_logger().info("Step %d ran.", number)
    return number


@flow(name=FLOOR_FLOW, persist_result=False)
def job_shaped(job: dict[str, Any], task_runs: int = 8, log_lines: int = 0, artifacts: int = 2):
    """``task_runs`` task runs of one log line each, ``log_lines`` more lines, ``artifacts``
    markdown artifacts; ``job`` is taken as a generation job is, and not used."""
    logger = get_run_logger()
    for number in range(task_runs):
        shaped_step(number)
    for number in range(log_lines):
        logger.info("Line %d of job %s.", number, job.get("id"))
    for number in range(artifacts):
        create_markdown_artifact(markdown=f"Artifact {number}.", key=f"shaped-{number}")


def footprint(stack: Any, flow_run_id: str) -> dict[str, int]:
    """Task runs, log lines and artifacts the API holds for one flow run."""
    logs = stack.request(
        "POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}}
    ).json()
    return {
        "task_runs": len(stack.task_runs_of([flow_run_id])),
        "log_lines": len(logs),
        "artifacts": len(stack.artifacts_of(flow_run_id)),
    }


def one_run(stack: Any, deployment: str) -> str:
    run = stack.trigger(deployment, job())
    (final,) = stack.wait_for_flow_runs([run["id"]])
    if final["state"]["type"] != "COMPLETED":
        raise RuntimeError(f"The run ended {final['state']['type']}: {final['state']['message']}")
    time.sleep(2)  # the batched log and task-run writes land
    return str(run["id"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=48, help="runs of each flow per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=8)
    add_database_argument(parser)
    args = parser.parse_args()
    clean_environment()
    root = Path(tempfile.mkdtemp(prefix="genjobs-floor-"))
    rows: dict[str, list[dict[str, float]]] = {"job": [], "job-shaped": []}
    with fast_sdxl_stack(root, args.database_url) as (stack, _receiver, _standin):
        runner = stack.start_warm_runner()
        worker = stack.start_process_worker("gpu-pool", limit=16, query_seconds=5.0)
        gpu = stack.start_gpu_worker("gpu-0", families="sdxl")
        stack.wait_for_task_workers(1)
        server = next(p for p in stack.processes if p.name == "server")
        parts = {
            "server": server.popen.pid,
            "worker": worker.popen.pid,
            "warm runner": runner.popen.pid,
            "gpu worker": gpu.popen.pid,
        }
        real = stack.deployment_id("generate-job", "sdxl")
        target = footprint(stack, one_run(stack, real))
        flow_id = stack.request("POST", "/flows/", json={"name": FLOOR_FLOW}).json()["id"]
        floor = stack.copy_deployment(
            "generate-job", "sdxl", FLOOR_DEPLOYMENT, without_job_variables=[],
            entrypoint="benchmarks/prefect_floor.py:job_shaped", flow_id=flow_id,
            enforce_parameter_schema=False,
            parameters={"task_runs": target["task_runs"], "artifacts": target["artifacts"]},
        )  # fmt: skip
        shaped = footprint(stack, one_run(stack, floor))
        lines = max(0, target["log_lines"] - shaped["log_lines"])
        stack.request(
            "PATCH",
            f"/deployments/{floor}",
            json={"parameters": {**target, "log_lines": lines}},
        ).raise_for_status()
        shaped = footprint(stack, one_run(stack, floor))
        print(f"A job's footprint: {target}; the job-shaped flow's: {shaped}.")

        for number in range(args.rounds):
            for name, deployment in (("job", real), ("job-shaped", floor)):
                cpu = {part: tree_cpu_seconds(pid) for part, pid in parts.items()}
                started = time.monotonic()
                jobs, triggered, finished = run_jobs(
                    stack, deployment, args.jobs, args.in_flight, started + 1800
                )
                wall = time.monotonic() - started
                time.sleep(2)
                row = {
                    part: (tree_cpu_seconds(pid) - cpu[part]) / len(jobs)
                    for part, pid in parts.items()
                }
                row["all"] = sum(row.values())
                row["per minute"] = 60 * len(jobs) / wall
                row["latency"] = percentile([finished[i] - triggered[i] for i in finished], 0.5)
                rows[name].append(row)
                detail = ", ".join(f"{p} {row[p]:.3f}" for p in parts)
                print(f"Round {number + 1}, {name}: {row['all']:.2f} CPU s per job ({detail}); "
                      f"{row['per minute']:.1f} runs a minute; median latency "
                      f"{row['latency']:.2f} s")  # fmt: skip

    print()
    print("| Per job, medians over rounds | job | job-shaped flow | job / job-shaped |")
    print("|---|---|---|---|")
    for measure in ("all", *parts, "per minute", "latency"):
        job_value = statistics.median(r[measure] for r in rows["job"])
        floor_value = statistics.median(r[measure] for r in rows["job-shaped"])
        label = {"all": "CPU s, all parts", "per minute": "runs a minute",
                 "latency": "latency, s"}.get(measure, f"CPU s, {measure}")  # fmt: skip
        print(f"| {label} | {job_value:.3f} | {floor_value:.3f} | "
              f"{job_value / max(floor_value, 1e-9):.2f}x |")  # fmt: skip
    database = "PostgreSQL (its own CPU not counted)" if args.database_url else "SQLite"
    print(f"Server on {database}; {os.cpu_count()} CPUs.")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
