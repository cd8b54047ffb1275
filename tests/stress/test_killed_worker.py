"""A worker killed with SIGKILL at the worst moments, then the same job run again.

Three flow runs start in child processes (the embedded default against the same Prefect API,
storage stand-in and callback receiver) and are killed: after the render with nothing stored
yet, in the middle of the uploads, and while the callback is being retried. The moments are made
certain with the stand-in's hang faults and the receiver's downtime, not with sleeps. Then each
job runs again in this process, as a resubmission would. The job the kill left without objects
ends with exactly its contract objects, the same seeds and one accepted callback. A job whose
folder the killed run left objects in is refused before its render (``JOB_ASSETS_EXIST``): a
SIGKILLed run's flow run stays Running, so nothing can tell it from a run still in flight. Its
objects stay as they were, and the operator looks (docs/runbook.md). (Pixels are not compared: a
worker with another thread count or device may round differently, so only the seeds are
promised to repeat.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prefect.settings
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from devstack.storage_proxy import Fault, StorageProxy
from flows.generate import generate_job
from genjobs.callback.outbox import Outbox
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.jobs.payload import parse_job
from genjobs.jobs.plan import plan_job
from genjobs.render.sdxl import TINY_FOLDER_NAME
from genjobs.render.tiny_sdxl import ensure_tiny_sdxl
from genjobs.settings import Settings
from tests.flows.helpers import USER_ID, sdxl_job
from tests.real_storage import RealStorage
from tests.settings_env import install_settings
from tests.stress.faults import BUCKET, check_stored_assets, contract_paths, supabase_settings

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD = (
    "import asyncio, json, sys\n"
    "from flows.generate import generate_job\n"
    "asyncio.run(generate_job(json.loads(sys.argv[1])))\n"
)
KILL_DEADLINE_SECONDS = 120.0


@dataclass
class Scenario:
    """One job whose worker is killed the moment ``reached`` becomes true."""

    name: str
    job: dict[str, Any]
    reached: Callable[[], bool]
    process: subprocess.Popen[bytes] | None = None
    killed_after: float | None = None


def child_env(settings: Settings) -> dict[str, str]:
    """The child's environment: the same settings, through GENJOBS_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENJOBS_")}
    assert settings.supabase_service_key is not None and settings.job_callback_secret is not None
    env.update(
        {
            "PREFECT_API_URL": str(prefect.settings.PREFECT_API_URL.value()),
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "OMP_NUM_THREADS": "1",  # three workers share the CPU cores
            "GENJOBS_HOME": str(settings.home),
            "GENJOBS_MODEL_CACHE": str(settings.model_dir),
            "GENJOBS_SUPABASE_URL": str(settings.supabase_url),
            "GENJOBS_SUPABASE_SERVICE_KEY": settings.supabase_service_key.get_secret_value(),
            "GENJOBS_JOB_CALLBACK_SECRET": settings.job_callback_secret.get_secret_value(),
            "GENJOBS_CALLBACK_URL": str(settings.callback_url),
            "GENJOBS_STORAGE_TIMEOUT_SECONDS": "120",
            "GENJOBS_CALLBACK_RETRY_WINDOW_SECONDS": "600",
            "GENJOBS_CALLBACK_RETRY_BASE_SECONDS": "0.1",
            "GENJOBS_CALLBACK_RETRY_CAP_SECONDS": "0.5",
        }
    )
    return env


def held(fault: Fault) -> Callable[[], bool]:
    """True once the proxy holds an upload the fault matched."""
    return lambda: fault.hits > 0


def refused_callback(receiver: CallbackReceiver, job_id: str) -> Callable[[], bool]:
    return lambda: any(
        r.answered == 503 and json.loads(r.body).get("job_id") == job_id for r in receiver.requests
    )


def run_and_kill(scenarios: list[Scenario], env: dict[str, str], logs: Path) -> None:
    """Start every scenario's worker, SIGKILL each once its moment is reached."""
    started = time.monotonic()
    for scenario in scenarios:
        log = (logs / f"{scenario.name}.log").open("wb")
        scenario.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(scenario.job)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    pending = list(scenarios)
    while pending and time.monotonic() - started < KILL_DEADLINE_SECONDS:
        for scenario in list(pending):
            assert scenario.process is not None
            assert scenario.process.poll() is None, (
                f"the {scenario.name} worker ended on its own: "
                + (logs / f"{scenario.name}.log").read_text(errors="replace")[-3000:]
            )
            if scenario.reached():
                scenario.process.send_signal(signal.SIGKILL)
                scenario.process.wait(timeout=10)
                scenario.killed_after = time.monotonic() - started
                pending.remove(scenario)
        time.sleep(0.02)
    for scenario in pending:
        assert scenario.process is not None
        scenario.process.kill()
        scenario.process.wait(timeout=10)
    assert not pending, f"never reached: {[s.name for s in pending]}"


