"""Command line: run a job on the embedded default (or the configured backend), the operator's
maintenance runs, the GPU worker and the dev servers.

``genjobs run --prompt "..."`` renders, stores, and reports one job. With no callback URL
configured it starts the local callback receiver on loopback first, so the whole round trip
(signature included) happens on this machine. The job payload: docs/payload.md.

The command is an edge: it reads the settings, changes them from its options (``model_copy``)
and hands them to the flows it runs in this process (flows/entry_settings.py); nothing is
passed through ``os.environ``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flows.entry_settings import using_settings
from genjobs.jobs.types import supported_job_types
from genjobs.prefect_tuning import allow_slow_ephemeral_start

QUIET_COMMANDS = frozenset({"run", "redeliver", "backfill", "cleanup"})
DEV_USER_ID = "00000000-0000-4000-8000-000000000001"
QUIET_ENVIRONMENT = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
}


class UsageError(Exception):
    """A command that cannot start as given; the message says why, in one sentence."""


def read_job_file(path: str) -> dict[str, Any]:
    """The job object in ``path``, or :class:`UsageError` saying what is wrong with the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"Cannot read the job file {path}: {exc}") from None
    try:
        job = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"The job file {path} is not JSON: {exc}") from None
    if not isinstance(job, dict):
        raise UsageError(
            f"The job file {path} holds a JSON {type(job).__name__}, not an object "
            "(docs/payload.md)"
        )
    return job


DEFAULT_NUM_IMAGES = 3
"""Images a ``genjobs run`` image job renders when ``--num-images`` is not given."""


def _renders_images(job_type: str) -> bool:
    """Whether ``job_type`` renders images (an unknown type is refused later, by the flow)."""
    from genjobs.jobs.types import job_type_spec, normalise_job_type

    try:
        return job_type_spec(normalise_job_type(job_type)).output == "image"
    except Exception:
        return True


