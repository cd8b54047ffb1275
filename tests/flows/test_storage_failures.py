"""Storage failing under a job: every run still ends with exactly one failed callback naming the
storage error, and its undo removes only what it can prove it stored. The real ``storage3``
client speaks HTTP to the local Supabase Storage stand-in; a real Prefect API; the receiver."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.storage_standin import FaultKind, StorageStandIn, make_jwt
from flows.generate import generate_job
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.runtime import Runtime, build_runtime, set_runtime
from tests.conftest import make_settings
from tests.flows.helpers import USER_ID, sdxl_job, task_run_counts

pytestmark = pytest.mark.usefixtures("prefect_api")
JWT_SECRET = "storage-failure-tests-jwt-secret-0123456789"
BUCKET = "workspace-temp"


@pytest.fixture(scope="module")
def standin() -> Iterator[StorageStandIn]:
    with StorageStandIn(JWT_SECRET) as running:
        yield running


@pytest.fixture
def install(
    standin: StorageStandIn,
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
) -> Iterator[Callable[..., Runtime]]:
    """Installs a runtime on the stand-in (with one empty bucket); overrides tune settings."""
    standin.reset()
    standin.create_bucket(BUCKET)

    def runtime_with(**overrides: Any) -> Runtime:
        values = {
            "supabase_url": standin.url,
            "supabase_service_key": standin.token(),
            "storage_timeout_seconds": 60.0,
            **overrides,
        }
        runtime = build_runtime(
            make_settings(tmp_path, model_cache, receiver, callback_secret, **values)
        )
        set_runtime(runtime)
        return runtime

    yield runtime_with
    set_runtime(None)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def one_failed_callback(receiver: CallbackReceiver, job: dict[str, Any], code: str) -> str:
    """The one callback of the job: failed, with ``code``; returns its message."""
    (payload,) = receiver.accepted(job["id"])
    assert (payload["status"], payload["assets"]) == ("failed", [])
    assert payload["metadata"]["error_code"] == code
    return str(payload["error_message"])


@pytest.mark.parametrize(
    ("storage", "code", "renders"),
    [
        ("unreachable", "STORAGE_UNAVAILABLE", 0),
        ("wrong service key", "STORAGE_ACCESS_DENIED", 0),
        ("missing bucket", "BUCKET_NOT_FOUND", 1),
    ],
)
async def test_storage_refusing_every_request_ends_the_run_with_one_failed_callback(
    install: Callable[..., Runtime],
    standin: StorageStandIn,
    receiver: CallbackReceiver,
    tmp_path: Path,
    storage: str,
    code: str,
    renders: int,
) -> None:
    overrides = {
        "unreachable": {"supabase_url": closed_port_url()},
        "wrong service key": {"supabase_service_key": make_jwt("another-projects-secret-012345")},
        "missing bucket": {"bucket": "no-such-bucket"},
    }[storage]
    install(**overrides)
    job = sdxl_job(num_images=1)

    state = await generate_job(job, return_state=True)

    assert state.is_failed()
    message = one_failed_callback(receiver, job, code)
    assert message in str(state.message)  # the run fails with its own error, not the undo's
    counts = await task_run_counts(state.state_details.flow_run_id)
    assert counts["check"] == 1 and counts["render"] == renders
    assert standin.object_names(BUCKET) == []
    assert not list(tmp_path.glob("uploads/*"))  # no journal outlives the run


@pytest.mark.parametrize(
    ("fault", "code"), [("403", "STORAGE_ACCESS_DENIED"), ("drop", "STORAGE_UNAVAILABLE")]
)
async def test_storage_failing_after_the_check_keeps_what_the_undo_cannot_check(
    install: Callable[..., Runtime],
    standin: StorageStandIn,
    receiver: CallbackReceiver,
    tmp_path: Path,
    fault: str,
    code: str,
) -> None:
    install()
    job = sdxl_job(num_images=3)
    prefix = f"{USER_ID}/{job['id']}"
    kind: FaultKind = "status" if fault == "403" else "drop"
    # Asset 1 cannot be stored; then no object can be read or removed any more.
    standin.inject_fault(
        kind, count=50, status=403, method="POST", path_prefix=f"/object/{BUCKET}/{prefix}/1.png"
    )
    standin.inject_fault(kind, count=50, status=403, method="GET", path_prefix="/object/")
    standin.inject_fault(kind, count=50, status=403, method="DELETE", path_prefix="/object/")

    state = await generate_job(job, return_state=True)

    assert state.is_failed()
    message = one_failed_callback(receiver, job, code)
    assert f"{prefix}/1.png" in message  # the upload's error, not the undo's
    assert standin.object_names(BUCKET) == [
        f"{prefix}/{i}.{ext}" for i in (0, 2) for ext in ("png", "thumb.webp")
    ]
    assert not [r for r in standin.requests if r.method == "DELETE" and r.fault is None]
    assert not list(tmp_path.glob("uploads/*"))


async def test_a_run_failing_in_its_upload_removes_exactly_what_it_stored_with_its_bytes(
    install: Callable[..., Runtime], standin: StorageStandIn, receiver: CallbackReceiver
) -> None:
    install()
    job = sdxl_job(num_images=3)
    prefix = f"{USER_ID}/{job['id']}"
    upload_of_2 = f"/object/{BUCKET}/{prefix}/2.png"
    # Asset 2's first upload is held (then dropped), its retry refused for good; while it is
    # held, another writer replaces asset 0 and adds an object of its own to the folder.
    standin.inject_fault("hang", method="POST", path_prefix=upload_of_2, hang_seconds=120)
    standin.inject_fault("status", count=10, status=403, method="POST", path_prefix=upload_of_2)
    stored_first = {f"{prefix}/{i}.{ext}" for i in (0, 1) for ext in ("png", "thumb.webp")}

    async def other_writer() -> None:
        deadline = time.monotonic() + 120
        while standin.pending_faults == 11 or not stored_first <= set(standin.object_names(BUCKET)):
            assert time.monotonic() < deadline, "the uploads never reached the held request"
            await asyncio.sleep(0.02)
        standin.put_object(BUCKET, f"{prefix}/0.png", b"rewritten by another writer", "image/png")
        standin.put_object(BUCKET, f"{prefix}/mine.png", b"another writer's", "image/png")
        standin.release_hangs()

    state, _ = await asyncio.gather(generate_job(job, return_state=True), other_writer())

    assert state.is_failed()
    one_failed_callback(receiver, job, "STORAGE_ACCESS_DENIED")
    assert standin.object_names(BUCKET) == [f"{prefix}/0.png", f"{prefix}/mine.png"]
    kept = standin.get_object(BUCKET, f"{prefix}/0.png")
    assert kept is not None and kept.data == b"rewritten by another writer"
