"""Run instances of the real Supabase Storage server on loopback, for tests and development.

Usage::

    python3 -m devstack.storage_server build
    python3 -m devstack.storage_server start [--instance DIR]
    eval "$(python3 -m devstack.storage_server env [--instance DIR])"
    python3 -m devstack.storage_server stop [--instance DIR]

``build`` builds the server into the cache (see :mod:`devstack.storage_build`). ``start`` builds
if needed, then, for one instance: a fresh database on the test PostgreSQL
(GENJOBS_TEST_PG_DSN, else the server ``scripts/start_postgres.sh`` starts or reuses), what a
Supabase database ships with (:func:`shim_sql`), the server itself on a free port
with the file backend in the instance folder and a random JWT secret, the project's migrations
(bucket ``workspace-temp`` and its row policies), and the ``/storage/v1`` proxy in front of it.
What it started (pids, ports, keys, database) is written to ``state.json`` in the instance
folder; ``env`` prints it as export lines and ``stop`` ends exactly those processes and drops
that database. The instance folder is ``--instance``, else GENJOBS_STORAGE_INSTANCE, else
``.genjobs/storage`` in the repository; several instances side by side each need their own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from devstack import storage_build
from devstack.databases import create_database, drop_database
from devstack.tokens import role_key

logger = logging.getLogger(__name__)

REPO = storage_build.REPO
SHIM_SQL = Path(__file__).with_name("storage_shim.sql")
BOOTSTRAP_STORAGE_MARKER = "-- storage ---"
BOOTSTRAP_REALTIME_MARKER = "-- Realtime ---"
STATE_NAME = "state.json"
START_TIMEOUT_S = 180.0

ENV_URL = "GENJOBS_TEST_SUPABASE_URL"
ENV_SERVICE_KEY = "GENJOBS_TEST_STORAGE_SERVICE_KEY"
ENV_ANON_KEY = "GENJOBS_TEST_STORAGE_ANON_KEY"
ENV_JWT_SECRET = "GENJOBS_TEST_STORAGE_JWT_SECRET"
ENV_DSN = "GENJOBS_TEST_STORAGE_DSN"
ENV_UPSTREAM = "GENJOBS_TEST_STORAGE_UPSTREAM_URL"


@dataclass
class Instance:
    """What one ``start`` started; saved as ``state.json`` in the instance folder."""

    folder: str
    database: str
    dsn: str
    admin_dsn: str
    jwt_secret: str
    service_key: str
    anon_key: str
    server_port: int
    admin_port: int
    proxy_port: int
    server_pid: int = 0
    server_started: str = ""
    proxy_pid: int = 0
    proxy_started: str = ""

    @property
    def url(self) -> str:
        """The proxy: what a client treats as SUPABASE_URL."""
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def upstream_url(self) -> str:
        """The server itself, without the ``/storage/v1`` prefix."""
        return f"http://127.0.0.1:{self.server_port}"

    def env(self) -> dict[str, str]:
        return {
            ENV_URL: self.url,
            ENV_SERVICE_KEY: self.service_key,
            ENV_ANON_KEY: self.anon_key,
            ENV_JWT_SECRET: self.jwt_secret,
            ENV_DSN: self.dsn,
            ENV_UPSTREAM: self.upstream_url,
        }


def default_instance_dir() -> Path:
    override = os.environ.get("GENJOBS_STORAGE_INSTANCE")
    return Path(override) if override else REPO / ".genjobs" / "storage"


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot, which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _postgres_admin_dsn() -> str:
    dsn = os.environ.get("GENJOBS_TEST_PG_DSN")
    if dsn:
        return dsn
    script = REPO / "scripts" / "start_postgres.sh"
    output = subprocess.run(
        ["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    for line in output.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and words[1].startswith("GENJOBS_TEST_PG_DSN="):
            return words[1].split("=", 1)[1]
    raise RuntimeError(f"{script} printed no GENJOBS_TEST_PG_DSN")


def shim_sql() -> str:
    """What a Supabase database has before its storage server first starts: the test bootstrap
    (supabase/test_bootstrap.sql) without its storage part, then ``storage_shim.sql``."""
    from genjobs.db.migrations import bootstrap_file

    text = bootstrap_file().read_text()
    start, end = text.find(BOOTSTRAP_STORAGE_MARKER), text.find(BOOTSTRAP_REALTIME_MARKER)
    if not 0 <= start < end:
        raise RuntimeError(
            f"{bootstrap_file()} no longer has its '{BOOTSTRAP_STORAGE_MARKER}' and "
            f"'{BOOTSTRAP_REALTIME_MARKER}' sections"
        )
    return text[:start] + text[end:] + SHIM_SQL.read_text()


def _create_database(admin_dsn: str, name: str) -> str:
    import psycopg

    dsn = _as_url(create_database(admin_dsn, name))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(shim_sql().encode())
    return dsn


def _as_url(dsn: str) -> str:
    """The DSN as a postgresql:// URL, which is what the server's DATABASE_URL takes."""
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(dsn)
    user = parts.get("user", "postgres")
    password = f":{parts['password']}" if parts.get("password") else ""
    host = parts.get("host", "127.0.0.1")
    port = parts.get("port", "5432")
    return f"postgresql://{user}{password}@{host}:{port}/{parts['dbname']}"


