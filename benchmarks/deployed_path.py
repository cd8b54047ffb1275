"""Benchmark of the deployed path: model loads, GPU duty cycle and orchestration overhead.

    python benchmarks/deployed_path.py [--backlog 20] [--load-jobs 10] [--overhead-jobs 8]

It starts the deployment as shipped on this machine (devstack/stack.py: a real
``prefect server start``, the pools, the blocks, ``prefect deploy`` from prefect.yaml, the warm
runner, a process worker on gpu-pool and two GPU workers on the CPU) with the timed renderer
(devstack/timed_renderer.py), whose "GPU" time is a sleep per diffusion step, so a render's
length is known and does not fight the rest for this machine's CPU. Storage is the Supabase
stand-in over HTTP, callbacks go to the local receiver. Then it prints:

1. model loads over ``--load-jobs`` jobs through the deployed path (target: one per worker);
2. GPU duty cycle, pipeline seconds over wall seconds, for a backlog of ``--backlog`` jobs whose
   render dominates (target >= 0.95; the predecessor ran at 0.62), on one GPU worker: on a
   two-core machine the flow processes (forked from the warm runner; without it, new Python
   processes of about 3-4 CPU seconds each) cannot feed two;
3. orchestration overhead per job against the same library functions called plainly:
   in-process (the flow in this process against this server, local storage, new API clients
   per job; the 0.15 s target is measured on the embedded default by run_all.py, with held
   clients) and through the deployed path with its GPU workers (target <= 0.5 s).

No assertions: it prints what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

STEP_SECONDS = 0.12  # one simulated diffusion step
LOAD_SECONDS = 3.0  # one simulated model load
SECRET = "benchmark-callback-secret"
JWT_SECRET = "benchmark-jwt-secret-0123456789abcdef0123456789"
USER_ID = "3f1b6a52-8c0d-4d8e-9b9a-2f4c7e1d0a11"
TIMED = "devstack.timed_renderer:TimedRenderer"


def job(steps: int, resolution: str = "512x512") -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "user_id": USER_ID,
        "type": "sdxl_image_fast",
        "prompt": "a lighthouse at dusk",
        "config": {"num_images": 1, "num_inference_steps": steps, "resolution": resolution},
        "metadata": {"aspect_ratio": "1:1"},
    }


# -- the same work, called plainly ---------------------------------------------------------
async def plain_job(raw: dict[str, Any], connections: Any, renderer: Any = None) -> float:
    """Validate, render, encode, upload and call back with the library functions alone
    (``renderer``: a renderer class, by default the timed renderer)."""
    import httpx
    import numpy as np

    from devstack.timed_renderer import TimedRenderer
    from genjobs.assets import EncodedAsset, UploadedAsset, scratch_dir
    from genjobs.callback.payload import serialise
    from genjobs.callback.sender import CallbackSender
    from genjobs.encode.images import encode_images
    from genjobs.jobs.payload import parse_job
    from genjobs.jobs.plan import plan_job
    from genjobs.metadata import completed_payload
    from genjobs.references import classify_references
    from genjobs.storage.base import asset_path, thumbnail_path

    started = time.perf_counter()
    settings, storage = connections.settings, connections.storage
    plan = plan_job(parse_job(raw))
    classify_references(plan)
    output = (renderer or TimedRenderer)(plan.family, settings).render(plan, {}, None)
    folder = scratch_dir(settings.work_dir, plan.job_id)
    (folder / "render").mkdir(parents=True, exist_ok=True)
    files = []
    for index, frames in enumerate(output.frames):
        np.save(folder / "render" / f"{index}.npy", frames, allow_pickle=False)
        files.append(folder / "render" / f"{index}.npy")
    images = encode_images([np.load(f) for f in files], settings.png_compress_level)

    async def upload(index: int, image: Any) -> UploadedAsset:
        path = asset_path(plan.user_id, plan.job_id, index, "png")
        thumb = thumbnail_path(plan.user_id, plan.job_id, index)
        (folder / f"{index}.png").write_bytes(image.png)
        (folder / f"{index}.thumb.webp").write_bytes(image.thumbnail)
        await asyncio.to_thread(storage.put, settings.bucket, path, image.png, "image/png")
        await asyncio.to_thread(storage.put, settings.bucket, thumb, image.thumbnail, "image/webp")
        encoded = EncodedAsset(
            index=index,
            kind="image",
            file=str(folder / f"{index}.png"),
            content_type="image/png",
            extension="png",
            size=len(image.png),
            width=image.width,
            height=image.height,
            thumbnail_file=str(folder / f"{index}.thumb.webp"),
        )
        return UploadedAsset(encoded=encoded, path=path, thumbnail_path=thumb)

    uploaded = await asyncio.gather(*(upload(i, image) for i, image in enumerate(images)))
    payload = completed_payload(
        plan, output.details, list(uploaded), time.perf_counter() - started, None
    )
    async with httpx.AsyncClient(timeout=30) as client:
        callback = connections.callback
        sender = CallbackSender(callback.url, callback.secret, callback.bearer, client)
        await sender.deliver(serialise(payload))
    shutil.rmtree(folder, ignore_errors=True)
    return time.perf_counter() - started


def plain_connections(
    home: Path, standin: Any, receiver: Any, secret: str, renderer_class: str | None = None
) -> Any:
    """The connections of the plain calls: the storage stand-in and the receiver, no blocks."""
    from pydantic import SecretStr

    from genjobs.connections import connections_from_settings
    from genjobs.settings import Settings

    return connections_from_settings(
        Settings(
            home=home,
            supabase_url=standin.url,
            supabase_service_key=SecretStr(standin.token()),
            callback_url=receiver.url,
            job_callback_secret=SecretStr(secret),
            renderer_class=renderer_class,
        )
    )


# -- measurements through the deployed path ------------------------------------------------
def finished_events(stack: Any, job_ids: set[str], timeout: float = 60) -> list[dict[str, Any]]:
    """The genjobs.render.finished events of these jobs (waits for all to be stored)."""
    deadline = time.monotonic() + timeout
    while True:
        events = [
            e
            for e in stack.events("genjobs.render.finished")
            if e["resource"]["prefect.resource.id"].removeprefix("genjobs.job.") in job_ids
        ]
        if len(events) >= len(job_ids) or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def run_backlog(stack: Any, deployment: str, jobs: list[dict[str, Any]]) -> tuple[float, list]:
    started = time.monotonic()
    runs = [stack.trigger(deployment, j) for j in jobs]
    done = stack.wait_for_flow_runs([r["id"] for r in runs], timeout=900)
    states: dict[str, int] = defaultdict(int)
    for run in done:
        states[run["state"]["type"]] += 1
    if set(states) != {"COMPLETED"}:
        print(f"  warning: flow run states {dict(states)}")
    return time.monotonic() - started, done


def iso_seconds(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--load-jobs", type=int, default=10)
    parser.add_argument("--backlog", type=int, default=20)
    parser.add_argument("--backlog-steps", type=int, default=50, help="render = steps x 0.12 s")
    parser.add_argument("--overhead-jobs", type=int, default=8)
    parser.add_argument("--process-limit", type=int, default=6, help="flow runs in flight")
    parser.add_argument(
        "--database-url",
        help="Prefect server database, e.g. postgresql+asyncpg://user@host/db (default SQLite)",
    )
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.update(
        GENJOBS_TIMED_STEP_SECONDS=str(STEP_SECONDS),
        GENJOBS_TIMED_LOAD_SECONDS=str(LOAD_SECONDS),
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    for name in [n for n in os.environ if n.startswith("GENJOBS_") and "TIMED" not in n]:
        del os.environ[name]

    from devstack.stack import blocks_script, local_stack
    from devstack.storage_standin import StorageStandIn
    from genjobs.devserver.receiver import CallbackReceiver

    root = Path(tempfile.mkdtemp(prefix="genjobs-bench-"))
    print(f"Working folder: {root}")
    clock = time.monotonic()
    with (
        CallbackReceiver(SECRET) as receiver,
        StorageStandIn(JWT_SECRET) as standin,
        local_stack(
            root / "stack",
            database_url=args.database_url,
            GENJOBS_RENDERER_CLASS=TIMED,
            GENJOBS_TIMED_STEP_SECONDS=str(STEP_SECONDS),
            GENJOBS_TIMED_LOAD_SECONDS=str(LOAD_SECONDS),
        ) as stack,
    ):
        standin.create_contract_buckets(["workspace-temp"])
        stack.create_pools("gpu-pool")
        stack.save_blocks(blocks_script(standin.url, standin.token(), receiver.url, SECRET))
        stack.deploy("sdxl")
        stack.start_warm_runner()
        stack.start_process_worker("gpu-pool", limit=args.process_limit)
        stack.start_gpu_worker("gpu-0", families="sdxl")
        second_gpu = stack.start_gpu_worker("gpu-1", families="sdxl")
        stack.wait_for_task_workers(2)
        deployment = stack.deployment_id("generate-job", "sdxl")
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"Machine: {os.cpu_count()} CPUs, load average {load} before the stack started.")
        database = "PostgreSQL" if args.database_url else "SQLite"
        print(
            f"Stack ready in {time.monotonic() - clock:.1f} s: server ({database}), pools, blocks,"
        )
        print("  deploy,", end="")
        print(f" a process worker (limit {args.process_limit}) and two GPU workers (CPU device)")
        print(f"  with the timed renderer: {STEP_SECONDS} s per step, {LOAD_SECONDS} s per load.")

        # 1. model loads over N jobs
        jobs = [job(steps=10) for _ in range(args.load_jobs)]
        wall, _ = run_backlog(stack, deployment, jobs)
        events = finished_events(stack, {j["id"] for j in jobs})
        per_worker: dict[str, int] = {}
        during = 0
        for event in events:
            worker = event["payload"]["worker"]
            per_worker[worker] = max(per_worker.get(worker, 0), event["payload"]["pipeline_loads"])
            during += event["payload"]["pipeline_loads_during_render"]
        print()
        print(f"1. Model loads over {len(jobs)} jobs through the deployed path ({wall:.1f} s):")
        for worker, loads in sorted(per_worker.items()):
            print(f"     {worker}: {loads} load(s) in the process (at start-up)")
        print(f"   loads during these {len(events)} renders: {during}; per worker: "
              f"{sum(per_worker.values()) / max(len(per_worker), 1):.1f} (target 1)")  # fmt: skip

        # 2. duty cycle over a backlog, one GPU worker
        second_gpu.stop()
        jobs = [job(steps=args.backlog_steps) for _ in range(args.backlog)]
        wall, _ = run_backlog(stack, deployment, jobs)
        events = finished_events(stack, {j["id"] for j in jobs})
        by_worker: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for event in events:
            payload = event["payload"]
            by_worker[payload["worker"]].append(
                (payload["pipeline_started"], payload["pipeline_finished"])
            )
        print()
        render_seconds = args.backlog_steps * STEP_SECONDS
        print(f"2. GPU duty cycle, backlog of {len(jobs)} jobs of {render_seconds:.1f} s render")
        print(f"   each on one GPU worker ({wall:.1f} s from first trigger to last completion):")
        duties = []
        ideal = render_seconds  # the sleeping steps alone: what a GPU would be busy for
        for worker, spans in sorted(by_worker.items()):
            busy = sum(end - start for start, end in spans)
            window = max(e for _, e in spans) - min(s for s, _ in spans)
            duties.append(busy / window)
            print(f"     {worker}: {len(spans)} renders, {busy:.1f} s in the pipeline over "
                  f"{window:.1f} s = {busy / window:.3f}")  # fmt: skip
            print(f"       counting only the {ideal:.1f} s of steps per render: "
                  f"{len(spans) * ideal / window:.3f}")  # fmt: skip
        mean = statistics.mean(duties)
        print(f"   duty cycle {mean:.3f} (target >= 0.95; predecessor 0.62)")
        gaps = []
        for spans in by_worker.values():
            ordered = sorted(spans)
            gaps += [b[0] - a[1] for a, b in itertools.pairwise(ordered)]
        if gaps:
            print(f"   gap between renders on a worker: median {statistics.median(gaps):.3f} s, "
                  f"max {max(gaps):.3f} s")  # fmt: skip

        # 3. overhead per job: each round runs the plain functions, the in-process flow and the
        # deployed path back to back, so the machine's changing load hits all alike; the
        # overheads are medians of the per-round differences.
        from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
        from pydantic import SecretStr

        from flows.entry_settings import using_settings
        from flows.generate import generate_job
        from genjobs.connections import connections_from_settings
        from genjobs.settings import Settings

        steps = 10
        standin_connections = plain_connections(root / "plain-standin", standin, receiver, SECRET)
        local_settings = Settings(
            home=root / "in-process",
            callback_url=receiver.url,
            job_callback_secret=SecretStr(SECRET),
            renderer_class=TIMED,
        )
        local_connections = connections_from_settings(local_settings)

        async def in_process_flow() -> float:
            started = time.perf_counter()
            state = await generate_job(job(steps), return_state=True)
            if not state.is_completed():
                print(f"   warning: in-process run ended {state.type.value}: {state.message}")
            return time.perf_counter() - started

        def deployed() -> tuple[float, float]:
            started = time.monotonic()
            run = stack.trigger(deployment, job(steps))
            (done,) = stack.wait_for_flow_runs([run["id"]], timeout=300)
            in_run = iso_seconds(done["end_time"]) - iso_seconds(done["start_time"])
            return in_run, time.monotonic() - started

        rows: dict[str, list[float]] = defaultdict(list)
        with temporary_settings({PREFECT_API_URL: stack.api_url, PREFECT_HOME: stack.prefect_home}):
            for round_number in range(args.overhead_jobs + 1):  # round 0 warms up
                plain_standin = asyncio.run(plain_job(job(steps), standin_connections))
                in_run, end_to_end = deployed()
                plain_local = asyncio.run(plain_job(job(steps), local_connections))
                with using_settings(local_settings):
                    flow = asyncio.run(in_process_flow())
                if round_number == 0:
                    continue
                rows["plain (stand-in storage)"].append(plain_standin)
                rows["plain (local storage)"].append(plain_local)
                rows["in-process flow"].append(flow)
                rows["deployed, Running -> Completed"].append(in_run)
                rows["deployed, trigger -> Completed"].append(end_to_end)
                rows["in-process overhead"].append(flow - plain_local)
                rows["deployed overhead, in the run"].append(in_run - plain_standin)
                rows["deployed overhead, end to end"].append(end_to_end - plain_standin)
        print()
        render_s = steps * STEP_SECONDS
        print(f"3. Orchestration overhead per job ({render_s:.1f} s render, one 512x512 image),")
        print(f"   {args.overhead_jobs} rounds, seconds (median, min):")
        targets = {
            "in-process overhead": "new clients per job; the target is run_all.py's",
            "deployed overhead, in the run": "target <= 0.5 s",
            "deployed overhead, end to end": "adds the worker's 1 s poll and a forked flow process",
        }
        for name, values in rows.items():
            note = f"  ({targets[name]})" if name in targets else ""
            print(f"   {name:32s} {statistics.median(values):7.3f} {min(values):7.3f}{note}")
    print(f"\nTotal {time.monotonic() - clock:.0f} s.")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
