"""What the benchmark commands share: a quiet, throwaway environment, job payloads, settings.

Import :func:`prepare_environment` before anything imports Prefect: it points ``PREFECT_HOME``
at a temporary folder (unless ``PREFECT_API_URL`` or ``PREFECT_HOME`` is set), so the ephemeral
API keeps the benchmark's runs out of the user's own database.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
USER_ID = "00000000-0000-4000-8000-0000000000be"
QUIET = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "TQDM_DISABLE": "1",
}


def prepare_environment(scratch: Path) -> None:
    """Quiet logs, a throwaway Prefect home, and the repository on ``sys.path``."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    for name, value in QUIET.items():
        os.environ.setdefault(name, value)
    if "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ:
        os.environ["PREFECT_HOME"] = str(scratch / "prefect")
    if "PREFECT_API_URL" not in os.environ:  # the ephemeral API on SQLite
        from genjobs.prefect_tuning import allow_slow_ephemeral_start, batch_event_writes

        allow_slow_ephemeral_start()
        batch_event_writes()


def job_payload(
    num_images: int = 1, resolution: str = "256x256", steps: int = 10, seed: int | None = None
) -> dict[str, Any]:
    """An SDXL job in the payload shape queue-job sends (contract section 2)."""
    config: dict[str, Any] = {
        "num_images": num_images,
        "num_inference_steps": steps,
        "resolution": resolution,
    }
    if seed is not None:
        config["seed"] = seed
    return {
        "id": str(uuid.uuid4()),
        "user_id": USER_ID,
        "type": "sdxl_image_fast",
        "prompt": "a lighthouse on a cliff at dusk",
        "negative_prompt": "blurry",
        "config": config,
        "metadata": {"aspect_ratio": "1:1"},
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def figure(name: str, new: float, baseline: float, unit: str, target: str, note: str = "") -> str:
    """One result line: ``name: new X, baseline Y, ratio Z (target ...)``."""
    ratio = new / baseline if baseline else float("nan")
    line = (
        f"{name}: new {new:.3f} {unit}, baseline {baseline:.3f} {unit}, "
        f"ratio {ratio:.3f} (target {target})"
    )
    return f"{line}; {note}" if note else line


@contextlib.contextmanager
def standing_proxy(upstream: str, delay_ms: float = 0.0, link_mbit: float = 0.0) -> Iterator[str]:
    """A storage proxy process of its own (devstack/storage_proxy.py) in front of the storage
    server ``upstream``: every request passed on ``delay_ms`` late, bodies carried over a link
    of ``link_mbit`` megabits a second each way (0: no limit), as a Supabase project a network
    away is reached; yields its URL (what a client takes as SUPABASE_URL)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.storage_proxy", "--upstream", upstream,
         "--delay-ms", str(delay_ms), "--link-mbit", str(link_mbit)],
        cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "listening on " in line:
                url = line.rsplit("listening on ", 1)[1].split()[0].rstrip(",")
                break
        else:
            raise RuntimeError(f"the storage proxy ended: exit code {process.wait()}")
        threading.Thread(target=process.stderr.read, daemon=True).start()  # keep it draining
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def add_link_arguments(parser: argparse.ArgumentParser) -> None:
    """``--latency-ms`` and ``--link-mbit`` (see :func:`through_link`), and ``--upstream-url``."""
    parser.add_argument(
        "--upstream-url",
        default=os.environ.get("GENJOBS_TEST_STORAGE_UPSTREAM_URL"),
        help="the storage server itself, behind the proxy of --latency-ms and --link-mbit",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    parser.add_argument(
        "--link-mbit", type=float, default=0.0, help="link to the server, Mbit/s each way (0: none)"
    )


def through_link(
    parser: argparse.ArgumentParser, args: argparse.Namespace, stack: contextlib.ExitStack
) -> tuple[str | None, str]:
    """The URL of the storage server over the link that ``args`` name (a :func:`standing_proxy`
    kept open by ``stack``; None when they name none), and a few words that say so."""
    if not (args.latency_ms or args.link_mbit):
        return None, ""
    if not (args.upstream_url and args.service_key):
        parser.error(
            "--latency-ms and --link-mbit need a real server: run "
            '`eval "$(bash scripts/storage_server.sh start)"` first'
        )
    url = stack.enter_context(standing_proxy(args.upstream_url, args.latency_ms, args.link_mbit))
    words = f", {args.latency_ms:g} ms added to each request"
    if args.link_mbit:
        words += f", a link of {args.link_mbit:g} Mbit/s each way"
    return url, words
