"""Scale run: many jobs through the deployed path with a renderer that costs nothing.

    python benchmarks/scale.py [--jobs 1000] [--in-flight 8] [--process-limit 16]
                               [--path warm|process] [--query-seconds 5]
                               [--gpu-workers 1] [--max-minutes 60] [--database-url URL]

It starts the deployment as shipped (devstack/stack.py: a real ``prefect server start`` on
loopback, the pools, the blocks, ``prefect deploy`` from prefect.yaml, the warm runner, the
project's worker on gpu-pool and GPU workers on the CPU device) with the fast renderer
(benchmarks/fast_renderer.py). Storage is the Supabase Storage stand-in over HTTP, callbacks go
to the local receiver. Jobs are triggered as queue-job would (REST ``create_flow_run``, the job
id as idempotency key), keeping ``--in-flight`` jobs triggered and not yet finished (a closed
loop, so latency measures the path and not an ever-growing backlog). Triggering stops after
``--jobs`` jobs or ``--max-minutes``, whichever comes first; the jobs in flight then finish.

Then every job is checked end to end and the run prints: runs per minute sustained (between
10 % and 90 % of the completions), job latency p50/p99 (trigger to flow run Completed), the
orchestration CPU seconds per job (the server, the flow worker, the warm runner and the GPU
workers, with their children: the flow-run processes), the resident memory of the server (with
its child processes), the flow worker, the warm runner and the GPU workers at the start and the
end (the flow worker's also at each progress report, and its growth from the first tenth of the
jobs on), and what was lost or duplicated:
flow runs per job (and a second trigger of a sample of finished jobs with the same idempotency
key), renders per job (``genjobs.render.finished`` events), accepted terminal callbacks per job,
asset rows per job, and stored objects per job. Nothing is asserted: it prints what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import job_payload  # noqa: E402

SECRET = "scale-callback-secret"
JWT_SECRET = "scale-jwt-secret-0123456789abcdef0123456789abcd"
FAST = "benchmarks.fast_renderer:FastRenderer"
RETRIGGER_SAMPLE = 50


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="Prefect server database, e.g. postgresql+asyncpg://user@host/db (default SQLite)",
    )


def clean_environment() -> None:
    """No analytics, and none of the caller's GENJOBS_ settings: the stack sets its own."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for name in [n for n in os.environ if n.startswith("GENJOBS_")]:
        del os.environ[name]


def job() -> dict[str, Any]:
    return job_payload(resolution="256x256")


