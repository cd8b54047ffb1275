"""The CLI's other subcommands, with the arguments the runbook, systemd and Kubernetes give."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from entrypoints.cli import build_parser, main
from genjobs.callback.outbox import Outbox
from genjobs.callback.payload import failure_payload, serialise
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.errors import InvalidPayload

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "device", "families", "warm"),
    [
        (["gpu-worker", "--device", "cuda:0"], "cuda:0", "sdxl,wan", True),  # runbook, Kubernetes
        (["gpu-worker", "--device", "cuda:3"], "cuda:3", "sdxl,wan", True),  # systemd cuda:%i
        (["gpu-worker", "--device", "cpu", "--families", "wan"], "cpu", "wan", True),
        (["gpu-worker", "--families", "sdxl", "--no-warm"], "auto", "sdxl", False),
    ],
)
def test_gpu_worker_takes_the_documented_arguments(
    argv: list[str], device: str, families: str, warm: bool
) -> None:
    args = build_parser().parse_args(argv)
    assert (args.device, args.families, not args.no_warm) == (device, families, warm)


def test_gpu_worker_starts_on_the_cpu_and_subscribes(tmp_path: Path, prefect_api: None) -> None:
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "GENJOBS_HOME": str(tmp_path),
    }
    for name in ("GENJOBS_SUPABASE_BLOCK", "GENJOBS_MODELS_BLOCK", "SUPABASE_URL"):
        env.pop(name, None)
    command = [sys.executable, "-m", "entrypoints.cli", "gpu-worker", "--device", "cpu"]
    worker = subprocess.Popen(
        [*command, "--families", "sdxl", "--no-warm"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        assert worker.stderr is not None
        give_up = time.monotonic() + 300  # a guard against a hang, not a measurement
        while time.monotonic() < give_up:
            line = worker.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "serves sdxl renders, one at a time." in line:
                break
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
    assert any("cpu serves sdxl renders, one at a time." in line for line in seen), seen
    assert not any("unrecognized arguments" in line for line in seen)


def waiting_failure(
    home: Path, backend: CallbackReceiver, secret: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, bytes]:
    """A failed callback waiting in the outbox for ``backend``, signed with ``secret``."""
    job_id = str(uuid.uuid4())
    body = serialise(failure_payload(job_id, InvalidPayload("Field 'prompt' is missing")))
    monkeypatch.setenv("GENJOBS_CALLBACK_URL", backend.url)
    monkeypatch.setenv("GENJOBS_JOB_CALLBACK_SECRET", secret)
    Outbox(home / "outbox").put(job_id, "failed", body)
    return job_id, body


@pytest.mark.usefixtures("prefect_api")
def test_redeliver_sends_what_waits_in_the_outbox_and_empties_it(
    cli_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with CallbackReceiver("secret") as backend:
        job_id, body = waiting_failure(cli_home, backend, "secret", monkeypatch)
        code = main(["redeliver"])
        received = [(request.answered, request.body) for request in backend.requests]
        row = backend.job(job_id)
    out = capsys.readouterr().out
    assert code == 0
    assert received == [(200, body)]
    assert row is not None and row["status"] == "failed"
    assert Outbox(cli_home / "outbox").entries() == []
    assert f"Outbox {cli_home / 'outbox'}: 1 delivered, 0 still waiting, 0 refused" in out


@pytest.mark.usefixtures("prefect_api")
def test_redeliver_keeps_a_refused_callback_and_says_so(
    cli_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with CallbackReceiver("secret") as backend:
        job_id, _ = waiting_failure(cli_home, backend, "not the secret", monkeypatch)
        code = main(["redeliver"])
    assert code == 1
    assert "0 delivered, 0 still waiting, 1 refused" in capsys.readouterr().out
    assert [entry.job_id for entry in Outbox(cli_home / "outbox").entries()] == [job_id]


def _printed_summary(out: str) -> dict[str, object]:
    summary: dict[str, object] = json.loads(out[out.index("{") :])
    return summary


@pytest.mark.usefixtures("prefect_api")
def test_backfill_dry_run_prints_the_flows_summary_and_writes_nothing(
    cli_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = cli_home / "storage" / "sdxl_image_fast" / str(uuid.uuid4())
    legacy.mkdir(parents=True)
    (legacy / "old.png").write_bytes(b"not rendered here")
    code = main(["backfill", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("Backfill plan (dry run, nothing was written):\n")
    summary = _printed_summary(out)
    assert summary["dry_run"] is True and summary["target_bucket"] == "workspace-temp"
    assert summary["listed"] == 1
    assert not (cli_home / "storage" / "workspace-temp").exists()
    assert (legacy / "old.png").read_bytes() == b"not rendered here"


@pytest.mark.usefixtures("prefect_api")
def test_cleanup_dry_run_prints_the_flows_summary_and_removes_nothing(
    cli_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = cli_home / "storage" / "workspace-temp" / str(uuid.uuid4()) / str(uuid.uuid4())
    stored.mkdir(parents=True)
    (stored / "0.png").write_bytes(b"png")
    old = time.time() - 30 * 24 * 3600
    os.utime(stored / "0.png", (old, old))
    code = main(["cleanup", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("Workspace cleanup (dry run, nothing was removed):\n")
    summary = _printed_summary(out)
    assert summary["dry_run"] is True and summary["bucket"] == "workspace-temp"
    # Without the project database nothing can be decided: the old object is listed as a
    # candidate, and nothing counts as removed.
    assert (summary["listed"], summary["removed"], summary["decided"]) == (1, 0, False)
    assert [c["path"] for c in summary["candidates"]] == [
        str(stored.relative_to(cli_home / "storage" / "workspace-temp") / "0.png")
    ]
    assert "GENJOBS_DATABASE_DSN" in summary["note"]
    assert (stored / "0.png").read_bytes() == b"png"


@pytest.mark.parametrize("command", ["backfill", "cleanup"])
def test_maintenance_without_dry_run_writes_nothing_and_says_how(
    command: str, cli_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"genjobs {command}: genjobs {command} runs only as a dry run")
