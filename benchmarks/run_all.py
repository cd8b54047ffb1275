"""Every performance figure beside its baseline, both measured in this same run.

    python benchmarks/run_all.py [--quick] [--only pipeline,overhead,rss,warm,others]

Each figure prints one line ``name: new X, baseline Y, ratio Z (target ...)``:

* ``pipeline``: the post-render pipeline for 6 images of 1024x1024 (PNG + WEBP thumbnails,
  upload, metadata, signed callback) to the local Supabase Storage stand-in through
  ``SupabaseStorage`` and to the local receiver. New: ``encode_images`` at zlib level 1 in
  parallel threads, the files written to and read back from a scratch folder as the flow's tasks
  do, parallel uploads (original then thumbnail per asset, as the gathered upload tasks),
  ``completed_payload``, ``CallbackSender``. Baseline, the predecessor's way: PNG with
  ``optimize=True`` and a thumbnail one image at a time, then the twelve uploads one by one
  with the same client, then one callback. Target: new <= 0.10 x baseline.
* ``overhead``: the whole ``generate_job`` flow on the embedded default (local folder storage,
  local receiver, ephemeral Prefect API) with a renderer that costs nothing
  (benchmarks/fast_renderer.py) against the same task functions called plainly (``.fn``).
  Target: flow minus plain <= 0.15 s per job. The line also gives the time of an empty flow
  run (no tasks) timed alongside: the least any flow run costs on this machine and API.
* ``rss``: the worker's resident memory over 100 jobs with that renderer: after 100 jobs against
  after the first 10. Target: growth < 5 %.
* ``warm``: first job (pipeline load) against the second job, with the embedded tiny SDXL.
* ``others``: benchmarks/backfill_copy_rate.py (backfill copy rate) and
  benchmarks/deployed_path.py (GPU duty cycle, loads, deployed overhead), each run as its own
  process, the deployed path with a smaller backlog than its own default (run the script alone
  for that) and both smaller again under ``--quick``; their lines are passed on with the
  script's name in front, or "not available" when a script is missing or fails.

``--quick`` uses fewer repetitions and 30 jobs for ``rss``. Everything runs on loopback in
temporary folders; the Prefect runs go to a throwaway ``PREFECT_HOME`` unless ``PREFECT_API_URL``
or ``PREFECT_HOME`` is set. Figures on a shared or busy machine vary from run to run; the ratio
of two figures taken side by side is the meaningful number.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import functools
import gc
import io
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    REPO_ROOT,
    figure,
    job_payload,
    median,
    prepare_environment,
)

SECTIONS = ("pipeline", "overhead", "rss", "warm", "others")
JWT_SECRET = "benchmark-jwt-secret-0123456789abcdef0123456789"
OTHER_BENCHMARKS = {  # script -> its arguments here (run it alone for its own defaults)
    "backfill_copy_rate": {"default": [], "quick": ["--objects", "60"]},
    "deployed_path": {
        "default": ["--backlog", "6", "--load-jobs", "4", "--overhead-jobs", "3"],
        "quick": ["--backlog", "4", "--load-jobs", "2", "--overhead-jobs", "2"],
    },
}
OTHER_TIMEOUT_SECONDS = 300
ORIGINAL_ENVIRONMENT = dict(os.environ)  # the other scripts get it, not this run's changes


# --- (a) the post-render pipeline ----------------------------------------------------------------


def synthetic_frames(count: int, side: int) -> list[Any]:
    """Photo-like pixels: a smooth random field plus fine grain, about 1.5 MB as optimised PNG."""
    import numpy as np
    from PIL import Image

    frames = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        coarse = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC)).astype(np.int16)
        grain = rng.integers(-4, 5, (side, side, 3), dtype=np.int16)
        frames.append(np.clip(smooth + grain, 0, 255).astype(np.uint8))
    return frames


class Phases:
    """Seconds per phase of one run: encode, upload, callback (metadata included)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()
        self.started = self._last

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = now - self._last
        self._last = now

    @property
    def total(self) -> float:
        return self._last - self.started


