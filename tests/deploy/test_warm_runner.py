"""The warm runner's fork, relay and exit handling, with the real client, without Prefect.

A runner process serves a small script instead of a flow run (``WarmRunner.serve()`` returns the
request in each forked child; the script does what the request's environment asks), and the
real ``python -m genjobs.warm_client`` talks to it as a process worker's flow-run command would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest

from devstack.stack import REPO_ROOT
from genjobs.warm_runner import PLAIN_HTTP_CA_NAME

CHILD_SCRIPT = """
import os, signal, sys, time
from pathlib import Path
from genjobs.warm_runner import WarmRunner

if "--with-a-thread" in sys.argv:  # as if an import had started one
    import threading
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
run = WarmRunner(Path(sys.argv[1]), preload=()).serve()
if run is None:
    sys.exit(0)
Path(run.env["REPORT"]).write_text(f"{os.getpid()} {os.getppid()} {os.getcwd()}")
if run.plain_http_ca_file is not None:
    Path(run.env["REPORT"] + ".ca").write_text(str(run.plain_http_ca_file))
print("hello from the forked process", flush=True)
if run.env.get("CRASH"):
    os._exit(int(run.env["CRASH"]))
if run.env.get("KILL_ITSELF"):
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(float(run.env.get("SLEEP", "0")))
sys.exit(int(run.env.get("EXIT_WITH", "0")))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GENJOBS_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _wait_for(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


@contextlib.contextmanager
def _started_runner(folder: Path, *options: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    script = folder / "runner.py"
    script.write_text(CHILD_SCRIPT)
    sock = folder / "runner.sock"
    with (folder / "runner.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(script), str(sock), *options], env=_env(), stdout=log, stderr=log
        )
        _wait_for(sock.exists, "the runner's socket")  # it appears once listening
        try:
            yield process, sock
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    with _started_runner(tmp_path) as started:
        yield started


def _client(sock: Path, cwd: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "genjobs.warm_client"],
        cwd=cwd,
        env=_env(GENJOBS_WARM_SOCKET=str(sock), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _report(path: Path) -> tuple[int, int, str]:
    _wait_for(path.exists, "the forked process's report")
    _wait_for(lambda: path.read_text().count(" ") >= 2, "the whole report")
    pid, parent, cwd = path.read_text().split(" ", 2)
    return int(pid), int(parent), cwd


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_forked_run_gets_the_clients_streams_environment_folder_and_exit_code(
    runner: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    process, sock = runner
    folder = tmp_path / "work"
    folder.mkdir()
    client = _client(sock, folder, REPORT=str(tmp_path / "report"), EXIT_WITH="3")
    out, err = client.communicate(timeout=30)
    assert client.returncode == 3, err.decode()
    assert out.decode() == "hello from the forked process\n"
    pid, parent, cwd = _report(tmp_path / "report")
    assert parent == process.pid and pid != client.pid
    assert cwd == str(folder)
    # the runner wrote one public root certificate next to its socket and hands it on
    ca_file = Path((tmp_path / "report.ca").read_text())
    assert ca_file == sock.parent / PLAIN_HTTP_CA_NAME
    pem = ca_file.read_text()
    assert (
        pem.count("-----BEGIN CERTIFICATE-----") == 1 and pem in Path(certifi.where()).read_text()
    )
    ssl.create_default_context(cafile=str(ca_file))  # loads as a CA file


@pytest.mark.parametrize(
    "signum",
    [
        signal.SIGTERM,  # the worker cancels: passed on, the client dies of it as its child did
        signal.SIGKILL,  # the client is killed: the runner sees it go and kills its child
    ],
)
def test_a_signal_to_the_client_ends_the_forked_process(
    runner: tuple[subprocess.Popen[bytes], Path], tmp_path: Path, signum: signal.Signals
) -> None:
    _, sock = runner
    client = _client(sock, tmp_path, REPORT=str(tmp_path / "report"), SLEEP="120")
    pid, _, _ = _report(tmp_path / "report")
    client.send_signal(signum)
    client.wait(timeout=30)
    assert client.returncode == -signum
    _wait_for(lambda: _gone(pid), "the end of the forked process")


def test_a_crashing_run_is_reported_and_the_runner_serves_the_next(
    runner: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    process, sock = runner
    crashed = _client(sock, tmp_path, REPORT=str(tmp_path / "crashed"), KILL_ITSELF="1")
    exited = _client(sock, tmp_path, REPORT=str(tmp_path / "exited"), CRASH="17")
    crashed.communicate(timeout=30)
    exited.communicate(timeout=30)
    assert crashed.returncode == -signal.SIGKILL
    assert exited.returncode == 17
    assert process.poll() is None
    after = _client(sock, tmp_path, REPORT=str(tmp_path / "after"))
    out, err = after.communicate(timeout=30)
    assert after.returncode == 0, err.decode()
    assert out.decode() == "hello from the forked process\n"


@pytest.mark.slow
def test_without_a_runner_the_client_runs_the_engine_in_a_new_process(tmp_path: Path) -> None:
    client = _client(tmp_path / "nobody.sock", tmp_path, PREFECT__FLOW_RUN_ID="not-a-uuid")
    _, err = client.communicate(timeout=120)
    assert client.returncode == 1
    assert "No warm runner answered" in err.decode()
    assert "Invalid flow run id" in err.decode()  # python -m prefect.engine ran


@pytest.mark.slow
def test_a_runner_with_a_thread_refuses_to_fork_and_the_client_runs_the_engine_itself(
    tmp_path: Path,
) -> None:
    with _started_runner(tmp_path, "--with-a-thread") as (_, sock):
        client = _client(
            sock, tmp_path, REPORT=str(tmp_path / "report"), PREFECT__FLOW_RUN_ID="not-a-uuid"
        )
        _, err = client.communicate(timeout=120)
    assert "the warm runner has threads running, so it cannot fork safely" in err.decode()
    assert "Invalid flow run id" in err.decode()  # python -m prefect.engine ran instead
    assert client.returncode == 1
    assert not (tmp_path / "report").exists()  # nothing was forked


@pytest.mark.slow
def test_preloading_the_generation_flow_starts_no_thread(tmp_path: Path) -> None:
    """Forking is safe only from a single thread: the default preload must start none."""
    code = (
        "import threading\n"
        "from pathlib import Path\n"
        "from genjobs.warm_runner import PRELOAD, WarmRunner\n"
        "WarmRunner(Path('unused.sock')).preload()\n"
        "import flows.generate, prefect.flow_engine\n"
        "from prefect.artifacts import MarkdownArtifact\n"
        "from prefect.client.schemas.objects import FlowRun\n"
        "from prefect.events.filters import EventFilter\n"
        "from prefect.events.schemas.events import Event\n"
        "models = (FlowRun, Event, EventFilter, MarkdownArtifact)\n"
        "built = [model.__pydantic_complete__ for model in models]\n"
        "print(threading.active_count(), all(built), sorted(PRELOAD))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env(PREFECT_HOME=str(tmp_path / "prefect")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    count, built, _ = done.stdout.split(" ", 2)
    assert count == "1"
    # The models a forked run builds first (its flow run, the pull step's event, the
    # suspension observer's filter, the asset artifacts) are complete before any fork.
    assert built == "True"
    assert "flows.generate" in done.stdout


def test_a_runner_makes_the_missing_folder_of_its_socket_private(tmp_path: Path) -> None:
    """The socket's folder is usually GENJOBS_HOME (undelivered callbacks): a runner started
    before any flow made it must not make it readable by other users."""
    script = tmp_path / "runner.py"
    script.write_text(CHILD_SCRIPT)
    sock = tmp_path / "home" / "state" / "runner.sock"
    with (tmp_path / "runner.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(script), str(sock)], env=_env(), stdout=log, stderr=log
        )
        try:
            _wait_for(sock.exists, "the runner's socket")
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)

    modes = [(tmp_path / "home").stat().st_mode & 0o777, sock.parent.stat().st_mode & 0o777]
    assert modes == [0o700, 0o700]