def server_environment(instance: Instance, data_dir: Path) -> dict[str, str]:
    """The server's environment: single tenant, file backend, HS256 keys, queue off."""
    database_url = _as_url(instance.dsn)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "SERVER_HOST": "127.0.0.1",
        "SERVER_PORT": str(instance.server_port),
        "SERVER_ADMIN_PORT": str(instance.admin_port),
        "TENANT_ID": "stub",
        "PROJECT_REF": "stub",
        "REGION": "local",
        "SERVER_REGION": "local",
        "STORAGE_BACKEND": "file",
        "STORAGE_FILE_BACKEND_PATH": str(data_dir),
        "STORAGE_FILE_ETAG_ALGORITHM": "md5",
        "STORAGE_S3_BUCKET": "stub",
        "GLOBAL_S3_BUCKET": "stub",
        "STORAGE_S3_REGION": "local",
        "DATABASE_URL": database_url,
        "DB_INSTALL_ROLES": "true",
        "DB_ANON_ROLE": "anon",
        "DB_SERVICE_ROLE": "service_role",
        "DB_AUTHENTICATED_ROLE": "authenticated",
        "DB_SUPER_USER": "postgres",
        "DB_ALLOW_MIGRATION_REFRESH": "true",
        "AUTH_JWT_SECRET": instance.jwt_secret,
        "PGRST_JWT_SECRET": instance.jwt_secret,
        "AUTH_JWT_ALGORITHM": "HS256",
        "ANON_KEY": instance.anon_key,
        "SERVICE_KEY": instance.service_key,
        "UPLOAD_FILE_SIZE_LIMIT": "524288000",
        "UPLOAD_FILE_SIZE_LIMIT_STANDARD": "52428800",
        "TUS_URL_PATH": "/upload/resumable",
        "REQUEST_ALLOW_X_FORWARDED_PATH": "true",
        "IMAGE_TRANSFORMATION_ENABLED": "false",
        "RATE_LIMITER_ENABLED": "false",
        "PG_QUEUE_ENABLE": "false",
        "MULTI_TENANT": "false",
        "IS_MULTITENANT": "false",
        "LOGFLARE_ENABLED": "false",
        "OTEL_METRICS_ENABLED": "false",
        "PROMETHEUS_METRICS_ENABLED": "false",
        "DEFAULT_METRICS_ENABLED": "false",
        "NODE_ENV": "development",
        "VERSION": storage_build.VERSION,
    }