def iso_seconds(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants, MiB (0 when it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


@contextlib.contextmanager
def fast_sdxl_stack(
    root: Path, database_url: str | None, secret: str = SECRET
) -> Iterator[tuple[Any, Any, Any]]:
    """The callback receiver, the storage stand-in, and a stack with gpu-pool, the blocks and
    the sdxl deployment on the fast renderer: ``(stack, receiver, standin)``, no workers yet."""
    from devstack.stack import blocks_script, local_stack
    from devstack.storage_standin import StorageStandIn
    from genjobs.devserver.receiver import CallbackReceiver

    with (
        CallbackReceiver(secret, root / "receiver.sqlite") as receiver,
        StorageStandIn(JWT_SECRET) as standin,
        local_stack(
            root / "stack", database_url=database_url, GENJOBS_RENDERER_CLASS=FAST
        ) as stack,
    ):
        standin.create_contract_buckets(["workspace-temp"])
        stack.create_pools("gpu-pool")
        stack.save_blocks(blocks_script(standin.url, standin.token(), receiver.url, secret))
        stack.deploy("sdxl")
        yield stack, receiver, standin


def rss_mib(pid: int) -> float:
    """Resident memory of one process, MiB (0 when it is gone)."""
    import psutil

    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except psutil.Error:
        return 0.0


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its living descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        total = sum(root.cpu_times()[:4])  # user, system, children_user, children_system
        for child in root.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                continue
    except psutil.Error:
        return 0.0
    return float(total)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def run_jobs(
    stack: Any,
    deployment: str,
    total: int,
    in_flight: int,
    deadline: float,
    samples: list[tuple[int, float]] | None = None,
    memory: Callable[[], float] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, float], dict[str, float]]:
    """Closed loop: keep ``in_flight`` jobs running; returns jobs, trigger times, end times.
    With ``memory``, each progress report appends (jobs finished, its value) to ``samples``."""
    from devstack.stack import FINAL_STATES

    jobs: dict[str, dict[str, Any]] = {}
    triggered: dict[str, float] = {}  # flow run id -> wall time of the trigger
    finished: dict[str, float] = {}  # flow run id -> wall time the run was seen final
    running: set[str] = set()
    states: Counter[str] = Counter()
    last_report = time.monotonic()
    while True:
        while len(running) < in_flight and len(jobs) < total and time.monotonic() < deadline:
            payload = job()
            run = stack.trigger(deployment, payload)
            jobs[run["id"]] = payload
            triggered[run["id"]] = time.time()
            running.add(run["id"])
        if not running:
            return jobs, triggered, finished
        body = {"flow_runs": {"id": {"any_": sorted(running)}}, "limit": 200}
        for run in stack.request("POST", "/flow_runs/filter", json=body).json():
            state = run["state"]["type"]
            if state in FINAL_STATES:
                running.discard(run["id"])
                finished[run["id"]] = time.time()
                states[state] += 1
        if time.monotonic() - last_report > 30:
            line = f"  {len(finished)} finished ({dict(states)}), {len(running)} in flight"
            if memory is not None and samples is not None:
                samples.append((len(finished), memory()))
                line += f"; process worker {samples[-1][1]:.0f} MiB"
            print(line)
            last_report = time.monotonic()
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=8, help="jobs triggered, not finished")
    parser.add_argument("--process-limit", type=int, default=16, help="flow processes at once")
    parser.add_argument(
        "--path",
        choices=["warm", "process"],
        default="warm",
        help="warm: flow runs forked by the warm runner (as shipped); process: new processes",
    )
    parser.add_argument(
        "--query-seconds",
        type=float,
        default=5.0,
        help="worker poll (the runbook's; the project's worker also polls on each scheduled run)",
    )
    parser.add_argument("--gpu-workers", type=int, default=1)
    parser.add_argument("--max-minutes", type=float, default=60.0)
    add_database_argument(parser)
    args = parser.parse_args()
    clean_environment()

    root = Path(tempfile.mkdtemp(prefix="genjobs-scale-"))
    clock = time.monotonic()
    with fast_sdxl_stack(root, args.database_url) as (stack, receiver, standin):
        runner = stack.start_warm_runner()
        worker = stack.start_process_worker(
            "gpu-pool", limit=args.process_limit, query_seconds=args.query_seconds
        )
        gpus = [
            stack.start_gpu_worker(f"gpu-{i}", families="sdxl") for i in range(args.gpu_workers)
        ]
        stack.wait_for_task_workers(len(gpus))
        deployment = stack.deployment_id("generate-job", "sdxl")
        if args.path == "process":
            deployment = stack.copy_deployment(
                "generate-job", "sdxl", "sdxl-process", without_job_variables=["command"]
            )
        server = next(p for p in stack.processes if p.name == "server")
        memory_start = {
            "server": tree_rss_mib(server.popen.pid),
            "process worker": rss_mib(worker.popen.pid),
            "warm runner": rss_mib(runner.popen.pid),
            **{g.name: tree_rss_mib(g.popen.pid) for g in gpus},
        }
        cpu_parts = {
            "server": server.popen.pid,
            "flow worker": worker.popen.pid,
            "warm runner": runner.popen.pid,
            **{g.name: g.popen.pid for g in gpus},
        }
        cpu_start = {name: tree_cpu_seconds(pid) for name, pid in cpu_parts.items()}
        database = "PostgreSQL" if args.database_url else "SQLite"
        print(f"Stack ready in {time.monotonic() - clock:.0f} s: server on {database}, process "
              f"worker (limit {args.process_limit}, poll {args.query_seconds} s, flow runs "
              f"{'forked by the warm runner' if args.path == 'warm' else 'as new processes'}), "
              f"{len(gpus)} GPU worker(s), fast renderer; {os.cpu_count()} CPUs.")  # fmt: skip
        print(f"Triggering up to {args.jobs} jobs, {args.in_flight} in flight, for at most "
              f"{args.max_minutes:.0f} min.")  # fmt: skip

        started = time.monotonic()
        deadline = started + 60 * args.max_minutes
        worker_memory = [(0, memory_start["process worker"])]
        jobs, triggered, _ = run_jobs(
            stack,
            deployment,
            args.jobs,
            args.in_flight,
            deadline,
            worker_memory,
            lambda: rss_mib(worker.popen.pid),
        )
        wall = time.monotonic() - started
        memory_end = {
            "server": tree_rss_mib(server.popen.pid),
            "process worker": rss_mib(worker.popen.pid),
            "warm runner": rss_mib(runner.popen.pid),
            **{g.name: tree_rss_mib(g.popen.pid) for g in gpus},
        }
        cpu_per_job = {
            name: (tree_cpu_seconds(pid) - cpu_start[name]) / max(len(jobs), 1)
            for name, pid in cpu_parts.items()
        }

        # -- what the API holds ---------------------------------------------------------------
        time.sleep(3)  # let the batched task-run and event writes land
        runs = []
        offset = 0
        while True:
            page = stack.request(
                "POST",
                "/flow_runs/filter",
                json={
                    "deployments": {"id": {"any_": [deployment]}},
                    "limit": 200,
                    "offset": offset,
                },
            ).json()
            runs += page
            offset += len(page)
            if len(page) < 200:
                break
        states = Counter(r["state"]["type"] for r in runs)
        runs_per_job = Counter(r["parameters"]["job"]["id"] for r in runs)
        sample = random.sample(list(jobs.items()), min(RETRIGGER_SAMPLE, len(jobs)))
        same = sum(stack.trigger(deployment, payload)["id"] == run_id for run_id, payload in sample)
        ends = sorted(iso_seconds(r["end_time"]) for r in runs if r.get("end_time"))
        latencies = [
            iso_seconds(r["end_time"]) - triggered[r["id"]]
            for r in runs
            if r.get("end_time") and r["id"] in triggered
        ]
        renders = Counter(
            e["resource"]["prefect.resource.id"].removeprefix("genjobs.job.")
            for e in stack.events("genjobs.render.finished")
        )

        # -- what the backend and storage hold ------------------------------------------------
        job_ids = [payload["id"] for payload in jobs.values()]
        accepted = Counter(p["job_id"] for p in receiver.accepted())
        objects = Counter(name.split("/")[1] for name in standin.object_names("workspace-temp"))
        asset_rows = {job_id: len(receiver.assets(job_id)) for job_id in job_ids}

    print()
    print(f"Jobs triggered: {len(jobs)} in {wall / 60:.1f} min; flow runs of the deployment: "
          f"{len(runs)}; states {dict(states)}")  # fmt: skip
    if len(ends) >= 10:
        low, high = ends[len(ends) // 10], ends[(9 * len(ends)) // 10]
        completions = (9 * len(ends)) // 10 - len(ends) // 10
        print(f"Runs per minute sustained: {60 * completions / max(high - low, 1e-9):.1f} "
              f"(completions between 10 % and 90 % of the run); overall "
              f"{60 * len(ends) / wall:.1f}")  # fmt: skip
    mean = statistics.fmean(latencies) if latencies else float("nan")
    print(f"Job latency, trigger to Completed: p50 {percentile(latencies, 0.5):.2f} s, "
          f"p99 {percentile(latencies, 0.99):.2f} s, max {max(latencies, default=mean):.2f} s, "
          f"mean {mean:.2f} s")  # fmt: skip
    failures = Counter(
        (r["state"].get("message") or "")[:200] for r in runs if r["state"]["type"] != "COMPLETED"
    )
    for message, count in failures.most_common(3):
        print(f"  {count} run(s) ended: {message}")
    parts = ", ".join(f"{name} {seconds:.3f}" for name, seconds in cpu_per_job.items())
    database_cpu = "" if args.database_url is None else "; PostgreSQL's own CPU not counted"
    print(f"Orchestration CPU per job, server and workers with their children: "
          f"{sum(cpu_per_job.values()):.2f} s ({parts}){database_cpu}")  # fmt: skip
    print("Resident memory, MiB (start -> end; the server with its children):")
    for name in memory_start:
        print(f"  {name:15s} {memory_start[name]:8.0f} -> {memory_end[name]:8.0f}")
    worker_memory.append((len(jobs), memory_end["process worker"]))
    curve = ", ".join(f"{done}: {mib:.0f}" for done, mib in worker_memory)
    print(f"  process worker by jobs finished: {curve}")
    warm = next(((d, m) for d, m in worker_memory if d >= len(jobs) // 10), None)
    if warm is not None and warm[1] > 0:
        end = memory_end["process worker"]
        growth = 100 * (end - warm[1]) / warm[1]
        print(f"  process worker from job {warm[0]} (the first tenth done) to the end: "
              f"{warm[1]:.0f} -> {end:.0f} MiB ({growth:+.1f} %)")  # fmt: skip

    def tally(counts: dict[str, int], expected: int) -> str:
        values = [counts.get(job_id, 0) for job_id in job_ids]
        missing = sum(v < expected for v in values)
        extra = sum(v > expected for v in values)
        return f"{missing} job(s) with fewer, {extra} with more than {expected}"

    print("Lost or duplicated (each job should have exactly the count shown):")
    print(f"  flow runs per job (1):           {tally(runs_per_job, 1)}")
    print(f"  second trigger, same key (same run): {same} of {len(sample)} returned the "
          f"existing run")  # fmt: skip
    print(f"  renders per job (1):             {tally(renders, 1)}")
    print(f"  accepted terminal callbacks (1): {tally(accepted, 1)}")
    print(f"  asset rows per job (1):          {tally(asset_rows, 1)}")
    print(f"  stored objects per job (2):      {tally(objects, 2)}")
    print(f"\nTotal {time.monotonic() - clock:.0f} s.")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
