"""A longer soak: many jobs through the real flow while storage and the callback misbehave.

    python benchmarks/soak.py [--jobs 60] [--max-seconds 300] [--fault-rate 0.2]
                              [--kinds status,hang,drop,drop_after] [--receiver-down-every 7]
                              [--hostile-every 10] [--images 1,3] [--renderer fast|tiny]

Everything runs on loopback in this process and temporary folders: the Supabase Storage
stand-in (``workspace-temp`` with the contract's MIME list) behind ``SupabaseStorage`` with a
short timeout, the local callback receiver, and the ephemeral Prefect API (a throwaway
``PREFECT_HOME`` unless ``PREFECT_API_URL`` or ``PREFECT_HOME`` is set). Each job gets one
fault kind, taken in turn from ``--kinds``, at ``--fault-rate`` of its upload requests; every
``--receiver-down-every``-th job finds the receiver down for a few seconds; every
``--hostile-every``-th job is a payload validation must refuse. After the last job the outbox is
re-sent once. The run stops after ``--jobs`` jobs or ``--max-seconds``, whichever comes first,
and prints a summary (nothing is asserted): jobs completed and failed, job times, storage
requests and injected faults, callbacks refused and accepted, and what went wrong for good:
jobs without exactly one accepted terminal callback, missing or stray objects, sizes that do
not match the callback, and the worker's memory.

The default renderer costs nothing (benchmarks/fast_renderer.py), so the soak exercises the
orchestration and I/O; ``--renderer tiny`` renders with the embedded tiny SDXL instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import USER_ID, job_payload, prepare_environment

BUCKET = "workspace-temp"
JWT_SECRET = "soak-jwt-secret-0123456789abcdef0123456789abcdef"
HOSTILE_CHANGES: tuple[dict[str, Any], ...] = (
    {"id": "../../etc/passwd/"},  # made unique per job below
    {"type": "rv51_fast"},
    {"config": {"guidance_scale": float("nan")}},
    {
        "config": {"pipeline": "img2img"},
        "metadata": {"reference_mode": "modify", "reference_image_url": "file:///etc/passwd"},
    },
    {"prompt": "x" * 5000},
)


@dataclass
class Tally:
    """What the soak saw, job by job."""

    seconds: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    expected: dict[str, int] = field(default_factory=dict)  # job id -> images (0: refused)
    rss: list[int] = field(default_factory=list)  # after each job


def hostile(index: int) -> dict[str, Any]:
    job = job_payload(1)
    change = dict(HOSTILE_CHANGES[index % len(HOSTILE_CHANGES)])
    if "id" in change:
        change["id"] += job["id"]
    return {**job, **change}


async def run_jobs(args: argparse.Namespace, standin: Any, receiver: Any, tally: Tally) -> None:
    import psutil

    from flows.generate import generate_job

    process = psutil.Process()

    kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    sizes = [int(n) for n in args.images.split(",")]
    started = time.monotonic()
    for index in range(args.jobs):
        if time.monotonic() - started > args.max_seconds:
            break
        kind = kinds[index % len(kinds)]
        standin.set_fault_rate(
            args.fault_rate,
            seed=index,
            kind=kind,
            method="POST",
            path_prefix=f"/object/{BUCKET}/",
        )
        if args.receiver_down_every and index % args.receiver_down_every == 1:
            receiver.down_for(args.receiver_down_seconds)
        refused = bool(args.hostile_every) and index % args.hostile_every == args.hostile_every - 1
        job = hostile(index) if refused else job_payload(sizes[index % len(sizes)])
        tally.kinds[kind] += 1
        began = time.perf_counter()
        state = await generate_job(job, return_state=True)
        tally.seconds.append(time.perf_counter() - began)
        tally.outcomes[f"{'refused' if refused else 'valid'} job {state.type.value.lower()}"] += 1
        tally.expected[str(job.get("id"))] = 0 if refused else job["config"]["num_images"]
        tally.rss.append(process.memory_info().rss)
    standin.clear_faults()
    receiver.down_for(0)


def objects_of(standin: Any, job_id: str) -> list[str]:
    prefix = f"{USER_ID}/{job_id}/"
    return [name for name in standin.object_names(BUCKET) if name.startswith(prefix)]


def summary(tally: Tally, standin: Any, receiver: Any, outbox: dict[str, int]) -> list[str]:
    requests = standin.requests
    uploads = [r for r in requests if r.method == "POST" and r.path.startswith("/object/")]
    faults = Counter(r.fault for r in requests if r.fault)
    answered = Counter(r.answered for r in receiver.requests)
    wrong_callbacks, missing, stray, wrong_size = [], 0, 0, 0
    for job_id, images in tally.expected.items():
        terminal = [p for p in receiver.accepted(job_id) if p["status"] in ("completed", "failed")]
        if len(terminal) != 1:
            wrong_callbacks.append(f"{job_id}: {len(terminal)}")
            continue
        expected = {
            path
            for i in range(images)
            for path in (f"{USER_ID}/{job_id}/{i}.png", f"{USER_ID}/{job_id}/{i}.thumb.webp")
        }
        stored = set(objects_of(standin, job_id))
        missing += len(expected - stored)
        stray += len(stored - expected)
        for asset in terminal[0]["assets"]:
            obj = standin.get_object(BUCKET, asset["url"])
            if obj is None or obj.size != asset["metadata"]["file_size_bytes"]:
                wrong_size += 1
    times = sorted(tally.seconds) or [float("nan")]
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    return [
        f"jobs: {len(tally.seconds)} ({', '.join(f'{k}: {v}' for k, v in tally.outcomes.items())})",
        f"job seconds: median {statistics.median(times):.2f}, p95 {p95:.2f}, max {times[-1]:.2f}"
        " (the first job also starts the API)",
        f"fault kinds by job: {dict(tally.kinds)}",
        f"storage requests: {len(requests)} ({len(uploads)} uploads), injected faults: "
        f"{dict(faults)}",
        f"callback answers: {dict(answered)}; outbox re-send: {outbox}",
        f"jobs without exactly one accepted terminal callback: {len(wrong_callbacks)}"
        + (f" {wrong_callbacks[:5]}" if wrong_callbacks else ""),
        f"objects missing: {missing}, stray: {stray}, size differs from the callback: {wrong_size}",
    ]


async def soak(args: argparse.Namespace, scratch: Path) -> None:
    from pydantic import SecretStr

    from benchmarks.fast_renderer import RENDERER_CLASS
    from devstack.storage_standin import StorageStandIn
    from flows.entry_settings import using_settings
    from flows.outbox import redeliver_callbacks
    from genjobs.devserver.receiver import CallbackReceiver
    from genjobs.settings import Settings

    secret = secrets.token_hex(16)
    tally = Tally()
    with (
        StorageStandIn(JWT_SECRET, hang_seconds=1.0) as standin,
        CallbackReceiver(secret) as receiver,
    ):
        standin.create_contract_buckets([BUCKET])
        settings = Settings(
            home=scratch / "home",
            model_cache=scratch / "models",
            supabase_url=standin.url,
            supabase_service_key=SecretStr(standin.token()),
            callback_url=receiver.url,
            job_callback_secret=SecretStr(secret),
            storage_timeout_seconds=args.storage_timeout,
            storage_retries=10,
            storage_retry_base_seconds=0.05,
            callback_retry_window_seconds=args.callback_window,
            callback_retry_base_seconds=0.1,
            callback_retry_cap_seconds=1.0,
            renderer_class=RENDERER_CLASS if args.renderer == "fast" else None,
        )
        began = time.perf_counter()
        with using_settings(settings):  # each flow run builds its connections from these
            await run_jobs(args, standin, receiver, tally)
            outbox = await redeliver_callbacks()
        elapsed = time.perf_counter() - began
        for line in summary(tally, standin, receiver, outbox):
            print(line)
    first, last = tally.rss[0], tally.rss[-1]
    print(
        f"worker RSS after the first job {first / 2**20:.0f} MiB, after the last "
        f"{last / 2**20:.0f} MiB ({100 * (last - first) / first:+.1f} %); wall {elapsed:.1f} s"
    )
    print(f"settings: {json.dumps(vars(args))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60, help="at most this many jobs")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop starting jobs")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="share of uploads failing")
    parser.add_argument("--kinds", default="status,hang,drop,drop_after", help="fault kinds")
    parser.add_argument("--receiver-down-every", type=int, default=7, help="0: never")
    parser.add_argument("--receiver-down-seconds", type=float, default=2.0)
    parser.add_argument("--hostile-every", type=int, default=10, help="0: never")
    parser.add_argument("--images", default="1,3", help="images per job, in turn")
    parser.add_argument("--renderer", choices=("fast", "tiny"), default="fast")
    parser.add_argument("--storage-timeout", type=float, default=0.5)
    parser.add_argument("--callback-window", type=float, default=30.0)
    parser.add_argument("--verbose", action="store_true", help="show Prefect's error logs")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.jobs > 10_000 or not 0.0 <= args.fault_rate < 1.0:
        parser.error("--jobs must be 1..10000 and --fault-rate within [0, 1)")
    scratch = Path(tempfile.mkdtemp(prefix="genjobs-soak-"))
    if not args.verbose:  # refused jobs and retries log errors by design; the summary tells
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    prepare_environment(scratch)
    try:
        asyncio.run(soak(args, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
