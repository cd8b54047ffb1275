"""Storage failing under a job: every run still ends with exactly one failed callback naming the
storage error, and its undo removes only what it can prove it stored. The real ``storage3``
client speaks HTTP to the real storage server (v1.70.6 on loopback) through a ``/storage/v1``
proxy of the test's own that plays the failing gateway; a real Prefect API; the receiver."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from devstack.storage_proxy import StorageProxy
from devstack.tokens import role_key
from flows.generate import generate_job
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.settings import Settings
from tests.conftest import make_settings
from tests.flows.helpers import USER_ID, sdxl_job, settled_task_runs
from tests.real_storage import WORKSPACE_BUCKET, RealStorage
from tests.settings_env import install_settings

pytestmark = pytest.mark.usefixtures("prefect_api")
BUCKET = WORKSPACE_BUCKET


@pytest.fixture
def install(
    real_storage: RealStorage,
    fault_proxy: StorageProxy,
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Settings]]:
    """Installs settings for the real server through the fault proxy in the environment (what
    the flow reads at its entry); overrides tune them."""

    def settings_with(**overrides: Any) -> Settings:
        values = {
            "supabase_url": fault_proxy.url,
            "supabase_service_key": real_storage.service_key,
            "storage_timeout_seconds": 60.0,
            **overrides,
        }
        settings = make_settings(tmp_path, model_cache, receiver, callback_secret, **values)
        return install_settings(monkeypatch, settings)

    yield settings_with


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


def job_objects(real: RealStorage, job: dict[str, Any]) -> list[str]:
    """The names the server holds under the job's folder (the bucket is shared), sorted."""
    return real.object_names(BUCKET, prefix=f"{USER_ID}/{job['id']}/")


@pytest.mark.parametrize(
    ("storage", "code", "renders"),
    [
        ("unreachable", "STORAGE_UNAVAILABLE", 0),
        ("wrong service key", "STORAGE_ACCESS_DENIED", 0),
        ("missing bucket", "BUCKET_NOT_FOUND", 1),
    ],
)
async def test_storage_refusing_every_request_ends_the_run_with_one_failed_callback(
    install: Callable[..., Settings],
    real_storage: RealStorage,
    receiver: CallbackReceiver,
    tmp_path: Path,
    storage: str,
    code: str,
    renders: int,
) -> None:
    overrides = {
        "unreachable": {"supabase_url": closed_port_url()},
        "wrong service key": {
            "supabase_service_key": role_key("service_role", "another-projects-secret-0123456789")
        },
        "missing bucket": {"bucket": "no-such-bucket"},
    }[storage]
    install(**overrides)
    job = sdxl_job(num_images=1)

    state = await generate_job(job, return_state=True)

    assert state.is_failed()
    message = one_failed_callback(receiver, job, code)
    assert message in str(state.message)  # the run fails with its own error, not the undo's
    # Task run states reach the API as events: wait for the failed callback's task run.
    runs = await settled_task_runs(state.state_details.flow_run_id, "callback")
    counts = Counter(run.name.split("-")[0] for run in runs)
    assert counts["check"] == 1 and counts["render"] == renders
    assert job_objects(real_storage, job) == []
    assert real_storage.object_names("no-such-bucket") == []
    assert not list(tmp_path.glob("uploads/*"))  # no journal outlives the run


@pytest.mark.parametrize(
    ("fault", "code"), [("403", "STORAGE_ACCESS_DENIED"), ("drop", "STORAGE_UNAVAILABLE")]
)
async def test_storage_failing_after_the_check_keeps_what_the_undo_cannot_check(
    install: Callable[..., Settings],
    real_storage: RealStorage,
    fault_proxy: StorageProxy,
    receiver: CallbackReceiver,
    tmp_path: Path,
    fault: str,
    code: str,
) -> None:
    install()
    job = sdxl_job(num_images=3)
    prefix = f"{USER_ID}/{job['id']}"
    # Asset 1 cannot be stored; then no object can be read or removed any more.
    patterns = (
        f"^POST /storage/v1/object/{BUCKET}/{prefix}/1\\.png",
        "^GET /storage/v1/object/",
        "^DELETE /storage/v1/object/",
    )
    for pattern in patterns:
        if fault == "403":
            fault_proxy.fail(pattern, status=403, times=50)
        else:
            fault_proxy.reset(pattern, times=None)

    state = await generate_job(job, return_state=True)

    assert state.is_failed()
    message = one_failed_callback(receiver, job, code)
    assert f"{prefix}/1.png" in message  # the upload's error, not the undo's
    assert job_objects(real_storage, job) == [
        f"{prefix}/{i}.{ext}" for i in (0, 2) for ext in ("png", "thumb.webp")
    ]
    # No removal reached the server: each DELETE was the proxy's refusal or reset.
    deletes = [seen.status for seen in fault_proxy.seen() if seen.method == "DELETE"]
    assert set(deletes) <= {403 if fault == "403" else 0}
    assert not list(tmp_path.glob("uploads/*"))


