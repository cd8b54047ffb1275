"""The warm runner: one long-lived process per worker host that has imported Prefect, the flows
and the project once, and forks a child for every flow run the process worker starts.

A flow run on a plain process worker is a new Python process that spends 3 to 4 CPU seconds
importing Prefect, the storage client and the project before it does anything. Here the imports
happen once: the runner imports the modules of ``--preload`` (the generation flow by default),
then waits on a Unix socket. The process worker runs ``python -m genjobs.warm_client`` as the
flow run's command (the ``command`` job variable); that client sends the run's environment,
working directory and standard streams, and the runner forks. The child takes them over and runs
the flow run exactly as ``python -m prefect.engine`` would (the same module, run as
``__main__``), then exits; the runner reports its exit code or signal to the client, which exits
the same way. What a process worker gives is kept:

- each run is its own process that exits: a crash or a leak ends with it, and other runs and the
  runner go on (the runner itself never runs a job, so its memory stays flat);
- the worker's cancellation (control channel, then SIGTERM to the client, passed on to the
  child) and its crash handling (a non-zero end: Crashed, and the ``on_crashed`` hooks) work as
  for its own processes;
- a client that is killed (SIGKILL) closes its connection, and the runner kills its child;
  children die with the runner (``PR_SET_PDEATHSIG``), so no run outlives its supervisor.

Forking a process that has threads copies locks held by threads that do not exist in the child,
so the runner starts none: no event loop, no API client, no Prefect service before it forks. It
checks that before every fork and refuses the request otherwise (the client then starts a new
interpreter instead). Only the runner's own user may connect (socket mode 0600, and the peer's
uid is checked).

Start it before the worker, from the same checkout and environment (docs/runbook.md)::

    genjobs warm-runner

Restart it after deploying new code, as the GPU workers: it runs the code it imported.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import dataclasses
import gc
import importlib
import json
import logging
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from pydantic import BaseModel

from genjobs.plain_http_ca import spare_ca_bundle_reads, write_plain_http_ca_file
from genjobs.settings import make_private_dir
from genjobs.tls import ssl_context
from genjobs.warm_client import HEADER, SOCKET_NAME

logger = logging.getLogger("genjobs.warm_runner")  # also when run as __main__

PRELOAD = (
    "prefect.flow_engine",
    "prefect.deployments.steps",
    "prefect.runner.storage",
    "prefect.utilities.visualization",
    "anyio._core._sockets",
    "anyio._core._streams",
    "encodings.idna",
    "rich._emoji_codes",
    "flows.generate",
)
"""Modules a generation flow run needs: the engine's own, the pull steps and the flow, and what
a run would otherwise import on first use (measured with ``python -X importtime``)."""

REQUEST_TIMEOUT_SECONDS = 5.0
PLAIN_HTTP_CA_NAME = "warm-runner-plain-http-ca.pem"  # beside the socket
_PR_SET_PDEATHSIG = 1
_PEER_CREDENTIALS = struct.Struct("3i")  # pid, uid, gid of SO_PEERCRED


@dataclass(frozen=True)
class ForkedRun:
    """What a forked child runs: the flow run's environment and working directory."""

    env: dict[str, str]
    cwd: str
    same_logging: bool = False  # the run's logging settings are the runner's: no set-up again
    same_tls: bool = False  # the run's CA settings are the runner's: its TLS context serves
    plain_http_ca_file: Path | None = None  # see :func:`spare_ca_bundle_reads`


