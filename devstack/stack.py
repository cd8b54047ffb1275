"""A whole deployment on this machine: a real ``prefect server start`` on loopback, the work
pools, the blocks, ``prefect deploy`` from prefect.yaml, a process worker and GPU workers (on the
CPU), each a subprocess with its own environment under one temporary folder.

Used by tests/deploy and the benchmarks. Everything speaks to the server through its
HTTP API as the backend would; nothing here touches the caller's Prefect settings or home.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from genjobs.prefect_tuning import batch_event_writes

REPO_ROOT = Path(__file__).resolve().parents[1]
BLOCK_ENV = {  # as prefect.yaml's job_variables name them
    "GENJOBS_SUPABASE_BLOCK": "genjobs-supabase",
    "GENJOBS_CALLBACK_BLOCK": "genjobs-callback",
}
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
_DROPPED_PREFIXES = ("PREFECT_", "GENJOBS_")
_DROPPED_NAMES = {"SUPABASE_URL", "SUPABASE_SERVICE_KEY", "JOB_CALLBACK_SECRET"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    """A subprocess in its own session, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the process group this stack started, then SIGKILL if it lingers."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout)


@dataclass
class LocalStack:
    """Server, pools, blocks, deployments and workers under ``root``."""

    root: Path
    port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    database_url: str | None = None  # e.g. postgresql+asyncpg://...; default: SQLite in home

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.prefect_home = self.root / "prefect-home"
        self.genjobs_home = self.root / "genjobs-home"
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.http = httpx.Client(base_url=self.api_url, timeout=30.0)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One API call, retried on 503 and connection errors, as every API client should (the
        server answers 503 for retryable faults such as a busy SQLite database)."""
        for attempt in range(6):
            try:
                answer = self.http.request(method, url, **kwargs)
            except httpx.TransportError:
                if attempt == 5:
                    raise
            else:
                if answer.status_code != 503 or attempt == 5:
                    return answer
            time.sleep(0.25 * 2**attempt)
        raise AssertionError("unreachable")

    # -- environment ------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: the caller's PREFECT_*/GENJOBS_* and secrets left out."""
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_DROPPED_PREFIXES) and k not in _DROPPED_NAMES
        }
        base.update(
            PREFECT_HOME=str(self.prefect_home),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            PREFECT_LOGGING_LEVEL="INFO",
            GENJOBS_HOME=str(self.genjobs_home),
            GENJOBS_CHECKOUT=str(REPO_ROOT),
            PYTHONPATH=os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
            # `python` (the warm path's flow-run command) is this interpreter, as in a venv.
            PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        base.update(self.extra_env)
        base.update(extra)
        return base

    def spawn(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> Process:
        log = self.root / f"{name}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(
            list(args),
            cwd=REPO_ROOT,
            env=dict(env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def prefect(self, *args: str, timeout: float = 120.0) -> str:
        """Run the ``prefect`` CLI against this server; returns its output, raises on failure."""
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", *args],
            cwd=REPO_ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    # -- server -----------------------------------------------------------------------------
    def start_server(self, timeout: float = 120.0) -> None:
        args = ["server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        env = self.env()
        if self.database_url:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.database_url
        else:
            batch_event_writes(env)  # as docs/runbook.md advises for SQLite
        server = self.spawn("server", [sys.executable, "-m", "prefect", *args], env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.popen.poll() is not None:
                raise RuntimeError(f"prefect server exited:\n{server.output()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/health").status_code == 200:
                    return
            time.sleep(0.25)
        raise TimeoutError(f"prefect server did not answer in {timeout} s")

    def create_pools(self, *names: str, worker_type: str = "genjobs-process") -> None:
        """The pools, as the runbook creates the GPU pool (the project's worker type)."""
        for name in names:
            body = {"name": name, "type": worker_type}
            answer = self.request("POST", "/work_pools/", json=body)
            if answer.status_code != 409:  # already there
                answer.raise_for_status()

    def save_blocks(self, script: str) -> None:
        """Run Python that saves blocks (as an operator would), against this server."""
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=REPO_ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"saving blocks failed:\n{done.stdout}\n{done.stderr}")

    def deploy(self, *names: str) -> None:
        args = [arg for name in names for arg in ("--name", name)]
        self.prefect("deploy", *args, timeout=240)

    # -- workers ----------------------------------------------------------------------------
    def start_process_worker(
        self,
        pool: str,
        limit: int | None = None,
        query_seconds: float = 1.0,
        worker_type: str | None = None,
        name: str | None = None,
        queues: Sequence[str] = (),
        **env: str,
    ) -> Process:
        """``prefect worker start`` on ``pool``, of the pool's type unless ``worker_type`` says
        otherwise (``process``: Prefect's own, which only polls), with the block names the
        generation flows' crash and cancellation hooks need: the worker runs those hooks in its
        own process when the flow-run command is the warm client."""
        args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool]
        args += ["--name", name or f"{pool}-worker"]
        if worker_type is not None:
            args += ["--type", worker_type]
        for queue in queues:
            args += ["--work-queue", queue]
        if limit is not None:
            args += ["--limit", str(limit)]
        variables = {**BLOCK_ENV, "PREFECT_WORKER_QUERY_SECONDS": str(query_seconds), **env}
        return self.spawn(f"worker-{name or pool}", args, self.env(**variables))

    def start_warm_runner(self, name: str = "warm-runner", timeout: float = 120.0) -> Process:
        """``genjobs warm-runner`` at the default socket; returns once it listens
        (the socket appears only then)."""
        runner = self.spawn(
            name, [sys.executable, "-m", "entrypoints.cli", "warm-runner"], self.env()
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.warm_socket.exists():
                return runner
            if runner.popen.poll() is not None:
                raise RuntimeError(f"the warm runner exited:\n{runner.output()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"the warm runner did not listen within {timeout} s")

    @property
    def warm_socket(self) -> Path:
        return self.genjobs_home.absolute() / "warm-runner.sock"

    def start_gpu_worker(
        self, name: str, device: str = "cpu", families: str = "sdxl,wan", **env: str
    ) -> Process:
        """``python -m entrypoints.gpu_worker`` with the block names the deployments use."""
        args = [sys.executable, "-m", "entrypoints.gpu_worker", "--device", device]
        args += ["--families", families]
        blocks = {
            "GENJOBS_SUPABASE_BLOCK": "genjobs-supabase",
            "GENJOBS_MODELS_BLOCK": "genjobs-models",
        }
        return self.spawn(name, args, self.env(**{**blocks, **env}))

    def wait_for_task_workers(self, count: int, timeout: float = 180.0) -> None:
        """Until ``count`` GPU workers have subscribed to the render queues."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self.request("POST", "/task_workers/filter", json={}).json()
            if len(workers) >= count:
                return
            for process in self.processes:
                if process.popen.poll() is not None:
                    raise RuntimeError(f"{process.name} exited:\n{process.output()[-3000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"fewer than {count} task workers subscribed within {timeout} s")

    # -- runs -------------------------------------------------------------------------------
    def deployment_id(self, flow_name: str, deployment: str) -> str:
        answer = self.request("GET", f"/deployments/name/{flow_name}/{deployment}")
        answer.raise_for_status()
        return str(answer.json()["id"])

    def copy_deployment(
        self,
        flow_name: str,
        deployment: str,
        new_name: str,
        without_job_variables: Sequence[str],
        extra_env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> str:
        """A second deployment of the same flow, pool and pull steps, less some job variables
        (``command``: the same jobs through the plain process worker) and with ``extra_env`` in
        its runs' environment; returns its id. ``overrides`` replace fields of the deployment
        (``entrypoint`` and ``flow_id``: another flow on the same pool and pull steps)."""
        source = self.request("GET", f"/deployments/name/{flow_name}/{deployment}").json()
        body = {
            key: source[key]
            for key in (
                "flow_id",
                "work_pool_name",
                "entrypoint",
                "path",
                "pull_steps",
                "parameter_openapi_schema",
                "enforce_parameter_schema",
                "tags",
            )
        }
        job_variables = dict(source.get("job_variables") or {})
        for name in without_job_variables:
            job_variables.pop(name, None)
        if extra_env:
            job_variables["env"] = {**job_variables.get("env", {}), **extra_env}
        body.update(name=new_name, job_variables=job_variables, work_queue_name=new_name)
        body.update(overrides)
        answer = self.request("POST", "/deployments/", json=body)
        answer.raise_for_status()
        return str(answer.json()["id"])

    def trigger(self, deployment_id: str, job: dict[str, Any]) -> dict[str, Any]:
        """What queue-job sends: the job as parameter, its id as idempotency key."""
        answer = self.request(
            "POST",
            f"/deployments/{deployment_id}/create_flow_run",
            json={"parameters": {"job": job}, "idempotency_key": str(job["id"])},
        )
        answer.raise_for_status()
        run: dict[str, Any] = answer.json()
        return run

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        answer = self.request("GET", f"/flow_runs/{flow_run_id}")
        answer.raise_for_status()
        run: dict[str, Any] = answer.json()
        return run

    def wait_for_flow_runs(
        self, flow_run_ids: Sequence[str], timeout: float = 180.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            runs = [self.flow_run(i) for i in flow_run_ids]
            if all(r["state"]["type"] in FINAL_STATES for r in runs):
                return runs
            if time.monotonic() > deadline:
                states = {r["name"]: r["state"]["type"] for r in runs}
                raise TimeoutError(f"flow runs not finished in {timeout} s: {states}")
            time.sleep(0.5)

    def flow_runs_of(self, deployment_id: str) -> list[dict[str, Any]]:
        body = {"deployments": {"id": {"any_": [deployment_id]}}}
        runs: list[dict[str, Any]] = self.request("POST", "/flow_runs/filter", json=body).json()
        return runs

    def task_runs_of(self, flow_run_ids: Sequence[str]) -> list[dict[str, Any]]:
        body = {"flow_runs": {"id": {"any_": list(flow_run_ids)}}, "limit": 200}
        runs: list[dict[str, Any]] = self.request("POST", "/task_runs/filter", json=body).json()
        return runs

    def artifacts_of(self, flow_run_id: str) -> list[dict[str, Any]]:
        body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
        artifacts: list[dict[str, Any]] = self.request(
            "POST", "/artifacts/filter", json=body
        ).json()
        return artifacts

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every stored event of that name (oldest first), following the API's pages."""
        body = {"filter": {"event": {"name": [name]}, "order": "ASC"}, "limit": 50}
        answer = self.request("POST", "/events/filter", json=body)
        events: list[dict[str, Any]] = []
        while True:
            answer.raise_for_status()
            page = answer.json()
            events += page["events"]
            if not page.get("next_page"):
                return events
            answer = self.request("GET", page["next_page"])

    # -- teardown ---------------------------------------------------------------------------
    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.http.close()

    def logs(self) -> str:
        return "\n".join(f"===== {p.name}\n{p.output()[-4000:]}" for p in self.processes)


@contextlib.contextmanager
def local_stack(
    root: Path, database_url: str | None = None, **extra_env: str
) -> Iterator[LocalStack]:
    stack = LocalStack(root, extra_env=dict(extra_env), database_url=database_url)
    try:
        stack.start_server()
        yield stack
    finally:
        stack.stop()


def blocks_script(
    storage_url: str, service_key: str, callback_url: str, secret: str, device: str = "cpu"
) -> str:
    """Python an operator runs once: the three blocks prefect.yaml names."""
    values = json.dumps(
        {
            "storage_url": storage_url,
            "service_key": service_key,
            "callback_url": callback_url,
            "secret": secret,
            "device": device,
        }
    )
    return f"""
import json
from blocks import JobCallbackEndpoint, ModelRegistry, SupabaseConnection
v = json.loads({values!r})
SupabaseConnection(url=v["storage_url"], service_key=v["service_key"]).save(
    "genjobs-supabase", overwrite=True)
JobCallbackEndpoint(url=v["callback_url"], secret=v["secret"]).save(
    "genjobs-callback", overwrite=True)
ModelRegistry(device=v["device"]).save("genjobs-models", overwrite=True)
"""