async def test_a_run_failing_in_its_upload_removes_exactly_what_it_stored_with_its_bytes(
    install: Callable[..., Settings],
    real_storage: RealStorage,
    fault_proxy: StorageProxy,
    receiver: CallbackReceiver,
) -> None:
    install()
    job = sdxl_job(num_images=3)
    prefix = f"{USER_ID}/{job['id']}"
    upload_of_2 = f"^POST /storage/v1/object/{BUCKET}/{prefix}/2\\.png"
    # Asset 2's first upload is held (then reset), its retry refused for good; while it is
    # held, another writer replaces asset 0 and adds an object of its own to the folder.
    held = fault_proxy.stall(upload_of_2, after_bytes=100, times=1)
    fault_proxy.reset(upload_of_2, after_bytes=100, times=1)
    stored_first = {f"{prefix}/{i}.{ext}" for i in (0, 1) for ext in ("png", "thumb.webp")}

    async def other_writer() -> None:
        deadline = time.monotonic() + 120
        while held.hits == 0 or not stored_first <= set(
            await asyncio.to_thread(job_objects, real_storage, job)
        ):
            assert time.monotonic() < deadline, "the uploads never reached the held request"
            await asyncio.sleep(0.05)
        fault_proxy.fail(upload_of_2, status=403, times=10)
        with real_storage.backend() as other:
            other.put(BUCKET, f"{prefix}/0.png", b"rewritten by another writer", "image/png")
            other.put(BUCKET, f"{prefix}/mine.png", b"another writer's", "image/png")
        fault_proxy.release()

    state, _ = await asyncio.gather(generate_job(job, return_state=True), other_writer())

    assert state.is_failed()
    one_failed_callback(receiver, job, "STORAGE_ACCESS_DENIED")
    assert job_objects(real_storage, job) == [f"{prefix}/0.png", f"{prefix}/mine.png"]
    with real_storage.backend() as reader:
        assert reader.get(BUCKET, f"{prefix}/0.png") == b"rewritten by another writer"


def posts_of(proxy: StorageProxy, path: str) -> list[int]:
    """The status of every upload of ``path`` the proxy saw (its own refusals included)."""
    return [
        seen.status
        for seen in proxy.seen()
        if seen.method == "POST" and seen.path.startswith(f"/storage/v1/object/{BUCKET}/{path}")
    ]


async def test_upload_failing_twice_is_retried_without_rendering_again(
    install: Callable[..., Settings],
    real_storage: RealStorage,
    fault_proxy: StorageProxy,
    receiver: CallbackReceiver,
) -> None:
    install()
    job = sdxl_job(num_images=3)
    prefix = f"{USER_ID}/{job['id']}"
    fault_proxy.fail(f"^POST /storage/v1/object/{BUCKET}/{prefix}/1\\.png", status=503, times=2)

    state = await generate_job(job, return_state=True)

    assert state.is_completed(), state.message
    runs = await settled_task_runs(state.state_details.flow_run_id, "callback")
    names = sorted(run.name for run in runs)
    counts = Counter(name.split("-")[0] for name in names)
    # One upload task for the job; the asset that failed is stored again by its own task,
    # whose first attempt fails once more and whose retry succeeds.
    assert counts["render"] == 1 and counts["upload"] == 1 and counts["reupload"] == 1
    assert posts_of(fault_proxy, f"{prefix}/1.png") == [503, 503, 200]
    assert all(posts_of(fault_proxy, f"{prefix}/{i}.png") == [200] for i in (0, 2))
    # Every run name carries the job id.
    steps = ("validate", "check", "render", "encode", "upload", "reupload", "metadata", "callback")
    assert names == sorted(f"{step}-{job['id']}" for step in steps)
    async with get_client() as client:
        flow_run = await client.read_flow_run(state.state_details.flow_run_id)
    assert flow_run.name == f"job-{job['id']}"
    assert job_objects(real_storage, job) == [
        f"{prefix}/{i}.{ext}" for i in range(3) for ext in ("png", "thumb.webp")
    ]
    assert [p["status"] for p in receiver.accepted(job["id"])] == ["completed"]


async def test_permanent_upload_failure_fails_the_job_and_removes_partial_uploads(
    install: Callable[..., Settings],
    real_storage: RealStorage,
    fault_proxy: StorageProxy,
    receiver: CallbackReceiver,
) -> None:
    install()
    job = sdxl_job(num_images=3)
    prefix = f"{USER_ID}/{job['id']}"
    fault_proxy.fail(f"^POST /storage/v1/object/{BUCKET}/{prefix}/2\\.png", status=415, times=None)

    state = await generate_job(job, return_state=True)

    assert state.is_failed()
    assert posts_of(fault_proxy, f"{prefix}/2.png") == [415]
    assert job_objects(real_storage, job) == []  # assets 0 and 1 were undone
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "failed" and payload["assets"] == []
    assert payload["metadata"]["error_code"] == "INVALID_MIME_TYPE"