async def flow_run_states(job_id: str) -> list[str]:
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"job-{job_id}"]))
        )
    return sorted(str(run.state_type.value) for run in runs if run.state_type is not None)


async def test_jobs_killed_before_storing_finish_when_rerun_and_jobs_with_objects_are_refused(
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    real_storage: RealStorage,
    fault_proxy: StorageProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ensure_tiny_sdxl(model_cache / TINY_FOLDER_NAME)  # built once here, loaded by the workers
    settings = supabase_settings(
        tmp_path, model_cache, receiver, callback_secret, real_storage, fault_proxy
    )
    after_render, mid_upload, before_callback = (sdxl_job(num_images=1) for _ in range(3))
    paths = {
        name: f"{USER_ID}/{job['id']}/0{suffix}"
        for name, job, suffix in (
            ("after_render", after_render, ".png"),
            ("mid_upload", mid_upload, ".thumb.webp"),
        )
    }
    stalls = {
        name: fault_proxy.stall(
            f"^POST /storage/v1/object/{BUCKET}/{re.escape(path)}$", after_bytes=0
        )
        for name, path in paths.items()
    }
    scenarios = [
        Scenario("after_render", after_render, held(stalls["after_render"])),
        Scenario("mid_upload", mid_upload, held(stalls["mid_upload"])),
        Scenario(
            "before_callback",
            before_callback,
            refused_callback(receiver, before_callback["id"]),
        ),
    ]
    receiver.down_for(3600)
    run_and_kill(scenarios, child_env(settings), tmp_path)
    # The gateway drops the held uploads of the killed workers (their bodies never arrive); the
    # healthy worker below reaches the server directly.
    fault_proxy.stop()
    settings = settings.model_copy(update={"supabase_url": real_storage.url})
    receiver.down_for(0)

    # What the kills left behind: nothing, a lone original, or everything but the callback.
    def stored(job: dict[str, Any]) -> list[str]:
        return real_storage.object_names(BUCKET, f"{USER_ID}/{job['id']}/")

    assert stored(after_render) == []
    assert stored(mid_upload) == [f"{USER_ID}/{mid_upload['id']}/0.png"]
    assert stored(before_callback) == contract_paths(USER_ID, before_callback["id"], 1)
    assert receiver.accepted() == []
    for scenario in scenarios:
        # The kill left the scratch folder behind, unless the run had already cleaned it.
        scratch = tmp_path / "work" / scenario.job["id"]
        assert scratch.is_dir() == (scenario.name != "before_callback"), scenario.name

    # The same jobs again, in a healthy worker.
    left_behind = {scenario.name: stored(scenario.job) for scenario in scenarios}
    install_settings(monkeypatch, settings)
    states = {
        scenario.name: await generate_job(scenario.job, return_state=True) for scenario in scenarios
    }

    job_id = after_render["id"]
    assert states["after_render"].is_completed(), states["after_render"].message
    assert stored(after_render) == contract_paths(USER_ID, job_id, 1)
    (payload,) = receiver.accepted(job_id)
    assert payload["status"] == "completed"
    check_stored_assets(real_storage, payload)
    # The rerun drew the same seed (a function of the job id).
    assert payload["assets"][0]["metadata"]["seed"] == plan_job(parse_job(after_render)).seeds[0]
    assert len(receiver.assets(job_id)) == 1
    for scenario in (s for s in scenarios if s.name != "after_render"):
        job_id = scenario.job["id"]
        assert states[scenario.name].is_failed(), scenario.name
        assert stored(scenario.job) == left_behind[scenario.name], scenario.name
        (payload,) = receiver.accepted(job_id)
        assert payload["status"] == "failed", scenario.name
        assert payload["metadata"]["error_code"] == "JOB_ASSETS_EXIST", scenario.name
    for scenario in scenarios:
        job_id = scenario.job["id"]
        assert not (tmp_path / "work" / job_id).exists(), scenario.name
        # A SIGKILLed process runs no hook: its flow run stays Running (the cleanup flow's
        # stuck-job sweep owns those).
        ended = "COMPLETED" if scenario.name == "after_render" else "FAILED"
        assert await flow_run_states(job_id) == [ended, "RUNNING"], scenario.name
    assert Outbox(settings.outbox_dir).entries() == []