class WarmRunner:
    """Imports once, then forks a child per request on ``socket_path`` (see the module doc)."""

    def __init__(self, socket_path: Path, preload: Sequence[str] = PRELOAD) -> None:
        self.socket_path = socket_path
        self.preload_modules = tuple(preload)
        self.runs: dict[int, socket.socket] = {}  # child pid -> its client's connection
        self.forked = 0
        self._stopping = False
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wakeup: tuple[int, int] | None = None
        self.plain_http_ca_file: Path | None = None

    # -- start -----------------------------------------------------------------------------
    def preload(self) -> float:
        """Import :attr:`preload_modules`; returns the seconds it took.

        Raises:
            RuntimeError: An import started a thread, which would make forking unsafe.
        """
        started = time.perf_counter()
        for name in self.preload_modules:
            importlib.import_module(name)
        _warm_up()
        if "PIL.Image" in sys.modules:  # its format plugins load on the first encode
            sys.modules["PIL.Image"].init()
        # The imported objects live as long as the runner: keep them out of the collector's
        # passes, in the runner and in every child (the pages they sit on stay shared).
        gc.collect()
        gc.freeze()
        threads = threading.enumerate()
        if len(threads) > 1:
            names = ", ".join(t.name for t in threads if t is not threading.main_thread())
            raise RuntimeError(f"Importing the preloaded modules started threads: {names}")
        return time.perf_counter() - started

    def _listen(self) -> socket.socket:
        # Usually GENJOBS_HOME, which holds undelivered callbacks: a folder made here is
        # private (0700), as the flows make it; one that exists stays as it is.
        make_private_dir(self.socket_path.parent)
        with contextlib.suppress(FileNotFoundError):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with probe:
                try:
                    probe.connect(str(self.socket_path))
                except ConnectionRefusedError:
                    self.socket_path.unlink()  # left behind by a runner that died
                else:
                    raise RuntimeError(f"A warm runner already listens at {self.socket_path}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound under a staging name and renamed once listening: a client never finds a
        # socket that refuses it (and so never starts a new interpreter for nothing).
        staging = self.socket_path.with_name(f".{self.socket_path.name}.{os.getpid()}")
        staging.unlink(missing_ok=True)
        old_umask = os.umask(0o177)  # the socket is created 0600: only this user connects
        try:
            listener.bind(str(staging))
        finally:
            os.umask(old_umask)
        listener.listen(128)
        listener.setblocking(False)
        self.plain_http_ca_file = write_plain_http_ca_file(
            self.socket_path.parent, PLAIN_HTTP_CA_NAME
        )
        staging.rename(self.socket_path)
        return listener

    # -- serve -----------------------------------------------------------------------------
    def serve(self) -> ForkedRun | None:
        """Serve until SIGTERM or SIGINT and the runs in flight have ended; returns ``None``.

        In each forked child it returns instead, with the run the child is to execute.
        """
        self._listener = self._listen()
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        self._wakeup = (read_end, write_end)
        signal.set_wakeup_fd(write_end)
        signal.signal(signal.SIGCHLD, _ignore)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(read_end, selectors.EVENT_READ, "wake")
        runner_pid = os.getpid()
        try:
            while not (self._stopping and not self.runs):
                for key, _ in self._selector.select():
                    if key.data == "accept":
                        forked = self._accept()
                        if forked is not None:
                            return forked  # in the child
                    elif key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            os.read(read_end, 512)
                        self._reap()
                        self._stop_listening_if_asked()
                    else:
                        self._client_spoke(key.fileobj, int(key.data))  # type: ignore[arg-type]
            logger.info("The warm runner stopped after %d flow run(s).", self.forked)
            return None
        finally:
            if os.getpid() == runner_pid:
                self._close()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:  # asked twice: end the runs in flight too
            for pid in list(self.runs):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        self._stopping = True

    def _stop_listening_if_asked(self) -> None:
        if not self._stopping or self._listener is None or self._selector is None:
            return
        self._selector.unregister(self._listener)
        self._listener.close()
        self._listener = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        logger.info(
            "The warm runner takes no new flow runs; waiting for %d in flight.", len(self.runs)
        )

    def _accept(self) -> ForkedRun | None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return None
        conn.settimeout(REQUEST_TIMEOUT_SECONDS)
        try:
            fds, request = _read_request(conn)
        except (OSError, ValueError) as exc:
            logger.warning("A flow-run request was unreadable and is refused: %s", exc)
            conn.close()
            return None
        refusal = self._refusal(conn)
        pid = -1
        if refusal is None:
            try:
                pid = os.fork()
            except OSError as exc:
                refusal = f"fork failed: {exc}"
        if pid == 0:
            return self._become_child(conn, fds, request)
        for fd in fds:
            os.close(fd)
        if refusal is not None:
            logger.warning("A flow-run request is refused: %s", refusal)
            with contextlib.suppress(OSError):
                conn.sendall(f"refused {refusal}\n".encode())
            conn.close()
            return None
        self.forked += 1
        self.runs[pid] = conn
        logger.info(
            "Forked process %d for flow run %s.", pid, request.env.get("PREFECT__FLOW_RUN_ID")
        )
        conn.setblocking(False)
        assert self._selector is not None
        self._selector.register(conn, selectors.EVENT_READ, pid)
        try:
            conn.sendall(f"started {pid}\n".encode())
        except OSError:
            self._client_gone(pid)
        return None

    def _refusal(self, conn: socket.socket) -> str | None:
        """Why this request may not be served, or ``None``."""
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER_CREDENTIALS.size)
        _, uid, _ = _PEER_CREDENTIALS.unpack(raw)
        if uid != os.getuid():
            return f"the client runs as uid {uid}, this runner as uid {os.getuid()}"
        if threading.active_count() > 1:
            return "the warm runner has threads running, so it cannot fork safely"
        return None

    def _become_child(self, conn: socket.socket, fds: list[int], request: ForkedRun) -> ForkedRun:
        """In the forked child: drop the runner's sockets and signals, take over the client's
        standard streams, environment and working directory."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _die_with_parent()
        self._close(unlink=False)
        conn.close()
        os.setsid()  # signals to the runner's process group are not meant for the runs
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        fds.clear()
        os.chdir(request.cwd)
        same_logging = _logging_environment(request.env) == _logging_environment(os.environ)
        same_tls = _tls_environment(request.env) == _tls_environment(os.environ)
        os.environ.clear()
        os.environ.update(request.env)
        return dataclasses.replace(
            request,
            same_logging=same_logging,
            same_tls=same_tls,
            plain_http_ca_file=self.plain_http_ca_file,
        )

    def _client_spoke(self, conn: socket.socket, pid: int) -> None:
        try:
            data = conn.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._client_gone(pid)

    def _client_gone(self, pid: int) -> None:
        """The client of a running child went away (killed): the child must not run on."""
        logger.warning("The client of flow-run process %d went away; killing the process.", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        conn = self.runs.get(pid)
        if conn is not None and self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn)

    def _reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.runs.pop(pid, None)
            if conn is None:
                continue
            if os.WIFSIGNALED(status):
                reply = f"signal {os.WTERMSIG(status)}\n"
            else:
                reply = f"exit {os.waitstatus_to_exitcode(status)}\n"
            logger.info(
                "Process %d ended (%s) after %.2f CPU s.",
                pid,
                reply.strip(),
                usage.ru_utime + usage.ru_stime,
            )
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(conn)
            with contextlib.suppress(OSError):
                conn.setblocking(True)
                conn.sendall(reply.encode())
            conn.close()

    def _close(self, unlink: bool = True) -> None:
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if unlink:
                with contextlib.suppress(FileNotFoundError):
                    self.socket_path.unlink()
        if self._wakeup is not None:
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None
        for conn in self.runs.values():
            conn.close()
        self.runs.clear()


def _ignore(signum: int, frame: FrameType | None) -> None:
    """SIGCHLD only needs to wake the loop (through the wakeup fd)."""


def _read_request(conn: socket.socket) -> tuple[list[int], ForkedRun]:
    header, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    while len(header) < HEADER.size:
        chunk = conn.recv(HEADER.size - len(header))
        if not chunk:
            raise ValueError("the request ended early")
        header += chunk
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"the request carried {len(fds)} file descriptors, not 3")
    (length,) = HEADER.unpack(header)
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            raise ValueError("the request ended early")
        body += chunk
    request = json.loads(body)
    return fds, ForkedRun(
        env={str(k): str(v) for k, v in request["env"].items()}, cwd=request["cwd"]
    )


def _warm_up() -> None:
    """What every forked run would otherwise do first, done once before any fork (each measured
    with py-spy on forked runs):

    - import the installed Prefect collections, which a run's first block load imports (the
      project's worker type among them, about 0.2 s);
    - complete Prefect's client schemas, which pydantic otherwise builds in each process on
      their first validation (the flow run, the deployment, the state updates: about 8 % of a
      forked run's CPU), and its event, event filter and artifact models (the pull step's
      event and the suspension observer's filter before the run proposes Running, the
      render's completion filter, the asset artifacts: about 7 ms of each run's CPU);
    - build the project's TLS context (genjobs/tls.py), which reads the CA bundle (about 6 %).

    None of it starts a thread or opens a connection.
    """
    from prefect import artifacts
    from prefect.client.schemas import actions, filters, objects, responses
    from prefect.events import filters as event_filters
    from prefect.events.schemas import events
    from prefect.plugins import load_prefect_collections

    load_prefect_collections()
    for module in (objects, responses, actions, filters, events, event_filters, artifacts):
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseModel)
                and not value.__pydantic_complete__
            ):
                with contextlib.suppress(Exception):  # left to build on first use, as before
                    value.model_rebuild()
    ssl_context()


def _tls_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the project's TLS context is read from (genjobs/tls.py)."""
    return {name: environ[name] for name in ("SSL_CERT_FILE", "SSL_CERT_DIR") if name in environ}


