"""Execute docs/runbook.md top to bottom on this machine, as one operator on one host would.

Every fenced ``bash`` block runs, in order, in bash with the environment the earlier blocks
left (their exported and plain variables carry over), from the repository root. The production
values map to loopback through :data:`HOST_MAP` (a temporary folder for /etc and /var/lib, a
Prefect server on SQLite on a free port, the storage stand-in, the local callback receiver, one
GPU worker on the CPU); the blocks that cannot run here are listed in :data:`PLANS` with what is
done instead (``bash -n``, a YAML/JSON/INI parse) and why. Every triggered job must end
Completed with exactly one accepted ``completed`` callback, and the cancelled one Cancelled with
one ``failed`` callback coded ``CANCELLED``. The first failing block stops the rehearsal: its
text and output are printed and the exit status is 1.

    python scripts/rehearse_runbook.py [--keep]

The commands themselves come from the runbook, never from here: fix the runbook, not this map.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from devstack.storage_standin import DEV_JWT_SECRET, make_jwt  # noqa: E402
from genjobs.devserver.receiver import CallbackReceiver  # noqa: E402

RUNBOOK = REPO / "docs" / "runbook.md"
README = REPO / "README.md"
README_WHY = (
    "the README's demo renders three 1024x1024 images (minutes on a CPU) and its test command "
    "is the whole suite, which .ci/run runs itself"
)
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>\w*)[ \t]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)
NOT_SHELL = {  # what the other blocks are, and what is checked of them
    "ini": "a systemd unit for GPU hosts, parsed as INI",
    "yaml": "a Kubernetes manifest, parsed as YAML",
    "json": "a Kubernetes job template, parsed as JSON",
}
PLACEHOLDER = re.compile(r"<[a-z][a-z ]*>")
CALLBACK_SECRET = "rehearsal-callback-secret"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
SHELL_VARIABLES = re.compile(
    r"^(BASH.*|EUID|PPID|UID|SHELLOPTS|GROUPS|FUNCNAME|PIPESTATUS|DIRSTACK|RANDOM|SECONDS|"
    r"LINENO|_|HISTCMD|SRANDOM|EPOCHREALTIME|EPOCHSECONDS|COMP_.*|OPTERR|OPTIND|OPTARG|IFS|"
    r"PS[0-9]|SHLVL|PWD|OLDPWD|HOSTNAME|HOSTTYPE|MACHTYPE|OSTYPE|MAILCHECK|HISTFILE.*|"
    r"HISTSIZE|TERM|COLUMNS|LINES)$"
)
TIMEOUT_SECONDS = 240  # one block at most


@dataclass(frozen=True)
class Block:
    """One fenced code block of a document."""

    lang: str
    text: str
    line: int  # 1-based line of the opening fence
    document: str = "docs/runbook.md"

    def heading(self) -> str:
        return f"{self.document}:{self.line} ({self.lang})"


@dataclass(frozen=True)
class Plan:
    """What the rehearsal does with the ``nth`` bash block that contains ``marker``.

    ``action``: ``run`` (as written, after the host map and ``replace``), ``serve`` (a
    long-running command: started in the background, then the API must answer), ``syntax``
    (``bash -n`` only). ``until``: a ``run`` block is repeated (every 2 s, up to 180 s) until its
    output matches. ``before``/``after``: checks of the rehearsal around the block.
    """

    marker: str
    action: str
    why: str
    nth: int = 1
    replace: tuple[tuple[str, str], ...] = ()
    until: str | None = None
    before: str | None = None
    after: str | None = None


FIRST_JOB = "6f6adcca-04aa-4727-ac5f-3cdae725b000"
SECOND_JOB = "6f6adcca-04aa-4727-ac5f-3cdae725b001"
CANCELLED_JOB = "6f6adcca-04aa-4727-ac5f-3cdae725b002"
USER = "3f1b6a52-8c0d-4d8e-9b9a-2f4c7e1d0a11"

# Production values and where they point in the rehearsal (applied in order to every executed
# block; {tmp}, {port}, {storage}, {key}, {receiver}, {venv} are filled in at start).
HOST_MAP: tuple[tuple[str, str], ...] = (
    (
        '"postgresql+asyncpg://prefect:...@db:5432/prefect"',
        '"sqlite+aiosqlite:///{tmp}/prefect.db"',
    ),
    ("http://prefect.internal:4200/api", "http://127.0.0.1:{port}/api"),
    ("--host 0.0.0.0 --port 4200", "--host 127.0.0.1 --port {port}"),
    ('"admin:..."', '"$PREFECT_SERVER_API_AUTH_STRING"'),
    ("/etc/genjobs", "{tmp}/etc/genjobs"),
    ("/var/lib/genjobs", "{tmp}/var/lib/genjobs"),
    ("/opt/genjobs/.venv", "{venv}"),
    ("/opt/genjobs", str(REPO)),
    ("https://abcd.supabase.co/functions/v1/job-callback", "{receiver}"),
    ("https://abcd.supabase.co", "{storage}"),
    ("<service_role key, when the gateway checks the JWT>", "{key}"),
    ("<service_role key>", "{key}"),
    ("<JOB_CALLBACK_SECRET>", CALLBACK_SECRET),
)

PLANS: tuple[Plan, ...] = (
    Plan(
        "tests/deploy -m slow",
        "syntax",
        "the slow deploy tests and benchmarks take minutes; the test suite runs tests/deploy",
    ),
    Plan(
        "storage_server.sh start",
        "syntax",
        "the real storage server needs the test PostgreSQL; the rehearsal serves storage with the "
        "stand-in this section names (python3 -m devstack.storage_standin)",
    ),
    Plan("prefect-encryption-key", "run", "PostgreSQL becomes SQLite in the temporary folder"),
    Plan("prefect server start", "serve", "runs in the background until the rehearsal ends"),
    Plan(
        "ModelRegistry(",
        "run",
        "the CPU rehearsal leaves the model sources out, as the runbook says: tiny embedded models",
        replace=(
            ('    sdxl_source="/models/lustify-sdxl-v2.safetensors",\n', ""),
            ('    wan_source="/models/Wan2.1-T2V-1.3B-Diffusers",\n', ""),
        ),
    ),
    Plan(
        "backfill-legacy-buckets/backfill-nightly --param dry_run=true\n",
        "syntax",
        "the maintenance flows need the project database (GENJOBS_DATABASE_DSN) and a schedule id",
    ),
    Plan(
        "for gpu in",
        "run",
        "one GPU worker, on the CPU, warming SDXL only (the jobs are images); the venv is "
        "this interpreter",
        replace=(("for gpu in 0 1 2 3", "for gpu in 0"), ('"cuda:$gpu"', "cpu --families sdxl")),
    ),
    Plan(
        "/task_workers/filter",
        "run",
        "repeated until the GPU worker has subscribed",
        until=r'"task_keys"',
    ),
    Plan(
        "create_flow_run",
        "run",
        "one small image (1 image, 256x256) on the CPU",
        replace=(
            (
                '"num_images": 3, "resolution": "1024x1024"',
                '"num_images": 1, "resolution": "256x256"',
            ),
        ),
        before="register_jobs",
        after="first_job_completed",
    ),
    Plan(
        "prefect deployment run generate-job/sdxl",
        "run",
        "a second job id: the same job again would be refused as a re-run",
        replace=(("$JOB", f"${{JOB//{FIRST_JOB}/{SECOND_JOB}}}"),),
        after="second_job_completed",
    ),
    Plan(
        "prefect flow-run inspect <flow run id>",
        "run",
        "reads the first job's flow run",
        replace=(("<flow run id>", "{first_run}"),),
        until=r"COMPLETED",
    ),
    Plan(
        "prefect flow-run cancel <flow run id>",
        "run",
        "cancels a third job (1024x1024, 50 steps, triggered through the API) while it renders",
        replace=(("<flow run id>", "{cancel_run}"),),
        before="start_job_to_cancel",
        after="job_cancelled",
    ),
    Plan(
        "prefect flow-run cancel <flow run id>",
        "syntax",
        "the same command as section 9's, which ran",
        nth=2,
    ),
    Plan(
        "pip install prefect-aws",
        "syntax",
        "installs a package from the network and needs an S3 bucket",
    ),
    Plan(
        "cleanup-workspace/cleanup-daily",
        "syntax",
        "the maintenance flows need the project database (GENJOBS_DATABASE_DSN) and a schedule id",
    ),
    Plan(
        "backfill-legacy-buckets/backfill-nightly --param dry_run=true --param delete_sources",
        "syntax",
        "the maintenance flows need the project database (GENJOBS_DATABASE_DSN)",
    ),
    Plan(
        "rollback-backfill/rollback-manual",
        "syntax",
        "the rollback needs a backfill manifest, which needs the project database",
    ),
)


def extract_blocks(markdown: str, document: str = "docs/runbook.md") -> list[Block]:
    """Every fenced block in order, indentation of list items removed."""
    blocks = []
    for found in FENCE.finditer(markdown):
        indent = len(found["indent"])
        lines = [
            line[indent:] if line[:indent].strip() == "" else line
            for line in found["body"].splitlines()
        ]
        line = markdown.count("\n", 0, found.start()) + 1
        blocks.append(Block(found["lang"], "\n".join(lines) + "\n", line, document))
    return blocks


def plan_blocks(blocks: list[Block]) -> list[tuple[Block, Plan]]:
    """Pair every bash block with its plan (default: run as written); every plan must match."""
    planned: list[tuple[Block, Plan]] = []
    used: set[int] = set()
    for block in blocks:
        if block.lang != "bash":
            continue
        plan = Plan("", "run", "as written")
        for index, candidate in enumerate(PLANS):
            earlier = sum(1 for b, _ in planned if candidate.marker in b.text)
            if candidate.marker in block.text and earlier + 1 == candidate.nth:
                plan = candidate
                used.add(index)
                break
        planned.append((block, plan))
    unused = [p.marker for i, p in enumerate(PLANS) if i not in used]
    if unused:
        raise SystemExit(f"The runbook changed: no bash block matches {unused}; update PLANS.")
    return planned


def check_syntax(block: Block) -> None:
    """``bash -n`` for shell, a parse for YAML, JSON and INI (systemd units)."""
    if block.lang == "bash":
        text = PLACEHOLDER.sub("PLACEHOLDER", block.text)  # <flow run id>, <schedule id>
        done = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        if done.returncode != 0:
            raise BlockFailed(block, block.text, done.stderr, "bash -n refused it")
    try:
        if block.lang == "yaml":
            list(yaml.safe_load_all(block.text))
        elif block.lang == "json":
            json.loads(block.text)
        elif block.lang == "ini":
            configparser.ConfigParser(strict=False, interpolation=None).read_string(block.text)
    except (yaml.YAMLError, ValueError, configparser.Error) as error:
        raise BlockFailed(block, block.text, str(error), f"not valid {block.lang}") from None


def map_block(block: Block, plan: Plan, values: dict[str, str]) -> str:
    """The block as the rehearsal runs it: the plan's replacements, then :data:`HOST_MAP`, with
    ``{tmp}``, ``{port}``, ... filled in (other braces, as in ``${JOB//a/b}``, left alone)."""
    text = block.text
    for old, new in (*plan.replace, *HOST_MAP):
        text = text.replace(old, re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], m[0]), new))
    return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BlockFailed(Exception):
    def __init__(self, block: Block, script: str, output: str, why: str):
        super().__init__(why)
        self.block, self.script, self.output, self.why = block, script, output, why


