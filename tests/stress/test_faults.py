"""Real jobs under injected faults: Supabase Storage answering 503, hanging past the timeout or
dropping connections, and the callback receiver down for a while.

The tiny real SDXL pipeline renders (256x256, 10 steps, one or three images); the official
``storage3`` client talks HTTP to the real storage server (``workspace-temp`` with the
contract's MIME list) through a ``/storage/v1`` proxy of the test's own that injects the faults;
the callback goes over HTTP to the local receiver. Faults meet one upload request in
``GENJOBS_STRESS_FAULT_EVERY`` (default 4) of a job's uploads, plus one certain fault on one
image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from devstack.storage_proxy import Fault, StorageProxy
from flows.generate import generate_job
from flows.outbox import redeliver_callbacks
from genjobs.callback.outbox import Outbox
from genjobs.callback.sender import CallbackSender
from genjobs.connections import Connections, connections_from_settings
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.storage.supabase import SupabaseStorage
from tests.flows.helpers import USER_ID, sdxl_job
from tests.real_storage import RealStorage
from tests.settings_env import install_settings
from tests.stress.faults import (
    BUCKET,
    HANG_SECONDS,
    check_stored_assets,
    contract_paths,
    job_objects,
    receiver_down_until_refused,
    supabase_settings,
    task_runs,
    uploads,
)

pytestmark = pytest.mark.usefixtures("prefect_api")
FAULT_EVERY = int(os.environ.get("GENJOBS_STRESS_FAULT_EVERY", "4"))
BODY_BYTES = 100
"""Where a fault meets an upload's body: after its first bytes went to the server."""


def inject(proxy: StorageProxy, kind: str, pattern: str, **how: int | None) -> list[Fault]:
    """The faults of one kind: ``status`` (503), ``hang`` (held past the client's timeout, then
    reset), ``drop`` (reset mid-body) or ``drop_after`` (the server stores it, the answer is
    lost). ``how``: ``times`` and ``every`` as the proxy takes them."""
    actions: dict[str, Callable[[], list[Fault]]] = {
        "status": lambda: [proxy.fail(pattern, status=503, **how)],
        "hang": lambda: [
            proxy.stall(pattern, after_bytes=BODY_BYTES, seconds=HANG_SECONDS, **how),
            proxy.reset(pattern, after_bytes=BODY_BYTES, **how),
        ],
        "drop": lambda: [proxy.reset(pattern, after_bytes=BODY_BYTES, **how)],
        "drop_after": lambda: [proxy.drop_answer(pattern, **how)],
    }
    return actions[kind]()


@pytest.fixture
def faulty_connections(
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    real_storage: RealStorage,
    fault_proxy: StorageProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Connections]:
    settings = supabase_settings(
        tmp_path, model_cache, receiver, callback_secret, real_storage, fault_proxy
    )
    connections = connections_from_settings(install_settings(monkeypatch, settings))
    assert isinstance(connections.storage, SupabaseStorage)
    yield connections
    connections.storage.close()


@pytest.mark.parametrize(
    ("kind", "images"), [("status", 3), ("hang", 1), ("drop", 1), ("drop_after", 3)]
)
async def test_upload_faults_and_a_down_receiver_lose_nothing_and_repeat_nothing(
    kind: str,
    images: int,
    faulty_connections: Connections,
    real_storage: RealStorage,
    fault_proxy: StorageProxy,
    receiver: CallbackReceiver,
    callback_secret: str,
) -> None:
    job = sdxl_job(num_images=images)
    prefix = f"{USER_ID}/{job['id']}"
    certain = f"{prefix}/{images // 2}.png"  # the one upload that certainly meets the fault
    upload_of_certain = f"^POST /storage/v1/object/{BUCKET}/{certain}$"
    certain_faults = inject(fault_proxy, kind, upload_of_certain, times=1)
    # The certain fault's path takes its one fault; the others meet one upload in FAULT_EVERY.
    others = f"^POST /storage/v1/object/{BUCKET}/{prefix}/(?!{images // 2}\\.png$)"
    inject(fault_proxy, kind, others, times=None, every=FAULT_EVERY)

    with receiver_down_until_refused(receiver, refusals=2):
        state = await generate_job(job, return_state=True)

    assert state.is_completed(), state.message
    fault_proxy.clear_faults()
    # Nothing lost, nothing stored twice: exactly the contract objects, each one whole.
    assert job_objects(real_storage, USER_ID, job["id"]) == contract_paths(
        USER_ID, job["id"], images
    )
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "completed"
    assert [a["url"] for a in payload["assets"]] == [f"{prefix}/{i}.png" for i in range(images)]
    assert [a["thumbnail_url"] for a in payload["assets"]] == [
        f"{prefix}/{i}.thumb.webp" for i in range(images)
    ]
    check_stored_assets(real_storage, payload)
    assert len(receiver.assets(job["id"])) == images
    # The fault met the certain upload, which was sent again and stored. (The proxy logs a
    # request when it ends: a held one after its retry, a dropped answer with the server's
    # status, which the client never saw.)
    assert [fault.hits for fault in certain_faults] == [1] * len(certain_faults)
    faulted = [seen.status for seen in uploads(fault_proxy, certain)]
    assert len(faulted) >= 2 and 200 in faulted, faulted
    if kind == "status":
        assert faulted[0] == 503 and faulted[-1] == 200, faulted
    for path in contract_paths(USER_ID, job["id"], images):
        assert 200 in [seen.status for seen in uploads(fault_proxy, path)], path
    # Rendered once; only the uploads were attempted again.
    assert state.state_details.flow_run_id is not None
    attempts = await task_runs(state.state_details.flow_run_id)
    assert attempts["render"] == [1] and attempts["encode"] == [1]
    # One upload task; the assets that met a fault were stored again by tasks of their own.
    assert attempts["upload"] == [1] and 1 <= len(attempts["reupload"]) <= images, attempts
    # The callback waited out the receiver's downtime and was accepted once.
    answered = [r.answered for r in receiver.requests if json.loads(r.body)["job_id"] == job["id"]]
    assert answered[-1] == 200 and answered.count(200) == 1, answered
    assert answered.count(503) >= 2 and set(answered) == {200, 503}, answered
    # Repeats are harmless: the backend skips a terminal job.
    (delivered,) = [r for r in receiver.requests if r.answered == 200]
    async with httpx.AsyncClient(timeout=5) as client:
        sender = CallbackSender(receiver.url, SecretStr(callback_secret), None, client)
        for _ in range(2):
            assert (await sender.deliver(delivered.body)).skipped
    assert len(receiver.accepted(job["id"])) == 1
    assert len(receiver.assets(job["id"])) == images
    assert not list(faulty_connections.settings.work_dir.glob("*")), "scratch folder left behind"


