"""The GPU worker's reliance on Prefect's private task-worker internals, pinned.

GpuTaskWorker overrides private members of prefect.task_worker.TaskWorker and drives
prefect.client.subscriptions.Subscription itself; neither is public API, so a Prefect release may
change them without notice. pyproject.toml pins Prefect to the version these members were read
against, and these tests fail when the installed Prefect differs from that pin, when the source of
any member the worker relies on changes, or when the worker starts relying on a private member
recorded nowhere here (docs/deployment.md, "Prefect pin").
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import re
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import prefect
import prefect.server.api.task_runs
import pytest
from prefect.client.subscriptions import Subscription
from prefect.task_worker import TaskWorker

REPO_ROOT = Path(__file__).resolve().parents[2]
PINNED_PREFECT = "3.9.1"

# sha256 of inspect.getsource of each member, read on Prefect 3.9.1.
RELIED_ON: dict[tuple[type, str], str] = {
    # The limiter, the runs task group and the client are set up here.
    (TaskWorker, "__init__"): "6b5ee0ef73440cd09d47e645c694a825852c4d036b150e24b459af5fa696b0a0",
    (TaskWorker, "__aenter__"): "f2c6d28a22f7941e2dfe273ccff1269e33a41cf9c17dc8e3ba9f269aecdc950d",
    # Calls _subscribe_to_task_scheduling, the loop GpuTaskWorker replaces.
    (TaskWorker, "astart"): "33257b8c076fff7bf96302493997175b68a7efa9789f4b68d9f1c7c26013c534",
    (
        TaskWorker,
        "_acquire_token",
    ): "ed0e297ef995e50e9a13f8847c7f2fa727314d5b6e07c90d402e9f461c53e9d0",
    (
        TaskWorker,
        "_release_token",
    ): "c083960f6d8533c5c21bd41f72b8c7efd282eec05edc337b97c7087020147a5e",
    (TaskWorker, "_subscribe_to_task_scheduling"): (
        "9aebe7deb27abdad3895b5553b4f70380345f2305b5ee19f72dbe2afe5f8830c"
    ),
    (TaskWorker, "_safe_submit_scheduled_task_run"): (
        "1e19f40ca8c6311921ed5c8be019bb43c4c690706cf69194936a0d5f79c2418d"
    ),
    (TaskWorker, "client_id"): "ad8a737c4b31452fa7c8529d865f3aa941eba554c0e09a2d5e008bc7e7c89c82",
    (Subscription, "__init__"): "1d9646ea938ae2baba804413f8e0973a50ad5fbbc8efdcd6d6bbca1f41f393ce",
    (Subscription, "__anext__"): "4284bf81de41cf98553e15ad66dbdc6e9badcb258690a0cc8a3f8e378f6b2d52",
    (Subscription, "_ensure_connected"): (
        "e23cdfaeabb483d0f57b386b9e4c491d6ae16e40e9c13864fd3afc0b733ed62c"
    ),
    (Subscription, "websocket"): "a09df4bab8934869467e19d64d1374d4b8f57f650041093de20713cdb32541b4",
}

# The attributes TaskWorker.__init__ sets on Prefect 3.9.1; GpuTaskWorker reads the ones marked.
INIT_ATTRIBUTES = {
    "tasks",
    "task_keys",  # the subscription's keys
    "_started_at",
    "stopping",  # the subscription loop's condition
    "_client",
    "_exit_stack",
    "_runs_task_group",  # where each taken run is started
    "_executor",
    "_limiter",  # whether a run may be taken
    "in_flight_task_runs",
    "finished_task_runs",
}

RECHECK = (
    "Before moving the Prefect pin in pyproject.toml, re-read the new source of the members "
    "recorded in tests/architecture/test_prefect_private_api.py against GpuTaskWorker: the "
    "subscription loop it replaces (_subscribe_to_task_scheduling, astart), the token and limiter "
    "handling (_acquire_token, _release_token, _limiter), _safe_submit_scheduled_task_run and the "
    "runs task group, and Subscription's connect, acknowledge and websocket handling; run "
    "tests/deploy; then record the new hashes and attributes here."
)


def gpu_worker_module() -> ModuleType:
    """The module that defines GpuTaskWorker."""
    return importlib.import_module("entrypoints.gpu_worker")


def source_of(owner: type, name: str) -> str:
    member: Any = inspect.getattr_static(owner, name)
    if isinstance(member, property):
        member = member.fget
    return inspect.getsource(member)


def init_attributes(owner: type) -> set[str]:
    """The names ``owner.__init__`` assigns on ``self``."""
    tree = ast.parse(inspect.cleandoc("\n" + source_of(owner, "__init__")))
    names = set()
    for node in ast.walk(tree):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            ):
                names.add(target.attr)
    return names


def test_pyproject_pins_the_installed_prefect() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if re.match(r"prefect\b", d)]
    assert pins == [f"prefect=={PINNED_PREFECT}"], f"{pins}: {RECHECK}"
    assert prefect.__version__ == PINNED_PREFECT, (
        f"Prefect {prefect.__version__} is installed, the private members were read on "
        f"{PINNED_PREFECT}. {RECHECK}"
    )


@pytest.mark.parametrize(
    ("owner", "name"), list(RELIED_ON), ids=[f"{o.__name__}.{n}" for o, n in RELIED_ON]
)
def test_a_relied_upon_prefect_member_is_unchanged(owner: type, name: str) -> None:
    digest = hashlib.sha256(source_of(owner, name).encode()).hexdigest()
    assert digest == RELIED_ON[owner, name], (
        f"{owner.__module__}.{owner.__name__}.{name} changed in Prefect {prefect.__version__}. "
        f"{RECHECK}"
    )


def test_task_worker_sets_the_attributes_the_gpu_worker_reads() -> None:
    assert init_attributes(TaskWorker) == INIT_ATTRIBUTES, RECHECK


def test_the_scheduled_task_run_subscription_is_served_at_the_gpu_worker_path() -> None:
    router = prefect.server.api.task_runs.router
    paths = {getattr(route, "path", None) for route in router.routes}
    assert gpu_worker_module().SUBSCRIPTION_PATH in paths, RECHECK


def test_every_private_task_worker_member_the_gpu_worker_uses_is_recorded() -> None:
    """A new reliance on a private TaskWorker member fails here until it is recorded above."""
    worker_class = gpu_worker_module().GpuTaskWorker
    tree = ast.parse(inspect.getsource(worker_class))
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }
    own = set(vars(worker_class)) | init_attributes(worker_class)
    inherited = {
        name
        for name in used - own
        if name.startswith("_") and (hasattr(TaskWorker, name) or name in INIT_ATTRIBUTES)
    }
    overridden = {
        name for name in vars(worker_class) if name.startswith("_") and hasattr(TaskWorker, name)
    } - {"__module__", "__qualname__", "__doc__", "__firstlineno__", "__static_attributes__"}
    recorded = {name for owner, name in RELIED_ON if owner is TaskWorker} | INIT_ATTRIBUTES
    assert (inherited | overridden) <= recorded, (
        f"GpuTaskWorker relies on {sorted((inherited | overridden) - recorded)}, recorded nowhere "
        f"in tests/architecture/test_prefect_private_api.py: record its source hash there."
    )