@dataclass
class Rehearsal:
    tmp: Path
    port: int = field(default_factory=free_port)
    sessions: list[subprocess.Popen[bytes]] = field(default_factory=list)
    receiver: CallbackReceiver = field(init=False)
    values: dict[str, str] = field(default_factory=dict)
    count: int = 0

    def __post_init__(self) -> None:
        self.state = self.tmp / "state.sh"
        self.state.write_text("")
        self.receiver = CallbackReceiver(CALLBACK_SECRET, strict_jobs=True).start()
        venv = self.tmp / "venv"
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "activate").write_text(
            f'export PATH="{Path(sys.executable).parent}:$PATH"\n'
        )
        storage_port = free_port()
        self.spawn(
            "storage-standin",
            [sys.executable, "-m", "devstack.storage_standin", "--port", str(storage_port)],
        )
        self.values = {
            "tmp": str(self.tmp),
            "port": str(self.port),
            "storage": f"http://127.0.0.1:{storage_port}",
            "key": make_jwt(DEV_JWT_SECRET, exp_seconds=3600 * 24),
            "receiver": self.receiver.url,
            "venv": str(venv),
            "cancel_run": "",
            "first_run": "",
        }
        self.wait_for(f"http://127.0.0.1:{storage_port}/storage/v1/bucket", {401, 400, 200})

    # -- processes ----------------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        """The operator's shell: nothing of the caller's Prefect or genjobs settings or secrets."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "GENJOBS_"))
            and k not in {"SUPABASE_URL", "SUPABASE_SERVICE_KEY", "JOB_CALLBACK_SECRET"}
        }
        env.update(
            PREFECT_HOME=str(self.tmp / "prefect-home"),
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            PREFECT_UI_ENABLED="false",
        )
        return env

    def spawn(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as handle:
            popen = subprocess.Popen(
                args,
                cwd=REPO,
                env=self.environment(),
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.sessions.append(popen)
        return popen, log

    def stop(self) -> None:
        for popen in reversed(self.sessions):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for popen in reversed(self.sessions):
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
        self.receiver.stop()

    def wait_for(self, url: str, statuses: set[int], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=5).status_code in statuses:
                    return
            for popen in self.sessions:
                if popen.poll() is not None and popen.returncode != 0:
                    raise RuntimeError(f"a process of the rehearsal exited ({popen.args!r})")
            time.sleep(0.5)
        raise TimeoutError(f"{url} did not answer within {timeout} s")

    # -- blocks -------------------------------------------------------------------------------
    def shell(self, text: str) -> str:
        """The block inside the carried shell state, dumping the state again at its end."""
        dump = (
            "declare -p $(compgen -v | grep -Ev '" + SHELL_VARIABLES.pattern + "') "
            f"> {self.state}.next 2>/dev/null; mv {self.state}.next {self.state}"
        )
        return f"source {self.state}\nset -eo pipefail\n{text}\n{dump}\n"

    def execute(self, block: Block, plan: Plan) -> str:
        self.count += 1
        text = map_block(block, plan, self.values)
        name = f"block-{self.count:02d}"
        script = self.tmp / f"{name}.sh"
        script.write_text(self.shell(text))
        if plan.action == "serve":
            self.spawn(name, ["bash", str(script)])
            self.wait_for(f"http://127.0.0.1:{self.port}/api/health", {200, 401})
            return ""
        deadline = time.monotonic() + 180
        while True:
            popen, log = self.spawn(name, ["bash", str(script)])
            try:
                code = popen.wait(timeout=TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                raise BlockFailed(
                    block, text, log.read_text(errors="replace"), "timed out"
                ) from None
            output = log.read_text(errors="replace")
            if code != 0:
                raise BlockFailed(block, text, output, f"exit status {code}")
            if plan.until is None or re.search(plan.until, output):
                return output
            if time.monotonic() > deadline:
                raise BlockFailed(block, text, output, f"output never matched {plan.until!r}")
            time.sleep(2)

    # -- the API as the operator's shell reaches it -------------------------------------------
    def api(self) -> httpx.Client:
        auth = self.shell_value("PREFECT_API_AUTH_STRING")
        user, _, password = auth.partition(":")
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}/api", auth=(user, password), timeout=30
        )

    def shell_value(self, name: str) -> str:
        done = subprocess.run(
            ["bash", "-c", f'source {self.state}; printf %s "${name}"'],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    def flow_runs_of_job(self, job_id: str) -> list[dict[str, Any]]:
        with self.api() as client:
            runs = client.post("/flow_runs/filter", json={"limit": 200}).json()
        return [r for r in runs if (r.get("parameters") or {}).get("job", {}).get("id") == job_id]

    def wait_for_job(self, job_id: str, state: str, callback: str, timeout: float = 180) -> None:
        """The job's one flow run ends in ``state`` and the receiver accepted one callback."""
        deadline = time.monotonic() + timeout
        while True:
            runs = self.flow_runs_of_job(job_id)
            accepted = self.receiver.accepted(job_id)
            if runs and all(r["state"]["type"] in FINAL_STATES for r in runs) and accepted:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id}: runs {[r['state']['type'] for r in runs]}, "
                    f"{len(accepted)} callback(s) after {timeout} s"
                )
            time.sleep(1)
        time.sleep(2)  # a second callback, were one sent, would arrive by now
        accepted = self.receiver.accepted(job_id)
        states = [r["state"]["type"] for r in self.flow_runs_of_job(job_id)]
        assert states == [state], f"job {job_id}: flow runs {states}, expected [{state}]"
        statuses = [p["status"] for p in accepted]
        assert statuses == [callback], f"job {job_id}: callbacks {statuses}, expected [{callback}]"
        print(f"  job {job_id}: one flow run {state}, one accepted {callback} callback")

    def check_assets(self, job_id: str) -> None:
        rows = self.receiver.assets(job_id)
        assert len(rows) == 1, f"job {job_id}: {len(rows)} asset rows, expected 1"
        path = rows[0]["temp_storage_path"]
        assert path == f"{USER}/{job_id}/0.png", path
        answer = httpx.get(
            f"{self.values['storage']}/storage/v1/object/workspace-temp/{path}",
            headers={"Authorization": f"Bearer {self.values['key']}"},
        )
        answer.raise_for_status()
        assert answer.content.startswith(b"\x89PNG"), "the stored asset is not a PNG"
        assert len(answer.content) == rows[0]["asset_metadata"]["file_size_bytes"], "size differs"
        print(f"  job {job_id}: {path} stored, {len(answer.content)} bytes as reported")

    # hooks named by Plan.before / Plan.after
    def register_jobs(self, block: Block) -> None:
        """The jobs rows, as queue-job inserts them before it triggers a run."""
        if FIRST_JOB not in block.text or USER not in block.text:
            raise BlockFailed(block, block.text, "", "its example job is not FIRST_JOB of USER")
        for job_id in (FIRST_JOB, SECOND_JOB, CANCELLED_JOB):
            self.receiver.register_job(job_id, USER)

    def first_job_completed(self, block: Block) -> None:
        self.wait_for_job(FIRST_JOB, "COMPLETED", "completed")
        self.check_assets(FIRST_JOB)
        self.values["first_run"] = self.flow_runs_of_job(FIRST_JOB)[0]["id"]

    def second_job_completed(self, block: Block) -> None:
        self.wait_for_job(SECOND_JOB, "COMPLETED", "completed")
        self.check_assets(SECOND_JOB)

    def start_job_to_cancel(self, block: Block) -> None:
        """A job long enough to cancel while it renders: 1024x1024, 50 steps."""
        job = {
            "id": CANCELLED_JOB,
            "user_id": USER,
            "type": "sdxl_image_fast",
            "prompt": "a lighthouse at dusk",
            "config": {"num_images": 1, "resolution": "1024x1024", "num_inference_steps": 50},
        }
        with self.api() as client:
            deployment = client.get("/deployments/name/generate-job/sdxl").json()["id"]
            run = client.post(
                f"/deployments/{deployment}/create_flow_run",
                json={"parameters": {"job": job}, "idempotency_key": CANCELLED_JOB},
            ).json()
            deadline = time.monotonic() + 120
            while client.get(f"/flow_runs/{run['id']}").json()["state"]["type"] != "RUNNING":
                if time.monotonic() > deadline:
                    raise AssertionError("the job to cancel never started running")
                time.sleep(0.5)
        time.sleep(3)  # into its render
        self.values["cancel_run"] = run["id"]

    def job_cancelled(self, block: Block) -> None:
        self.wait_for_job(CANCELLED_JOB, "CANCELLED", "failed")
        code = self.receiver.accepted(CANCELLED_JOB)[0]["metadata"].get("error_code")
        assert code == "CANCELLED", f"the cancelled job's callback says {code!r}"
        print(f"  job {CANCELLED_JOB}: its failed callback says CANCELLED")

    def hook(self, name: str | None, block: Block) -> None:
        if name:
            getattr(self, name)(block)


