"""Command line: run a job on the embedded default (or the configured backend), and dev servers.

``genjobs run --prompt "..."`` renders, stores, and reports one job. With no callback URL
configured it starts the local callback receiver on loopback first, so the whole round trip
(signature included) happens on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
import uuid
from pathlib import Path
from typing import Any

from genjobs.prefect_tuning import allow_slow_ephemeral_start

DEV_USER_ID = "00000000-0000-4000-8000-000000000001"
QUIET_ENVIRONMENT = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
}


def _job_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.job_file:
        job: dict[str, Any] = json.loads(Path(args.job_file).read_text())
        return job
    config: dict[str, Any] = {"num_images": args.num_images}
    for key, value in (
        ("seed", args.seed),
        ("resolution", args.resolution),
        ("num_inference_steps", args.steps),
    ):
        if value is not None:
            config[key] = value
    job = {
        "id": str(uuid.uuid4()),
        "user_id": args.user_id,
        "type": args.type,
        "prompt": args.prompt,
        "config": config,
        "metadata": {},
    }
    if args.negative_prompt:
        job["negative_prompt"] = args.negative_prompt
    return job


class _ProgressBar:
    """A tqdm bar per stage, fed by genjobs.progress."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self._bars.get(stage)
        if bar is None or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            bar = self._bars[stage] = self._tqdm(total=total, desc=stage, unit="step")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def _run(args: argparse.Namespace) -> int:
    from genjobs.settings import Settings

    settings = Settings()
    receiver = None
    if not settings.resolved_callback_url:
        from genjobs.devserver.receiver import CallbackReceiver

        secret = (
            settings.job_callback_secret.get_secret_value()
            if settings.job_callback_secret
            else secrets.token_hex(32)
        )
        settings.home.mkdir(parents=True, exist_ok=True)
        receiver = CallbackReceiver(secret, settings.home / "receiver.sqlite").start()
        os.environ["GENJOBS_CALLBACK_URL"] = receiver.url
        os.environ["GENJOBS_JOB_CALLBACK_SECRET"] = secret
        print(f"Local callback receiver listening at {receiver.url}")

    from flows.generate import generate_job
    from genjobs import progress
    from genjobs.runtime import get_runtime, set_runtime

    set_runtime(None)
    runtime = get_runtime()
    job = _job_from_args(args)
    bar = _ProgressBar()
    unsubscribe = progress.subscribe(bar)
    print(f"Running job {job.get('id')} ({job.get('type')}) on {runtime.storage_name} storage.")
    try:
        outcome = asyncio.run(generate_job(job))
    except Exception as exc:
        print(f"Job failed: {exc}", file=sys.stderr)
        return 1
    finally:
        unsubscribe()
        bar.close()
        if receiver is not None:
            receiver.stop()
    root = getattr(runtime.storage, "root", None)
    print(f"Job {outcome.job_id} {outcome.status}: {len(outcome.assets)} asset(s).")
    for path, thumb in zip(outcome.assets, outcome.thumbnails, strict=True):
        where = (
            Path(root) / runtime.settings.bucket
            if root is not None
            else Path(runtime.settings.bucket)
        )
        print(f"  {where / path}  (thumbnail: {where / thumb if thumb else 'none'})")
    state = "skipped by" if outcome.callback_skipped else "accepted by"
    print(f"Callback {state} {runtime.callback_url} with HTTP {outcome.callback_status_code}.")
    if receiver is not None:
        rows = receiver.assets(outcome.job_id)
        print(
            f"The local receiver recorded {len(rows)} asset row(s) in "
            f"{settings.home / 'receiver.sqlite'}."
        )
    return 0


def _receiver(args: argparse.Namespace) -> int:
    import time

    from genjobs.devserver.receiver import CallbackReceiver
    from genjobs.settings import Settings

    settings = Settings()
    if settings.job_callback_secret is None:
        print("Set JOB_CALLBACK_SECRET first: the receiver verifies signatures.", file=sys.stderr)
        return 2
    settings.home.mkdir(parents=True, exist_ok=True)
    receiver = CallbackReceiver(
        settings.job_callback_secret.get_secret_value(),
        settings.home / "receiver.sqlite",
        port=args.port,
    )
    with receiver:
        print(f"Callback receiver listening at {receiver.url}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


def _delegate(module_name: str) -> Any:
    """A handler that passes the remaining arguments to ``module_name.main``."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        module = importlib.import_module(module_name)
        return int(module.main(args.args) or 0)

    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genjobs", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's logs")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one generation job")
    run.add_argument("--prompt", default="a lighthouse on a cliff at dusk, oil painting")
    run.add_argument("--negative-prompt")
    run.add_argument("--type", default="sdxl_image_fast", help="job type (contract section 2)")
    run.add_argument("--num-images", type=int, default=3)
    run.add_argument("--seed", type=int)
    run.add_argument("--steps", type=int, help="num_inference_steps (10-50)")
    run.add_argument("--resolution", help="WxH, e.g. 1024x576")
    run.add_argument("--user-id", default=DEV_USER_ID)
    run.add_argument("--job-file", help="a job JSON file in the payload shape (overrides the rest)")
    run.set_defaults(handler=_run)

    worker = sub.add_parser(
        "gpu-worker", help="serve renders on one GPU with warm models (see docs/deployment.md)"
    )
    worker.add_argument("args", nargs=argparse.REMAINDER, help="--device cuda:N, --families ...")
    worker.set_defaults(handler=_delegate("genjobs.gpu_worker"))

    warm = sub.add_parser(
        "warm-runner",
        help="fork generation flow runs from one warm process per host (see docs/deployment.md)",
    )
    warm.add_argument("args", nargs=argparse.REMAINDER, help="--socket PATH, --preload MODULE")
    warm.set_defaults(handler=_delegate("genjobs.warm_runner"))

    standin = sub.add_parser("storage-standin", help="serve the local Supabase Storage stand-in")
    standin.add_argument("args", nargs=argparse.REMAINDER, help="--port, --jwt-secret, --bucket")
    standin.set_defaults(handler=_delegate("genjobs.devserver.storage_standin"))

    receiver = sub.add_parser("receiver", help="serve the local job-callback receiver")
    receiver.add_argument("--port", type=int, default=54321)
    receiver.set_defaults(handler=_receiver)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    allow_slow_ephemeral_start()
    if args.command == "run" and not args.verbose:
        for name, value in QUIET_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        logging.basicConfig(level=logging.WARNING)
    handler = args.handler
    return int(handler(args))


if __name__ == "__main__":
    sys.exit(main())