def _spawn(args: list[str], *, cwd: Path, env: dict[str, str], log_path: Path) -> int:
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process.pid


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        finished = 0
    if finished == pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        if state.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _wait_http(url: str, pid: int, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if not _alive(pid):
            raise RuntimeError(f"process {pid} exited before {url} answered; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s; see {log_path}")
        time.sleep(0.5)


def save(instance: Instance) -> None:
    path = Path(instance.folder) / STATE_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(instance), indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


def load(folder: Path) -> Instance | None:
    path = folder / STATE_NAME
    if not path.is_file():
        return None
    return Instance(**json.loads(path.read_text()))


def start(folder: Path | None = None) -> Instance:
    """Starts an instance in ``folder`` (see the module's docstring) and returns it.

    Raises:
        RuntimeError: The folder already holds a running instance, or a part failed to start
            (what was started is stopped again).
    """
    folder = (folder or default_instance_dir()).resolve()
    existing = load(folder)
    if existing is not None:
        if _alive(existing.server_pid) and existing.server_started == _start_time(
            existing.server_pid
        ):
            raise RuntimeError(f"{folder} already holds a running instance; stop it first")
        stop(folder)
    build = storage_build.build()
    folder.mkdir(parents=True, exist_ok=True)
    data_dir = folder / "data"
    data_dir.mkdir(exist_ok=True)
    admin_dsn = _postgres_admin_dsn()
    database = f"genjobs_storage_{secrets.token_hex(6)}"
    jwt_secret = secrets.token_urlsafe(48)
    instance = Instance(
        folder=str(folder),
        database=database,
        dsn="",
        admin_dsn=admin_dsn,
        jwt_secret=jwt_secret,
        service_key=role_key("service_role", jwt_secret),
        anon_key=role_key("anon", jwt_secret),
        server_port=free_port(),
        admin_port=free_port(),
        proxy_port=free_port(),
    )
    save(instance)
    started = time.monotonic()
    try:
        instance.dsn = _create_database(admin_dsn, database)
        save(instance)
        env = server_environment(instance, data_dir)
        env["PATH"] = f"{build.node_bin.parent}{os.pathsep}{env['PATH']}"
        server_log = folder / "server.log"
        instance.server_pid = _spawn(
            [str(build.node_bin), str(build.entry_point)],
            cwd=build.source_dir,
            env=env,
            log_path=server_log,
        )
        instance.server_started = _start_time(instance.server_pid)
        save(instance)
        _wait_http(
            f"{instance.upstream_url}/status", instance.server_pid, server_log, START_TIMEOUT_S
        )
        from genjobs.db.migrations import apply_migrations

        apply_migrations(instance.dsn, bootstrap=False)
        proxy_log = folder / "proxy.log"
        proxy_env = dict(os.environ)
        proxy_env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        instance.proxy_pid = _spawn(
            [
                sys.executable,
                "-m",
                "devstack.storage_proxy",
                "--upstream",
                instance.upstream_url,
                "--port",
                str(instance.proxy_port),
            ],
            cwd=REPO,
            env=proxy_env,
            log_path=proxy_log,
        )
        instance.proxy_started = _start_time(instance.proxy_pid)
        save(instance)
        _wait_http(f"{instance.url}/storage/v1/status", instance.proxy_pid, proxy_log, 30)
    except BaseException:
        logger.error("Starting the storage instance in %s failed; stopping what started.", folder)
        stop(folder)
        raise
    logger.info(
        "Storage instance in %s is up in %.1f s: %s (server %s, database %s).",
        folder,
        time.monotonic() - started,
        instance.url,
        instance.upstream_url,
        database,
    )
    return instance


def _terminate(pid: int, started: str, what: str) -> None:
    if pid <= 0:
        return
    if not _alive(pid) or _start_time(pid) != started:
        logger.info("The %s (pid %d) is no longer running.", what, pid)
        return
    # Each process was started in a session of its own, so its group is exactly what it spawned.
    group = os.getpgid(pid) == pid
    kill = os.killpg if group else os.kill
    kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        logger.warning("The %s (pid %d) ignored SIGTERM; killing it.", what, pid)
        with contextlib.suppress(ProcessLookupError):
            kill(pid, signal.SIGKILL)
    logger.info("Stopped the %s (pid %d).", what, pid)


def stop(folder: Path | None = None) -> bool:
    """Stops what ``start`` recorded in ``folder``: proxy, server, database, file data.

    Returns:
        False when the folder holds no instance state (nothing was stopped).
    """
    folder = (folder or default_instance_dir()).resolve()
    instance = load(folder)
    if instance is None:
        logger.info("No storage instance state in %s; nothing to stop.", folder)
        return False
    _terminate(instance.proxy_pid, instance.proxy_started, "storage proxy")
    _terminate(instance.server_pid, instance.server_started, "storage server")
    if instance.dsn or instance.database:
        try:
            drop_database(instance.admin_dsn, instance.database)
            logger.info("Dropped database %s.", instance.database)
        except Exception as exc:  # the PostgreSQL server may already be gone
            logger.warning("Could not drop database %s: %s", instance.database, exc)
    shutil.rmtree(folder / "data", ignore_errors=True)
    (folder / STATE_NAME).unlink(missing_ok=True)
    return True


def env_lines(instance: Instance) -> str:
    return "".join(
        f"export {name}={shlex.quote(value)}\n" for name, value in instance.env().items()
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The real Supabase Storage server on loopback.")
    parser.add_argument("command", choices=["build", "start", "stop", "env"])
    parser.add_argument(
        "--instance",
        type=Path,
        default=None,
        help="instance folder (default: $GENJOBS_STORAGE_INSTANCE or .genjobs/storage)",
    )
    parser.add_argument(
        "--if-available",
        action="store_true",
        help="start: when there is neither a build nor a tarball, say so and start nothing",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="storage_server: %(message)s", stream=sys.stderr)
    if args.command == "build":
        started = time.monotonic()
        found = storage_build.build()
        logger.info("Build ready in %s (%.1f s).", found.source_dir, time.monotonic() - started)
        return 0
    if args.command == "start":
        if args.if_available and storage_build.existing_build() is None:
            tarball = storage_build.default_tarball()
            if not tarball.is_file():
                logger.warning(
                    "No storage server build in %s and no tarball at %s; starting nothing.",
                    storage_build.default_cache(),
                    tarball,
                )
                return 0
        sys.stdout.write(env_lines(start(args.instance)))
        return 0
    if args.command == "stop":
        stop(args.instance)
        return 0
    found_instance = load((args.instance or default_instance_dir()).resolve())
    if found_instance is None:
        logger.error("No storage instance state in %s.", args.instance or default_instance_dir())
        return 1
    sys.stdout.write(env_lines(found_instance))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