async def test_a_refused_upload_removes_every_partial_upload_even_one_still_in_flight(
    faulty_connections: Connections,
    real_storage: RealStorage,
    fault_proxy: StorageProxy,
    receiver: CallbackReceiver,
) -> None:
    """One upload is refused for good while another is still on its way (a slow answer that
    then stores the object): the job fails only after every upload has settled, so the
    clean-up leaves no orphaned object behind, and a job that failed stores nothing again."""
    job = sdxl_job(num_images=3)
    prefix = f"{USER_ID}/{job['id']}"
    fault_proxy.fail(f"/object/{BUCKET}/{prefix}/2\\.png$", status=415)
    slow = fault_proxy.stall(
        f"/object/{BUCKET}/{prefix}/0\\.png$", after_bytes=BODY_BYTES, seconds=0.4, times=1
    )
    state = await generate_job(job, return_state=True)
    assert state.is_failed()
    assert [r.status for r in uploads(fault_proxy, f"{prefix}/0.png")] == [200]
    assert slow.hits == 1
    assert [r.status for r in uploads(fault_proxy, f"{prefix}/2.png")] == [415]
    assert job_objects(real_storage, USER_ID, job["id"]) == []
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "failed" and payload["assets"] == []
    assert payload["metadata"]["error_code"] == "INVALID_MIME_TYPE"
    assert state.state_details.flow_run_id is not None
    attempts = await task_runs(state.state_details.flow_run_id)
    assert attempts["upload"] == [1] and "reupload" not in attempts, attempts


async def test_undeliverable_callback_waits_in_the_outbox_and_is_delivered_once_later(
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    real_storage: RealStorage,
    fault_proxy: StorageProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = supabase_settings(
        tmp_path,
        model_cache,
        receiver,
        callback_secret,
        real_storage,
        fault_proxy,
        callback_retry_window_seconds=0.5,
        callback_retry_base_seconds=0.1,
    )
    install_settings(monkeypatch, settings)
    job = sdxl_job(num_images=1)
    fault_proxy.fail(f"^POST /storage/v1/object/{BUCKET}/", times=None, every=FAULT_EVERY)
    receiver.down_for(3600)
    state = await generate_job(job, return_state=True)
    # The assets are stored; only the callback is missing, and it waits in the outbox.
    assert state.is_failed()
    stored = job_objects(real_storage, USER_ID, job["id"])
    assert stored == contract_paths(USER_ID, job["id"], 1)
    (entry,) = Outbox(settings.outbox_dir).entries()
    assert (entry.job_id, entry.status) == (job["id"], "completed")
    assert receiver.accepted(job["id"]) == []
    refused = len(receiver.requests)
    assert refused >= 2 and all(r.answered == 503 for r in receiver.requests)

    receiver.down_for(0)
    assert await redeliver_callbacks() == {"delivered": 1, "waiting": 0, "rejected": 0}
    assert await redeliver_callbacks() == {"delivered": 0, "waiting": 0, "rejected": 0}
    assert Outbox(settings.outbox_dir).entries() == []
    assert len(receiver.requests) == refused + 1
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "completed" and json.loads(entry.body) == payload
    check_stored_assets(real_storage, payload)
    assert len(receiver.assets(job["id"])) == 1
