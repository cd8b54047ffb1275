"""The deployed path as shipped against the two before it, side by side in one run.

    python benchmarks/warm_path.py [--jobs 40] [--in-flight 8] [--database-url URL]

It starts the deployment as shipped (devstack/stack.py: a real ``prefect server start``, the
pool, the blocks, ``prefect deploy`` from prefect.yaml, the warm runner and one GPU worker on the
CPU) with the renderer that costs nothing (benchmarks/fast_renderer.py), and runs the same jobs
through three paths, each on a work queue of its own:

- ``shipped``: the project's worker (type ``genjobs-process``, entrypoints/flow_worker.py), which
  takes a run when the server schedules it and polls every ``--event-query-seconds`` besides,
  and the warm runner forking the flow run;
- ``run-queues``: the shipped path with ``GENJOBS_RENDER_AHEAD=false`` in the worker's
  environment: the worker leaves the render to the run, which queues it after its process
  started and validated the payload (the path before tasks/render_ahead.py);
- ``full-ca``: the shipped path, with ``PREFECT_API_SSL_CERT_FILE`` set to certifi's bundle in
  the worker's environment, as an operator may set it: the worker's API clients and those of
  the runs it starts (Prefect passes the worker's settings on) then read the full bundle
  (genjobs/plain_http_ca.py);
- ``polling``: Prefect's process worker polling every ``--query-seconds``, and the warm runner
  (the path before the project's worker);
- ``process``: Prefect's process worker polling every ``--query-seconds``, and a new Python
  process per flow run (a copy of the deployment without the ``command`` job variable).

Only the path being measured has a worker running, so the server's CPU during a round is that
path's. Jobs go in through the REST API with ``--in-flight`` of them triggered and not yet
finished (a closed loop), the paths alternating in rounds so that each sees the same machine.
Then, per path:

- overhead: trigger to Completed minus the same work called plainly (validate, render, encode,
  upload, callback with the library functions, one at a time), median and p99;
- trigger to render start (the GPU worker's ``pipeline_started``), median and p99;
- flow runs per minute over the path's rounds;
- orchestration CPU per job, server and workers together: the Prefect server, the flow worker,
  the warm runner and the GPU worker, their children included (the flow-run processes); the
  server's database is its SQLite file in the server process, or PostgreSQL outside it (then
  not counted: the figure says so);
- resident memory of the flow worker and of the warm runner at the start and end of each round
  (each round starts the path's worker anew).

With one job in flight (``--in-flight 1``) the overhead is the path's own latency; with more,
a closed loop's latency is ``in_flight / throughput`` (Little's law), so it measures throughput.
Nothing is asserted: it prints what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import job_payload  # noqa: E402
from benchmarks.scale import add_database_argument, clean_environment  # noqa: E402

SECRET = "warm-path-callback-secret"
FAST = "benchmarks.fast_renderer:FastRenderer"
PATHS = ("shipped", "run-queues", "full-ca", "polling", "process")


def job() -> dict[str, Any]:
    return job_payload(resolution="512x512")


def closed_loop(
    stack: Any, deployment: str, count: int, in_flight: int
) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """Keep ``in_flight`` jobs running until ``count`` finished: trigger and end times by flow
    run id (epoch seconds), and job ids by flow run id."""
    from devstack.stack import FINAL_STATES

    triggered: dict[str, float] = {}
    ended: dict[str, float] = {}
    job_ids: dict[str, str] = {}
    running: set[str] = set()
    while len(ended) < count:
        while len(running) < in_flight and len(triggered) < count:
            payload = job()
            at = time.time()
            run = stack.trigger(deployment, payload)
            triggered[run["id"]] = at
            job_ids[run["id"]] = payload["id"]
            running.add(run["id"])
        body = {"flow_runs": {"id": {"any_": sorted(running)}}, "limit": 200}
        for run in stack.request("POST", "/flow_runs/filter", json=body).json():
            if run["state"]["type"] in FINAL_STATES:
                running.discard(run["id"])
                ended[run["id"]] = time.time()
                if run["state"]["type"] != "COMPLETED":
                    print(f"  warning: {run['name']} ({deployment}) ended "
                          f"{run['state']['type']}: {run['state'].get('message')}")  # fmt: skip
        time.sleep(0.05)
    return triggered, ended, job_ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=40, help="per path")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the paths")
    parser.add_argument(
        "--query-seconds", type=float, default=0.25, help="poll of Prefect's process worker"
    )
    parser.add_argument(
        "--event-query-seconds", type=float, default=5.0, help="poll of the project's worker"
    )
    parser.add_argument("--process-limit", type=int, default=16, help="worker --limit")
    parser.add_argument("--plain-jobs", type=int, default=8, help="plain calls to subtract")
    parser.add_argument(
        "--render-seconds",
        type=float,
        default=0.0,
        help="how long each render lasts (a sleep spread over its steps, as GPU time)",
    )
    add_database_argument(parser)
    parser.add_argument("--paths", default=",".join(PATHS), help="which paths, comma-separated")
    args = parser.parse_args()
    paths = [name for name in args.paths.split(",") if name]
    clean_environment()
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"

    import certifi

    from benchmarks.deployed_path import plain_connections, plain_job
    from benchmarks.fast_renderer import RENDER_SECONDS_VARIABLE, FastRenderer
    from benchmarks.scale import fast_sdxl_stack, percentile, rss_mib, tree_cpu_seconds

    root = Path(tempfile.mkdtemp(prefix="genjobs-warm-"))
    clock = time.monotonic()
    with fast_sdxl_stack(root, args.database_url, SECRET) as (stack, receiver, standin):
        deployments = {
            "shipped": stack.deployment_id("generate-job", "sdxl"),
            "run-queues": stack.copy_deployment(
                "generate-job", "sdxl", "sdxl-run-queues", without_job_variables=[]
            ),
            "full-ca": stack.copy_deployment(
                "generate-job", "sdxl", "sdxl-full-ca", without_job_variables=[]
            ),
            "polling": stack.copy_deployment(
                "generate-job", "sdxl", "sdxl-polling", without_job_variables=[]
            ),
            "process": stack.copy_deployment(
                "generate-job", "sdxl", "sdxl-process", without_job_variables=["command"]
            ),
        }
        queues = {"shipped": "sdxl", **{name: f"sdxl-{name}" for name in PATHS[1:]}}
        runner = stack.start_warm_runner()
        os.environ[RENDER_SECONDS_VARIABLE] = str(args.render_seconds)  # the plain calls
        stack.start_gpu_worker(
            "gpu-0", families="sdxl", **{RENDER_SECONDS_VARIABLE: str(args.render_seconds)}
        )
        stack.wait_for_task_workers(1)
        server = next(p for p in stack.processes if p.name == "server")
        gpu_worker = next(p for p in stack.processes if p.name == "gpu-0")

        def start_worker(path: str) -> Any:
            shipped = path in ("shipped", "run-queues", "full-ca")
            env = {
                "full-ca": {"PREFECT_API_SSL_CERT_FILE": certifi.where()},
                "run-queues": {"GENJOBS_RENDER_AHEAD": "false"},
            }.get(path, {})
            return stack.start_process_worker(
                "gpu-pool",
                limit=args.process_limit,
                query_seconds=args.event_query_seconds if shipped else args.query_seconds,
                worker_type=None if shipped else "process",
                name=f"{path}-worker",
                queues=[queues[path]],
                **env,
            )

        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"Stack ready in {time.monotonic() - clock:.0f} s; {os.cpu_count()} CPUs, load "
              f"average {load}; Prefect's worker polls every {args.query_seconds} s, the "
              f"project's every {args.event_query_seconds} s and on each scheduled run; "
              f"limit {args.process_limit}; fast renderer, {args.render_seconds} s a "
              "render.")  # fmt: skip

        # the same work called plainly, one at a time, against the same stand-ins
        connections = plain_connections(root / "plain", standin, receiver, SECRET, FAST)
        plain = [
            asyncio.run(plain_job(job(), connections, FastRenderer))
            for _ in range(args.plain_jobs + 1)
        ][1:]
        plain_s = statistics.median(plain)
        print(f"Plain calls: median {plain_s:.3f} s over {len(plain)}.")

        latency: dict[str, list[float]] = defaultdict(list)
        wall: dict[str, float] = defaultdict(float)
        cpu: dict[str, float] = defaultdict(float)
        jobs_done: dict[str, int] = defaultdict(int)
        memory: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
        path_of: dict[str, str] = {}  # job id -> path
        triggered_at: dict[str, float] = {}  # job id -> epoch seconds
        per_round = max(1, args.jobs // args.rounds)
        for _ in range(args.rounds):
            for name in paths:
                worker = start_worker(name)
                closed_loop(stack, deployments[name], 2, 2)  # the worker's first runs
                pids = (server.popen.pid, worker.popen.pid, runner.popen.pid, gpu_worker.popen.pid)
                worker_start, runner_start = rss_mib(worker.popen.pid), rss_mib(runner.popen.pid)
                cpu_before = sum(tree_cpu_seconds(pid) for pid in pids)
                started = time.monotonic()
                triggered, ended, job_ids = closed_loop(
                    stack, deployments[name], per_round, args.in_flight
                )
                wall[name] += time.monotonic() - started
                cpu[name] += sum(tree_cpu_seconds(pid) for pid in pids) - cpu_before
                jobs_done[name] += len(ended)
                memory[name].append(
                    (
                        worker_start,
                        rss_mib(worker.popen.pid),
                        runner_start,
                        rss_mib(runner.popen.pid),
                    )
                )
                worker.stop()
                for run_id, at in triggered.items():
                    latency[name].append(ended[run_id] - at - plain_s)
                    path_of[job_ids[run_id]] = name
                    triggered_at[job_ids[run_id]] = at

        # trigger -> render start, from the GPU worker's events
        time.sleep(6)  # the server persists events every 5 s
        to_render: dict[str, list[float]] = defaultdict(list)
        for event in stack.events("genjobs.render.finished"):
            job_id = event["resource"]["prefect.resource.id"].removeprefix("genjobs.job.")
            if job_id in path_of:
                to_render[path_of[job_id]].append(
                    event["payload"]["pipeline_started"] - triggered_at[job_id]
                )

    print()
    print(
        f"{args.jobs} jobs per path in {args.rounds} rounds, {args.in_flight} in flight, seconds:"
    )
    print(f"{'':44s}" + "".join(f"{name:>12s}" for name in paths))

    def row(label: str, values: dict[str, float], fmt: str = "{:12.3f}") -> None:
        print(f"{label:44s}" + "".join(fmt.format(values[name]) for name in paths))

    row("overhead, trigger to Completed, median", {n: statistics.median(latency[n]) for n in paths})
    row("overhead, p99", {n: percentile(latency[n], 0.99) for n in paths})
    row("trigger to render start, median", {n: statistics.median(to_render[n]) for n in paths})
    row("trigger to render start, p99", {n: percentile(to_render[n], 0.99) for n in paths})
    row("flow runs per minute", {n: 60 * jobs_done[n] / wall[n] for n in paths}, "{:12.1f}")
    row("orchestration CPU s per job" + ("" if args.database_url is None else " (without DB)"),
        {n: cpu[n] / max(jobs_done[n], 1) for n in paths})  # fmt: skip
    if paths and paths[0] == "shipped":
        print("Ratios, shipped / each other path (lower is better):")
        medians = {n: statistics.median(latency[n]) for n in paths}
        renders = {n: statistics.median(to_render[n]) for n in paths}
        per_job = {n: cpu[n] / max(jobs_done[n], 1) for n in paths}
        for other in paths[1:]:
            print(f"  against {other}: overhead median {medians['shipped'] / medians[other]:.2f}, "
                  f"trigger to render median {renders['shipped'] / renders[other]:.2f}, "
                  f"CPU per job {per_job['shipped'] / per_job[other]:.2f}")  # fmt: skip
    print(f"Resident memory, MiB, start -> end of each round ({per_round} jobs, the path's worker "
          "started anew each round):")  # fmt: skip
    for name in paths:
        for worker_start, worker_end, runner_start, runner_end in memory[name]:
            print(f"  {name}: flow worker {worker_start:.0f} -> {worker_end:.0f} "
                  f"({100 * (worker_end - worker_start) / worker_start:+.0f} %), warm runner "
                  f"{runner_start:.0f} -> {runner_end:.0f}")  # fmt: skip
    print(f"\nTotal {time.monotonic() - clock:.0f} s.")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