def _logging_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables Prefect's logging configuration is read from."""
    return {
        name: value
        for name, value in environ.items()
        if name.startswith("PREFECT_LOGGING_") or name in _LOGGING_SOURCES
    }


_LOGGING_SOURCES = {"PREFECT_HOME", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"}


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the runner dies (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the runner died before the request took effect
        os._exit(1)


def run_flow_run(run: ForkedRun) -> int:
    """In a forked child: run the flow run as ``python -m prefect.engine`` does; the exit code.

    Prefect's settings and logging were set up from the runner's environment at import; they
    are set up again from the run's (the API URL, ...), logging only where its settings differ
    (it costs about 60 ms of CPU).
    """
    from prefect.context import SyncClientContext, refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    atexit.register(_EXIT.now)  # registered first: runs after the run's own exit handlers
    _reset_logging()
    if not run.same_tls:
        ssl_context.cache_clear()  # built from the runner's CA settings, not the run's
    spare_ca_bundle_reads(os.environ, run.plain_http_ca_file)
    refresh_global_settings_context()
    if not run.same_logging:
        setup_logging(incremental=False)
    sys.argv = [sys.argv[0]]  # the engine reads the flow run id from PREFECT__FLOW_RUN_ID
    with warnings.catch_warnings():
        # runpy warns that prefect.engine was imported before it runs as __main__: expected.
        warnings.filterwarnings("ignore", "'prefect.engine' found in sys.modules", RuntimeWarning)
        try:
            # One sync API client for the engine's synchronous calls (reading the flow run,
            # result-storage look-ups): each new client reads the CA bundle again.
            with SyncClientContext.get_or_create():
                runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            _EXIT.code = _exit_code(exc.code)
        else:
            _EXIT.code = 0
    return _EXIT.code


class _ExitWithoutTeardown:
    """Ends a forked child once the interpreter has run the flow run's exit handlers.

    At exit the interpreter first joins threads (Prefect's log and event services drain there),
    then runs the exit handlers, last registered first, then tears down every module the runner
    imported: measured about half the CPU of a short flow run, for a process about to vanish.
    Registered before the run starts, this handler runs after the run's own handlers, flushes
    the logging handlers and standard streams, and exits at once (as multiprocessing's forked
    children do).
    """

    code = 1  # until the run says otherwise

    def now(self) -> None:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(self.code)


_EXIT = _ExitWithoutTeardown()


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")  # as the interpreter reports sys.exit("message")
    return 1


_RUNNER_HANDLER_NAME = "genjobs-warm-runner"


def _configure_runner_logging() -> None:
    handler = logging.StreamHandler()
    handler.set_name(_RUNNER_HANDLER_NAME)
    handler.setFormatter(
        logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s")
    )
    runner_logger = logging.getLogger("genjobs.warm_runner")
    runner_logger.setLevel(logging.INFO)
    runner_logger.addHandler(handler)
    runner_logger.propagate = False


def _reset_logging() -> None:
    """Undo the runner's own log handler in a child: its logs go where Prefect sends them."""
    runner_logger = logging.getLogger("genjobs.warm_runner")
    for handler in list(runner_logger.handlers):
        if handler.get_name() == _RUNNER_HANDLER_NAME:
            runner_logger.removeHandler(handler)
    runner_logger.setLevel(logging.NOTSET)
    runner_logger.propagate = True


def default_socket_path(home: Path) -> Path:
    """``warm-runner.sock`` in ``home`` (``$GENJOBS_HOME``), where genjobs.warm_client looks by
    default."""
    return home.absolute() / SOCKET_NAME


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """The runner's options (``genjobs warm-runner``)."""
    parser.add_argument("--socket", type=Path, help="default: $GENJOBS_HOME/warm-runner.sock")
    parser.add_argument(
        "--preload",
        action="append",
        help=f"a module to import before serving (repeatable); default: {', '.join(PRELOAD)}",
    )


def serve_from_arguments(args: argparse.Namespace) -> int:
    """Serve with parsed :func:`add_runner_arguments` options (the edge fills in ``socket``:
    :func:`default_socket_path`); a forked child runs its flow run and returns that run's exit
    code."""
    _configure_runner_logging()
    runner = WarmRunner(args.socket, args.preload or PRELOAD)
    seconds = runner.preload()
    logger.info(
        "The warm runner imported %s in %.1f s and forks flow runs from %s.",
        ", ".join(runner.preload_modules),
        seconds,
        runner.socket_path,
    )
    forked = runner.serve()
    if forked is None:
        return 0
    return run_flow_run(forked)
