"""The spine against Supabase Storage: the real ``supabase``/``storage3`` client speaking HTTP to
the local stand-in, the real callback receiver, a real Prefect API."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from devstack.storage_standin import StorageStandIn
from flows.generate import generate_job
from flows.outbox import redeliver_callbacks
from genjobs.callback.outbox import Outbox
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.runtime import Runtime, build_runtime, set_runtime
from genjobs.storage.supabase import SupabaseStorage
from tests.conftest import make_settings
from tests.flows.helpers import USER_ID, sdxl_job, task_run_counts

pytestmark = pytest.mark.usefixtures("prefect_api")
JWT_SECRET = "flow-tests-jwt-secret-0123456789abcdef0123"
BUCKET = "workspace-temp"


@pytest.fixture(scope="module")
def standin_server() -> Iterator[StorageStandIn]:
    with StorageStandIn(JWT_SECRET, hang_seconds=2.0) as running:
        yield running


@pytest.fixture
def standin(standin_server: StorageStandIn) -> StorageStandIn:
    standin_server.reset()
    standin_server.create_contract_buckets([BUCKET])
    return standin_server


@pytest.fixture
def use_supabase(
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    standin: StorageStandIn,
) -> Iterator[Callable[..., Runtime]]:
    """Installs a runtime on the stand-in through the real client; overrides tune settings."""

    def install(**overrides: object) -> Runtime:
        settings = make_settings(
            tmp_path,
            model_cache,
            receiver,
            callback_secret,
            supabase_url=standin.url,
            supabase_service_key=standin.token(),
            storage_timeout_seconds=5.0,
            **overrides,
        )
        runtime = build_runtime(settings)
        assert isinstance(runtime.storage, SupabaseStorage)
        set_runtime(runtime)
        return runtime

    yield install
    set_runtime(None)


@pytest.fixture
def supabase_runtime(use_supabase: Callable[..., Runtime]) -> Runtime:
    return use_supabase()


def upload_statuses(standin: StorageStandIn, path: str) -> list[int]:
    return [
        r.status
        for r in standin.requests
        if r.method == "POST" and r.path == f"/object/{BUCKET}/{path}"
    ]


async def test_job_stores_objects_at_contract_paths_with_exact_content_types(
    supabase_runtime: Runtime, standin: StorageStandIn, receiver: CallbackReceiver
) -> None:
    job = sdxl_job(num_images=1, seed=7)
    state = await generate_job(job, return_state=True)
    assert state.is_completed(), state.message
    prefix = f"{USER_ID}/{job['id']}"
    assert standin.object_names(BUCKET) == [f"{prefix}/0.png", f"{prefix}/0.thumb.webp"]
    original = standin.get_object(BUCKET, f"{prefix}/0.png")
    thumb = standin.get_object(BUCKET, f"{prefix}/0.thumb.webp")
    assert original is not None and thumb is not None
    assert (original.content_type, thumb.content_type) == ("image/png", "image/webp")
    assert Image.open(io.BytesIO(original.data)).size == (256, 256)
    (payload,) = receiver.accepted(job["id"])
    assert payload["assets"][0]["metadata"]["file_size_bytes"] == original.size
    assert payload["assets"][0]["metadata"]["seed"] == 7


async def test_the_preview_artifact_links_each_thumbnail_for_a_limited_time(
    use_supabase: Callable[..., Runtime], standin: StorageStandIn
) -> None:
    use_supabase(artifact_preview_seconds=600)
    job = sdxl_job(num_images=1, seed=3)
    state = await generate_job(job, return_state=True)
    assert state.is_completed(), state.message
    async with get_client() as client:
        (artifact,) = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"asset-previews-{job['id']}"])
            )
        )
    assert artifact.type == "markdown" and isinstance(artifact.data, str)
    thumb_path = f"{USER_ID}/{job['id']}/0.thumb.webp"
    assert f"`{USER_ID}/{job['id']}/0.png`" in artifact.data
    (link,) = re.findall(r"!\[asset 0\]\((\S+)\)", artifact.data)
    answer = httpx.get(link)  # no credentials: the signed link alone opens the thumbnail
    stored = standin.get_object(BUCKET, thumb_path)
    assert answer.status_code == 200 and stored is not None and answer.content == stored.data
    token = parse_qs(urlsplit(link).query)["token"][0]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert 590 <= claims["exp"] - claims["iat"] <= 610


async def test_disallowed_mime_type_fails_the_job_with_a_clear_code(
    supabase_runtime: Runtime, standin: StorageStandIn, receiver: CallbackReceiver
) -> None:
    standin.create_bucket(BUCKET, allowed_mime_types=["image/jpeg", "image/webp"])
    job = sdxl_job(num_images=1)
    state = await generate_job(job, return_state=True)
    assert state.is_failed()
    path = f"{USER_ID}/{job['id']}/0.png"
    assert upload_statuses(standin, path) == [400]  # the 415 body; never retried
    assert standin.object_names(BUCKET) == []
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "failed"
    assert payload["metadata"]["error_code"] == "INVALID_MIME_TYPE"
    assert "image/png" in payload["error_message"]


async def test_two_injected_503s_store_the_object_once_and_render_once(
    supabase_runtime: Runtime, standin: StorageStandIn, receiver: CallbackReceiver
) -> None:
    job = sdxl_job(num_images=1)
    path = f"{USER_ID}/{job['id']}/0.png"
    standin.inject_fault("status", count=2, method="POST", path_prefix=f"/object/{BUCKET}/{path}")
    state = await generate_job(job, return_state=True)
    assert state.is_completed(), state.message
    assert upload_statuses(standin, path) == [503, 503, 200]
    assert standin.object_names(BUCKET).count(path) == 1
    counts = await task_run_counts(state.state_details.flow_run_id)
    assert counts["render"] == 1
    assert [p["status"] for p in receiver.accepted(job["id"])] == ["completed"]


@pytest.mark.slow
async def test_receiver_down_for_a_minute_still_gets_one_accepted_delivery(
    use_supabase: Callable[..., Runtime], receiver: CallbackReceiver
) -> None:
    use_supabase(
        callback_retry_window_seconds=120,
        callback_retry_base_seconds=1.0,
        callback_retry_cap_seconds=4.0,
    )
    job = sdxl_job(num_images=1)
    receiver.down_for(60)
    state = await generate_job(job, return_state=True)
    assert state.is_completed(), state.message
    answered = [r.answered for r in receiver.requests]
    assert answered.count(503) >= 10 and answered[-1] == 200
    assert [p["status"] for p in receiver.accepted(job["id"])] == ["completed"]


async def test_undeliverable_callback_waits_in_the_outbox_and_is_redelivered_once(
    use_supabase: Callable[..., Runtime], receiver: CallbackReceiver
) -> None:
    runtime = use_supabase(callback_retry_window_seconds=0.3, callback_retry_base_seconds=0.1)
    job = sdxl_job(num_images=1)
    receiver.down_for(3600)
    state = await generate_job(job, return_state=True)
    assert state.is_failed()  # the assets are stored; the callback is not yet delivered
    (entry,) = Outbox(runtime.settings.outbox_dir).entries()
    assert (entry.job_id, entry.status) == (job["id"], "completed")
    assert receiver.accepted(job["id"]) == []
    receiver.down_for(0)
    assert await redeliver_callbacks() == {"delivered": 1, "waiting": 0, "rejected": 0}
    assert await redeliver_callbacks() == {"delivered": 0, "waiting": 0, "rejected": 0}
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "completed" and json.loads(entry.body) == payload
    assert len(receiver.assets(job["id"])) == 1