def _job_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.job_file:
        return read_job_file(args.job_file)
    config: dict[str, Any] = {}
    num_images = args.num_images
    if num_images is None and _renders_images(args.type):
        num_images = DEFAULT_NUM_IMAGES
    for key, value in (
        ("num_images", num_images),
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


def _quiet_prefect_console() -> None:
    """Keep Prefect's records (run logs, tracebacks) off the console; the API still gets them."""

    def not_prefect(record: logging.LogRecord) -> bool:
        return not record.name.startswith("prefect")

    loggers = [logging.getLogger()] + [
        logger
        for name, logger in logging.Logger.manager.loggerDict.items()
        if name.startswith("prefect") and isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if type(handler).__name__.startswith(("StreamHandler", "PrefectConsole")):
                handler.addFilter(not_prefect)


def _run(args: argparse.Namespace) -> int:
    from pydantic import SecretStr

    from blocks.connections import load_connections
    from genjobs.jobs.payload import raw_job_id
    from genjobs.run_report import failure_line
    from genjobs.settings import Settings

    job = _job_from_args(args)
    settings = Settings()
    receiver = None
    if not settings.resolved_callback_url:
        from genjobs.devserver.receiver import CallbackReceiver

        secret = (
            settings.job_callback_secret.get_secret_value()
            if settings.job_callback_secret
            else secrets.token_hex(32)
        )
        settings.ensure_home()
        receiver = CallbackReceiver(secret, settings.home / "receiver.sqlite").start()
        # The local receiver is handed to this run alone, in its settings.
        settings = settings.model_copy(
            update={"callback_url": receiver.url, "job_callback_secret": SecretStr(secret)}
        )
        print(f"Local callback receiver listening at {receiver.url}")

    from flows.generate import generate_job
    from genjobs import progress

    if not args.verbose:
        _quiet_prefect_console()
    connections = load_connections(settings, renders=False)  # what this command reports
    bar = _ProgressBar()
    unsubscribe = progress.subscribe(bar)
    print(f"Running job {job.get('id')} ({job.get('type')}) on {connections.storage_name} storage.")
    try:
        with using_settings(settings):
            outcome = asyncio.run(generate_job(job))
    except Exception as exc:
        bar.close()
        if args.verbose:
            traceback.print_exception(exc)
        line = failure_line(
            exc,
            job_id=raw_job_id(job),
            url=connections.callback.url,
            outbox=connections.settings.outbox_dir,
            receiver=receiver,
        )
        print(line, file=sys.stderr)
        return 1
    finally:
        unsubscribe()
        bar.close()
        if receiver is not None:
            receiver.stop()
    print(f"Job {outcome.job_id} {outcome.status}: {len(outcome.assets)} asset(s).")

    def where(path: str) -> Path:
        bucket = connections.settings.bucket
        return connections.storage.local_path(bucket, path) or Path(bucket) / path

    for path, thumb in zip(outcome.assets, outcome.thumbnails, strict=True):
        print(f"  {where(path)}  (thumbnail: {where(thumb) if thumb else 'none'})")
    state = "skipped by" if outcome.callback_skipped else "accepted by"
    print(f"Callback {state} {connections.callback.url} with HTTP {outcome.callback_status_code}.")
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
    settings.ensure_home()
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


def _gpu_worker(args: argparse.Namespace) -> int:
    from entrypoints.gpu_worker import serve_from_arguments

    return serve_from_arguments(args)


def _run_flow(args: argparse.Namespace, flow_call: Any) -> Any:
    """Run one maintenance flow in this process and return what it returns."""
    if not args.verbose:
        _quiet_prefect_console()
    return asyncio.run(flow_call())


def _redeliver(args: argparse.Namespace) -> int:
    from flows.outbox import redeliver_callbacks
    from genjobs.settings import Settings

    settings = Settings()
    with using_settings(settings):
        counts = _run_flow(args, redeliver_callbacks)
    outbox = settings.outbox_dir
    print(
        f"Outbox {outbox}: {counts['delivered']} delivered, {counts['waiting']} still waiting, "
        f"{counts['rejected']} refused (they stay for an operator)."
    )
    return 0 if counts["waiting"] == 0 and counts["rejected"] == 0 else 1


def _print_summary(title: str, summary: Any) -> None:
    print(title)
    print(summary.model_dump_json(indent=2))


def _dry_run_only(args: argparse.Namespace, flow_name: str) -> None:
    if not args.dry_run:
        raise UsageError(
            f"genjobs {args.command} runs only as a dry run (--dry-run): it writes nothing. Run "
            f"the {flow_name} deployment to change storage (docs/runbook.md)."
        )


def _backfill(args: argparse.Namespace) -> int:
    from flows.backfill import backfill_legacy_buckets

    _dry_run_only(args, "backfill-legacy-buckets/backfill-nightly")
    summary = _run_flow(args, lambda: backfill_legacy_buckets(dry_run=True))
    _print_summary("Backfill plan (dry run, nothing was written):", summary)
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    from flows.cleanup import cleanup_workspace

    _dry_run_only(args, "cleanup-workspace")
    summary = _run_flow(args, lambda: cleanup_workspace(dry_run=True))
    _print_summary("Workspace cleanup (dry run, nothing was removed):", summary)
    return 0


def _warm_runner(args: argparse.Namespace) -> int:
    from genjobs.settings import Settings
    from genjobs.warm_runner import default_socket_path, serve_from_arguments

    if args.socket is None:
        args.socket = default_socket_path(Settings().home)
    return serve_from_arguments(args)


def build_parser() -> argparse.ArgumentParser:
    from entrypoints.gpu_worker import add_worker_arguments
    from genjobs.warm_runner import add_runner_arguments

    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,  # so "genjobs -v run" and "genjobs run -v" both count
        help="show Prefect's logs and the traceback of a failure",
    )
    parser = argparse.ArgumentParser(prog="genjobs", description=__doc__, parents=[verbose])
    parser.set_defaults(verbose=False)
    sub = parser.add_subparsers(dest="command", required=True)

    types = ", ".join(supported_job_types())
    run = sub.add_parser(
        "run",
        parents=[verbose],
        help="run one generation job",
        description="Run one job: render, store, call back (payload: docs/payload.md).",
    )
    run.add_argument(
        "--prompt",
        default="a lighthouse on a cliff at dusk, oil painting",
        help="the prompt (every job but an exact copy needs one)",
    )
    run.add_argument("--negative-prompt", help="what the image should not show")
    run.add_argument(
        "--type",
        default="sdxl_image_fast",
        choices=supported_job_types(),
        metavar="TYPE",
        help=f"job type, one of {types} (default sdxl_image_fast)",
    )
    run.add_argument(
        "--num-images",
        type=int,
        help="images to render (default 3); the batch is 1, 3 or 6 (2 -> 3, 4 or more -> 6); "
        "a video job renders one video",
    )
    run.add_argument("--seed", type=int, help="base seed, 0-2147483647; image i gets seed + i")
    run.add_argument("--steps", type=int, help="num_inference_steps, 10-50 (default by type)")
    run.add_argument(
        "--resolution",
        help="WxH, sides multiples of 8 within 256-2048, e.g. 1024x576 (SDXL; default 1024x1024)",
    )
    run.add_argument("--user-id", default=DEV_USER_ID, help="the job owner's UUID")
    run.add_argument(
        "--job-file",
        help="a job JSON file in the payload shape, e.g. docs/examples/text-to-image.json "
        "(overrides the other options)",
    )
    run.set_defaults(handler=_run)

    worker = sub.add_parser(
        "gpu-worker",
        help="serve renders on one GPU with warm models (see docs/deployment.md)",
        description="Serve the render tasks of the generation flows on one device.",
    )
    add_worker_arguments(worker)
    worker.set_defaults(handler=_gpu_worker)

    redeliver = sub.add_parser(
        "redeliver",
        parents=[verbose],
        help="send the callbacks waiting in the outbox (GENJOBS_HOME/outbox) once more",
    )
    redeliver.set_defaults(handler=_redeliver)

    for name, handler, what in (
        ("backfill", _backfill, "plan the copy of the legacy buckets onto the contract layout"),
        ("cleanup", _cleanup, "list what the workspace cleanup would remove"),
    ):
        maintenance = sub.add_parser(name, parents=[verbose], help=f"{what} (dry run)")
        maintenance.add_argument(
            "--dry-run", action="store_true", help="required: report only, write nothing"
        )
        maintenance.set_defaults(handler=handler)

    warm = sub.add_parser(
        "warm-runner",
        help="fork generation flow runs from one warm process per host (see docs/deployment.md)",
        description="Import Prefect and the flows once, then fork one process per flow run.",
    )
    add_runner_arguments(warm)
    warm.set_defaults(handler=_warm_runner)

    receiver = sub.add_parser("receiver", help="serve the local job-callback receiver")
    receiver.add_argument("--port", type=int, default=54321, help="default 54321")
    receiver.set_defaults(handler=_receiver)
    return parser


def _setting_problem(error: ValidationError) -> str:
    """One line naming the environment variable of the first invalid setting."""
    first = error.errors(include_url=False)[0]
    name = str(first["loc"][0]) if first["loc"] else ""
    variable = name if name.isupper() else f"GENJOBS_{name.upper()}"
    return f"The setting {variable} is invalid: {first['msg']}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    allow_slow_ephemeral_start()
    if args.command in QUIET_COMMANDS and not args.verbose:
        for name, value in QUIET_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    elif args.command in QUIET_COMMANDS:
        logging.basicConfig(level=logging.INFO)
    handler = args.handler
    try:
        return int(handler(args))
    except UsageError as exc:
        print(f"genjobs {args.command}: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        if exc.title != "Settings":
            raise
        print(f"genjobs {args.command}: {_setting_problem(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