class PostRenderBench:
    """Both ways of finishing a rendered batch, against the same stand-in and receiver."""

    def __init__(self, storage: Any, sender: Any, scratch: Path, frames: list[Any]):
        self.storage = storage
        self.sender = sender
        self.scratch = scratch
        self.frames = frames

    def _plan(self) -> Any:
        from genjobs.jobs.payload import parse_job
        from genjobs.jobs.plan import plan_job

        side = int(self.frames[0].shape[1])
        return plan_job(parse_job(job_payload(len(self.frames), f"{side}x{side}")))

    async def _report(self, plan: Any, uploaded: list[Any], phases: Phases) -> None:
        from genjobs.callback.payload import serialise
        from genjobs.metadata import completed_payload

        payload = completed_payload(plan, {"model": "benchmark"}, uploaded, 0.0, None)
        receipt = await self.sender.deliver(serialise(payload))
        phases.mark("callback")
        assert receipt.status_code == 200 and not receipt.skipped, receipt

    async def new_way(self) -> Phases:
        """Parallel level-1 PNG, files in scratch as the tasks keep them, parallel uploads."""
        from genjobs.assets import EncodedAsset, UploadedAsset
        from genjobs.encode.images import encode_images
        from genjobs.storage.base import asset_path, thumbnail_path

        plan = self._plan()
        folder = self.scratch / plan.job_id
        folder.mkdir(parents=True)
        phases = Phases()
        encoded = []
        for index, image in enumerate(encode_images(self.frames, compress_level=1)):
            png, thumb = folder / f"{index}.png", folder / f"{index}.thumb.webp"
            png.write_bytes(image.png)
            thumb.write_bytes(image.thumbnail)
            encoded.append(
                EncodedAsset(
                    index=index,
                    kind="image",
                    file=str(png),
                    content_type="image/png",
                    extension="png",
                    size=len(image.png),
                    width=image.width,
                    height=image.height,
                    thumbnail_file=str(thumb),
                )
            )
        phases.mark("encode")

        def upload(asset: EncodedAsset) -> UploadedAsset:
            path = asset_path(plan.user_id, plan.job_id, asset.index, "png")
            thumb = thumbnail_path(plan.user_id, plan.job_id, asset.index)
            self.storage.put("workspace-temp", path, Path(asset.file).read_bytes(), "image/png")
            assert asset.thumbnail_file is not None
            data = Path(asset.thumbnail_file).read_bytes()
            self.storage.put("workspace-temp", thumb, data, "image/webp")
            return UploadedAsset(encoded=asset, path=path, thumbnail_path=thumb)

        with ThreadPoolExecutor(max_workers=len(encoded)) as pool:
            uploaded = list(pool.map(upload, encoded))
        phases.mark("upload")
        await self._report(plan, uploaded, phases)
        shutil.rmtree(folder)
        return phases

    async def predecessor_way(self) -> Phases:
        """``optimize=True`` PNG and a thumbnail one image at a time, then uploads one by one."""
        from PIL import Image

        from genjobs.assets import EncodedAsset, UploadedAsset
        from genjobs.encode.images import encode_thumbnail
        from genjobs.storage.base import asset_path, thumbnail_path

        plan = self._plan()
        phases = Phases()
        outputs = []
        for frame in self.frames:
            image = Image.fromarray(frame, mode="RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
            thumb, _, _ = encode_thumbnail(image)
            outputs.append((buffer.getvalue(), thumb, image.size))
        phases.mark("encode")
        uploaded = []
        for index, (png, thumb, (width, height)) in enumerate(outputs):
            path = asset_path(plan.user_id, plan.job_id, index, "png")
            thumb_path = thumbnail_path(plan.user_id, plan.job_id, index)
            self.storage.put("workspace-temp", path, png, "image/png")
            self.storage.put("workspace-temp", thumb_path, thumb, "image/webp")
            asset = EncodedAsset(
                index=index,
                kind="image",
                file=path,
                content_type="image/png",
                extension="png",
                size=len(png),
                width=width,
                height=height,
                thumbnail_file=thumb_path,
            )
            uploaded.append(UploadedAsset(encoded=asset, path=path, thumbnail_path=thumb_path))
        phases.mark("upload")
        await self._report(plan, uploaded, phases)
        return phases


def phase_note(runs: list[Phases]) -> str:
    names = runs[0].seconds
    return "/".join(f"{median([r.seconds[n] for r in runs]):.2f}" for n in names)


async def pipeline_section(
    scratch: Path, repeats: int, server: tuple[str, str] | None = None
) -> list[str]:
    """The post-render pipeline; ``server`` (SUPABASE_URL, service key) measures a real storage
    server instead of the stand-in in this process."""
    import contextlib

    import httpx
    from pydantic import SecretStr

    from devstack.storage_standin import StorageStandIn
    from genjobs.callback.sender import CallbackSender
    from genjobs.devserver.receiver import CallbackReceiver
    from genjobs.storage.supabase import SupabaseStorage

    frames = synthetic_frames(6, 1024)
    secret = secrets.token_hex(16)
    new: list[Phases] = []
    old: list[Phases] = []
    with contextlib.ExitStack() as stack:
        if server is None:
            standin = stack.enter_context(StorageStandIn(JWT_SECRET))
            standin.create_contract_buckets(["workspace-temp"])
            server = (standin.url, standin.token())
            where = "the stand-in"
        else:
            where = f"the storage server at {server[0]}"
        receiver = stack.enter_context(CallbackReceiver(secret))
        storage = stack.enter_context(
            SupabaseStorage.from_supabase(server[0], server[1], timeout=120.0)
        )
        async with httpx.AsyncClient(timeout=30.0) as client:
            sender = CallbackSender(receiver.url, SecretStr(secret), None, client)
            bench = PostRenderBench(storage, sender, scratch / "pipeline", frames)
            for _ in range(repeats):  # interleaved, so machine noise hits both alike
                old.append(await bench.predecessor_way())
                new.append(await bench.new_way())
    return [
        figure(
            "post_render_pipeline_6x1024",
            median([r.total for r in new]),
            median([r.total for r in old]),
            "s",
            "<= 0.10",
            f"median of {repeats}; encode/upload/callback s: new {phase_note(new)}, "
            f"baseline {phase_note(old)}; 12 objects through SupabaseStorage to {where}",
        )
    ]


# --- (b) orchestration overhead, (d) memory over many jobs, (c) warm against cold ---------------


def embedded_settings(home: Path, receiver: Any, secret: str, **overrides: Any) -> Any:
    from pydantic import SecretStr

    from genjobs.settings import Settings

    values: dict[str, Any] = {
        "home": home,
        "model_cache": home.parent / "models",
        "callback_url": receiver.url,
        "job_callback_secret": SecretStr(secret),
    }
    values.update(overrides)
    return Settings(**values)


async def run_flow(job: dict[str, Any]) -> float:
    from flows.generate import generate_job

    started = time.perf_counter()
    outcome = await generate_job(job)
    seconds = time.perf_counter() - started
    assert outcome.status == "completed" and not outcome.callback_skipped, outcome
    return seconds


async def run_plain(job: dict[str, Any]) -> float:
    """The flow's steps as plain function calls (``.fn``): no flow or task runs, no retries,
    no artifacts (Prefect's bookkeeping, part of what the overhead measures)."""
    import uuid

    from prefect.logging import disable_run_logger

    from flows.entry_settings import entry_settings
    from genjobs.assets import scratch_dir
    from genjobs.callback.payload import serialise
    from genjobs.connections import connections_from_settings
    from genjobs.storage.provenance import UploadJournal
    from tasks.callback import send_callback
    from tasks.encode import encode_assets
    from tasks.metadata import assemble_metadata
    from tasks.render import render_assets
    from tasks.upload import store_asset
    from tasks.validate import validate_job

    connections = connections_from_settings(entry_settings())  # as the flow's entry builds
    settings, storage = connections.settings, connections.storage
    journal = UploadJournal.for_run(settings.home, uuid.uuid4())
    started = time.perf_counter()
    with disable_run_logger():
        plan = await validate_job.fn(job, settings.reference_allow_hosts)
        batch = await render_assets.fn(plan, connections)
        encoded = await encode_assets.fn(batch, settings.png_compress_level)
        uploaded = await asyncio.gather(
            *(
                store_asset(asset, plan.user_id, plan.job_id, journal, storage, settings.bucket)
                for asset in encoded
            )
        )
        shutil.rmtree(scratch_dir(settings.work_dir, plan.job_id), ignore_errors=True)
        payload = await assemble_metadata.fn(plan, batch.details, list(uploaded), 0.0)
        receipt = await send_callback.fn(
            payload.job_id,
            payload.status,
            serialise(payload),
            connections.callback,
            settings.callback_timeout_seconds,
        )
    journal.discard()
    seconds = time.perf_counter() - started
    assert receipt.status_code == 200 and not receipt.skipped, receipt
    return seconds


@functools.cache
def empty_flow() -> Any:
    """A flow with no tasks: what any flow run costs on this machine and API, at the least."""
    from prefect import flow

    @flow(name="empty-flow", persist_result=False)
    async def empty() -> None:
        return None

    return empty


async def run_empty_flow() -> float:
    started = time.perf_counter()
    await empty_flow()()
    return time.perf_counter() - started


async def overhead_section(runs: int) -> list[str]:
    lines = []
    for images in (1, 6):
        await run_flow(job_payload(images))  # warm: API, imports, first task runs
        await run_plain(job_payload(images))
        await run_empty_flow()
        flow_times, plain_times, empty_times = [], [], []
        for _ in range(runs):
            flow_times.append(await run_flow(job_payload(images)))
            plain_times.append(await run_plain(job_payload(images)))
            empty_times.append(await run_empty_flow())
        flow, plain, empty = median(flow_times), median(plain_times), median(empty_times)
        lines.append(
            figure(
                f"orchestration_overhead_{images}_image{'s' if images > 1 else ''}",
                flow,
                plain,
                "s",
                "flow - plain <= 0.150 s",
                f"overhead {flow - plain:.3f} s per job, median of {runs}; 256x256, "
                f"6 task runs; new = generate_job flow, baseline = plain .fn calls; "
                f"an empty flow run (no tasks), timed alongside, takes {empty:.3f} s",
            )
        )
    return lines


async def rss_section(jobs: int) -> list[str]:
    import psutil

    process = psutil.Process()
    warmup = max(1, jobs // 10)
    started = time.perf_counter()
    for _ in range(warmup):
        await run_flow(job_payload(1))
    gc.collect()
    before = process.memory_info().rss
    for _ in range(jobs - warmup):
        await run_flow(job_payload(1))
    gc.collect()
    after = process.memory_info().rss
    rate = jobs / (time.perf_counter() - started)
    return [
        figure(
            f"worker_rss_{jobs}_jobs",
            after / 2**20,
            before / 2**20,
            "MiB",
            "< 1.05 (growth < 5 %)",
            f"growth {100 * (after - before) / before:+.2f} % from job {warmup} to job {jobs}; "
            f"{rate:.1f} jobs/s with the fast renderer",
        )
    ]


async def warm_section(warm_jobs: int) -> list[str]:
    from flows.entry_settings import entry_settings
    from genjobs.render.cache import PIPELINES
    from genjobs.render.sdxl import TINY_FOLDER_NAME
    from genjobs.render.tiny_sdxl import ensure_tiny_sdxl

    ensure_tiny_sdxl(entry_settings().model_dir / TINY_FOLDER_NAME)  # built, not timed
    loads = PIPELINES.load_count("sdxl")
    cold = await run_flow(job_payload(1))
    warm = [await run_flow(job_payload(1)) for _ in range(warm_jobs)]
    assert PIPELINES.load_count("sdxl") == loads + 1, "the pipeline was loaded more than once"
    return [
        figure(
            "warm_vs_cold_tiny_sdxl_job",
            median(warm),
            cold,
            "s",
            "later jobs pay no load",
            f"new = median of the next {warm_jobs} jobs in the same worker, baseline = the "
            "first job (loads the pipeline); 1 image 256x256, 10 steps, CPU; 1 load in all",
        )
    ]


async def flow_sections(scratch: Path, chosen: set[str], quick: bool) -> list[str]:
    from benchmarks.fast_renderer import RENDERER_CLASS
    from flows.entry_settings import using_settings
    from genjobs.devserver.receiver import CallbackReceiver
    from genjobs.prefect_tuning import held_prefect_clients

    lines: list[str] = []
    secret = secrets.token_hex(16)
    with CallbackReceiver(secret) as receiver:
        fast = embedded_settings(scratch / "fast", receiver, secret, renderer_class=RENDERER_CLASS)
        with using_settings(fast):  # the settings the flows read at their entry
            async with held_prefect_clients():  # as a process running many jobs should
                if "overhead" in chosen:
                    lines += report(await overhead_section(3 if quick else 7))
                if "rss" in chosen:
                    lines += report(await rss_section(30 if quick else 100))
                if "warm" in chosen:
                    tiny = embedded_settings(scratch / "tiny", receiver, secret)
                    with using_settings(tiny):
                        lines += report(await warm_section(1 if quick else 3))
    return lines


# --- (e) the benchmarks of the backfill and of the deployed path ---------------------------------


def other_sections(quick: bool) -> list[str]:
    """Run each in its own process (own event loop, argv and environment); pass its lines on."""
    lines = []
    for name, sizes in OTHER_BENCHMARKS.items():
        arguments = sizes["quick" if quick else "default"]
        script = REPO_ROOT / "benchmarks" / f"{name}.py"
        if not script.is_file():
            lines += report([f"{name}: not available"])
            continue
        command = [sys.executable, str(script), *arguments]
        try:
            done = subprocess.run(
                command,
                cwd=REPO_ROOT,
                env=ORIGINAL_ENVIRONMENT,
                capture_output=True,
                text=True,
                timeout=OTHER_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            lines += report([f"{name}: not available (no result within {OTHER_TIMEOUT_SECONDS} s)"])
            continue
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            lines += report([f"{name}: not available (exit {done.returncode}: {' | '.join(tail)})"])
            continue
        lines += report([f"{name}: {line}" for line in done.stdout.splitlines() if line.strip()])
    return lines


# --- command line --------------------------------------------------------------------------------


def report(lines: list[str]) -> list[str]:
    for line in lines:
        print(line, flush=True)
    return lines


async def run(
    chosen: set[str], quick: bool, scratch: Path, server: tuple[str, str] | None = None
) -> list[str]:
    lines: list[str] = []
    if "pipeline" in chosen:
        lines += report(await pipeline_section(scratch, 1 if quick else 3, server))
    if chosen & {"overhead", "rss", "warm"}:
        lines += await flow_sections(scratch, chosen, quick)
    if "others" in chosen:
        lines += other_sections(quick)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and jobs")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}"
    )
    parser.add_argument(
        "--storage-url",
        default=os.environ.get("GENJOBS_TEST_SUPABASE_URL"),
        help="SUPABASE_URL of a real storage server for the pipeline section (default: stand-in)",
    )
    parser.add_argument("--service-key", default=os.environ.get("GENJOBS_TEST_STORAGE_SERVICE_KEY"))
    args = parser.parse_args(argv)
    server = (args.storage_url, args.service_key) if args.storage_url and args.service_key else None
    chosen = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = chosen - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    scratch = Path(tempfile.mkdtemp(prefix="genjobs-bench-"))
    # Registered before Prefect registers the ephemeral API's shutdown, so it runs after it: the
    # API's last writes of batched events still find their database.
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    prepare_environment(scratch)
    started = time.perf_counter()
    asyncio.run(run(chosen, args.quick, scratch, server))
    print(f"total: {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