@contextlib.contextmanager
def rehearsal(keep: bool) -> Iterator[Rehearsal]:
    tmp = Path(tempfile.mkdtemp(prefix="genjobs-rehearsal-"))
    stage = None
    try:
        stage = Rehearsal(tmp)
        yield stage
    finally:
        if stage is not None:
            stage.stop()
        if keep:
            print(f"Logs and state kept in {tmp}.")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def report(failed: BlockFailed) -> int:
    print(f"FAILED {failed.block.heading()}: {failed.why}\n--- block as run")
    print(failed.script.rstrip())
    print(f"--- output\n{failed.output.rstrip()}")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    try:
        for block in extract_blocks(README.read_text(), "README.md"):
            if block.lang == "bash":
                check_syntax(block)
                print(f"checked {block.heading()}: syntax only, {README_WHY}")
    except BlockFailed as failed:
        return report(failed)
    blocks = extract_blocks(RUNBOOK.read_text())
    planned = dict((b.line, p) for b, p in plan_blocks(blocks))
    started = time.monotonic()
    with rehearsal(args.keep) as stage:
        try:
            for block in blocks:
                plan = planned.get(block.line)
                if plan is None or plan.action == "syntax":
                    check_syntax(block)
                    reason = plan.why if plan else NOT_SHELL.get(block.lang, "not a shell block")
                    print(f"checked {block.heading()}: syntax only, {reason}")
                    continue
                stage.hook(plan.before, block)
                began = time.monotonic()
                stage.execute(block, plan)
                print(f"ran {block.heading()} in {time.monotonic() - began:.1f} s: {plan.why}")
                stage.hook(plan.after, block)
        except BlockFailed as failed:
            return report(failed)
        except (AssertionError, RuntimeError, TimeoutError) as failed:
            print(f"FAILED: {failed}")
            for log in sorted(stage.tmp.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
            return 1
    print(f"The runbook rehearsed in {time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
