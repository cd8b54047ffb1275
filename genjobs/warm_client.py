"""The flow-run command of the warm path: asks this host's warm runner to fork the flow run.

A process worker whose job variable ``command`` is ``python -m genjobs.warm_client`` starts this
module for every flow run, with the run's environment (``PREFECT__FLOW_RUN_ID``, the control
channel, the deployment's ``env``) and working directory. It hands both, and its own standard
input, output and error, to the warm runner (genjobs/warm_runner.py) over the runner's Unix
socket; the runner forks a child that runs the flow run through ``prefect.engine`` and reports
how it ended. Meanwhile this process stands in for that child towards the worker:

- SIGTERM, SIGINT and SIGHUP are passed on to the child (the worker cancels a run with SIGTERM);
- it exits with the child's exit code, or dies of the signal that killed the child, so the worker
  sees what it would have seen of a process of its own (a non-zero end: the run is Crashed);
- when it is killed itself (SIGKILL), the runner sees its connection close and kills the child.

When no warm runner answers, it replaces itself with ``python -m prefect.engine``: the run still
happens, at the price of a new interpreter.

The module imports only the standard library: it starts once per job and must cost tens of
milliseconds, so it reads its one setting from the environment itself: ``GENJOBS_WARM_SOCKET``,
by default ``$GENJOBS_HOME/warm-runner.sock`` (the warm runner's default).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

SOCKET_NAME = "warm-runner.sock"
DEFAULT_HOME = ".genjobs"  # genjobs.settings.DEFAULT_HOME, without importing pydantic
HEADER = struct.Struct("!I")  # length of the JSON request that follows
RELAYED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
RUNNER_GONE_EXIT_CODE = 70  # EX_SOFTWARE: the runner went away before the child ended


def socket_path(environ: Mapping[str, str]) -> Path:
    """Where the warm runner listens: ``GENJOBS_WARM_SOCKET``, else under ``GENJOBS_HOME``."""
    explicit = environ.get("GENJOBS_WARM_SOCKET")
    if explicit:
        return Path(explicit)
    return Path(environ.get("GENJOBS_HOME") or DEFAULT_HOME).absolute() / SOCKET_NAME


def encode_request(environ: Mapping[str, str], cwd: str) -> bytes:
    """The request: header and JSON body holding the run's environment and working directory."""
    body = json.dumps({"env": dict(environ), "cwd": cwd}).encode()
    return HEADER.pack(len(body)) + body


class _Relay:
    """Passes the worker's signals on to the child once the runner says which pid it has."""

    def __init__(self) -> None:
        self.child_pid: int | None = None
        self.pending: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.child_pid is None:
            self.pending.append(signum)  # sent as soon as the child exists
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child_pid, signum)

    def started(self, pid: int) -> None:
        self.child_pid = pid
        for signum in self.pending:
            self(signum, None)
        self.pending.clear()


def _exit_like(kind: str, number: int) -> int:
    """Exit as the child did: its code, or death by its signal."""
    if kind == "signal":
        if number not in (signal.SIGKILL, signal.SIGSTOP):  # these cannot be handled anyway
            signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        return 128 + number  # the signal is ignored or blocked here: report it as a shell would
    return number


def run(environ: Mapping[str, str], cwd: str, relay: _Relay) -> int:
    """Have the warm runner run this flow run; return the exit code to exit with.

    Raises:
        OSError: No warm runner took the request (nothing was started).
    """
    for signum in RELAYED_SIGNALS:
        signal.signal(signum, relay)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(socket_path(environ)))
    request = encode_request(environ, cwd)
    socket.send_fds(conn, [request[: HEADER.size]], [0, 1, 2])
    conn.sendall(request[HEADER.size :])
    replies = conn.makefile("rb")
    first = replies.readline().decode().strip()
    kind, _, value = first.partition(" ")
    if kind != "started":
        raise ConnectionRefusedError(value or "the warm runner closed the connection")
    relay.started(int(value))
    ending: tuple[str, int] | None = None
    try:
        for raw in replies:  # from here on the child exists: never fall back
            kind, _, value = raw.decode().strip().partition(" ")
            if kind in ("exit", "signal"):
                ending = (kind, int(value))
                break
    except OSError:
        pass
    if ending is not None:
        return _exit_like(*ending)
    sys.stderr.write("The warm runner went away before the flow run's process ended.\n")
    return RUNNER_GONE_EXIT_CODE


def main() -> int:
    environ = dict(os.environ)
    relay = _Relay()
    try:
        return run(environ, os.getcwd(), relay)
    except OSError as exc:
        for signum in RELAYED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        if relay.pending:  # stopped before anything started: start nothing
            return 128 + relay.pending[0]
        sys.stderr.write(
            f"No warm runner answered at {socket_path(environ)} ({exc}); running the flow run "
            "in a new Python process instead.\n"
        )
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "prefect.engine"])
    return 1  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
