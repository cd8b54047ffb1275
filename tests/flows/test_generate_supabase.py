"""The spine against Supabase Storage: the real ``supabase``/``storage3`` client speaking HTTP to
the real storage server (v1.70.6 on loopback) through a ``/storage/v1`` proxy of the test's own
that can play a faulty gateway, the real callback receiver, a real Prefect API."""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import av
import httpx
import jwt
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from devstack.storage_proxy import StorageProxy
from flows.generate import generate_job
from flows.outbox import redeliver_callbacks
from genjobs.callback.outbox import Outbox
from genjobs.connections import Connections, connections_from_settings
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.storage.supabase import SupabaseStorage
from tests.conftest import make_settings
from tests.flows.helpers import USER_ID, sdxl_job, task_run_counts
from tests.real_storage import WORKSPACE_BUCKET, RealStorage
from tests.settings_env import install_settings

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def use_supabase(
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    real_storage: RealStorage,
    fault_proxy: StorageProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Connections]:
    """Installs settings for the real server through the proxy in the environment (what the
    flow reads at its entry); overrides tune them. Returns their connections."""

    def install(**overrides: object) -> Connections:
        values: dict[str, object] = {
            "supabase_url": fault_proxy.url,
            "supabase_service_key": real_storage.service_key,
            "storage_timeout_seconds": 30.0,
        }
        values.update(overrides)
        settings = make_settings(tmp_path, model_cache, receiver, callback_secret, **values)
        connections = connections_from_settings(install_settings(monkeypatch, settings))
        assert isinstance(connections.storage, SupabaseStorage)
        return connections

    return install


@pytest.fixture
def supabase_connections(use_supabase: Callable[..., Connections]) -> Connections:
    return use_supabase()


def upload_statuses(proxy: StorageProxy, bucket: str, path: str) -> list[int]:
    """HTTP statuses of the standard uploads of one object (0: no answer reached the client)."""
    target = f"/storage/v1/object/{bucket}/{path}"
    return [seen.status for seen in proxy.seen() if seen.method == "POST" and seen.path == target]


def stored(real: RealStorage, path: str, bucket: str = WORKSPACE_BUCKET) -> tuple[bytes, str]:
    """The bytes and content type the server stored at ``path``."""
    response = httpx.get(
        f"{real.storage_url}/object/authenticated/{bucket}/{path}", headers=real.headers()
    )
    assert response.status_code == 200, response.text
    return response.content, response.headers["content-type"]


def job_objects(
    real: RealStorage, job: dict[str, object], bucket: str = WORKSPACE_BUCKET
) -> list[str]:
    prefix = f"{USER_ID}/{job['id']}/"
    return [name for name in real.object_names(bucket) if name.startswith(prefix)]


async def test_job_stores_objects_at_contract_paths_with_exact_content_types(
    supabase_connections: Connections, real_storage: RealStorage, receiver: CallbackReceiver
) -> None:
    job = sdxl_job(num_images=1, seed=7)
    state = await generate_job(job, return_state=True)
    assert state.is_completed(), state.message
    prefix = f"{USER_ID}/{job['id']}"
    assert job_objects(real_storage, job) == [f"{prefix}/0.png", f"{prefix}/0.thumb.webp"]
    original, original_type = stored(real_storage, f"{prefix}/0.png")
    thumb, thumb_type = stored(real_storage, f"{prefix}/0.thumb.webp")
    assert (original_type, thumb_type) == ("image/png", "image/webp")
    assert Image.open(io.BytesIO(original)).size == (256, 256)
    assert Image.open(io.BytesIO(thumb)).format == "WEBP"
    (payload,) = receiver.accepted(job["id"])
    assert payload["assets"][0]["metadata"]["file_size_bytes"] == len(original)
    assert payload["assets"][0]["metadata"]["seed"] == 7


async def test_the_preview_artifact_links_each_thumbnail_for_a_limited_time(
    use_supabase: Callable[..., Connections], real_storage: RealStorage
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
    assert answer.status_code == 200
    assert answer.content == stored(real_storage, thumb_path)[0]
    token = parse_qs(urlsplit(link).query)["token"][0]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 600


async def test_disallowed_mime_type_fails_the_job_with_a_clear_code(
    use_supabase: Callable[..., Connections],
    real_storage: RealStorage,
    fault_proxy: StorageProxy,
    receiver: CallbackReceiver,
) -> None:
    bucket = real_storage.create_bucket("no-png", allowed_mime_types=("image/jpeg", "image/webp"))
    use_supabase(bucket=bucket)
    job = sdxl_job(num_images=1)
    state = await generate_job(job, return_state=True)
    assert state.is_failed()
    path = f"{USER_ID}/{job['id']}/0.png"
    assert upload_statuses(fault_proxy, bucket, path) == [400]  # the 415 body; never retried
    assert real_storage.object_names(bucket) == []
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "failed"
    assert payload["metadata"]["error_code"] == "INVALID_MIME_TYPE"
    assert "image/png" in payload["error_message"]


async def test_two_gateway_503s_store_the_object_once_and_render_once(
    supabase_connections: Connections,
    real_storage: RealStorage,
    fault_proxy: StorageProxy,
    receiver: CallbackReceiver,
) -> None:
    job = sdxl_job(num_images=1)
    path = f"{USER_ID}/{job['id']}/0.png"
    fault_proxy.fail(rf"^POST /storage/v1/object/{WORKSPACE_BUCKET}/{path}$", times=2)
    state = await generate_job(job, return_state=True)
    assert state.is_completed(), state.message
    assert upload_statuses(fault_proxy, WORKSPACE_BUCKET, path) == [503, 503, 200]
    assert job_objects(real_storage, job).count(path) == 1
    counts = await task_run_counts(state.state_details.flow_run_id)
    assert counts["render"] == 1
    assert [p["status"] for p in receiver.accepted(job["id"])] == ["completed"]


async def test_a_gateway_stalled_mid_upload_is_timed_out_and_the_retry_stores_the_object(
    use_supabase: Callable[..., Connections],
    real_storage: RealStorage,
    fault_proxy: StorageProxy,
    receiver: CallbackReceiver,
) -> None:
    use_supabase(storage_timeout_seconds=1.0)
    job = sdxl_job(num_images=1)
    path = f"{USER_ID}/{job['id']}/0.png"
    # The first upload of the image stops after 4 KiB and never goes on.
    stall = fault_proxy.stall(
        rf"^POST /storage/v1/object/{WORKSPACE_BUCKET}/{path}$", after_bytes=4096, times=1
    )
    state = await generate_job(job, return_state=True)
    assert state.is_completed(), state.message
    assert stall.hits == 1
    # The held upload never got an answer; the retry did.
    assert upload_statuses(fault_proxy, WORKSPACE_BUCKET, path) == [200]
    data, content_type = stored(real_storage, path)
    assert content_type == "image/png" and Image.open(io.BytesIO(data)).size == (256, 256)
    assert job_objects(real_storage, job).count(path) == 1
    counts = await task_run_counts(state.state_details.flow_run_id)
    assert counts["render"] == 1
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "completed"
    assert payload["assets"][0]["metadata"]["file_size_bytes"] == len(data)


@pytest.mark.slow
async def test_receiver_down_through_a_dozen_attempts_still_gets_one_accepted_delivery(
    use_supabase: Callable[..., Connections], receiver: CallbackReceiver
) -> None:
    # The production window is 15 minutes of attempts whose delays double up to a minute; the
    # same schedule scaled down (delays doubling from 0.1 s up to 0.5 s, a 30 s window) outlasts
    # a receiver that answers 503 twelve times.
    use_supabase(
        callback_retry_window_seconds=30,
        callback_retry_base_seconds=0.1,
        callback_retry_cap_seconds=0.5,
    )
    job = sdxl_job(num_images=1)
    receiver.fail_next(12)
    state = await generate_job(job, return_state=True)
    assert state.is_completed(), state.message
    assert [r.answered for r in receiver.requests] == [503] * 12 + [200]
    assert [p["status"] for p in receiver.accepted(job["id"])] == ["completed"]


async def test_undeliverable_callback_waits_in_the_outbox_and_is_redelivered_once(
    use_supabase: Callable[..., Connections], receiver: CallbackReceiver
) -> None:
    connections = use_supabase(callback_retry_window_seconds=0.3, callback_retry_base_seconds=0.1)
    job = sdxl_job(num_images=1)
    receiver.down_for(3600)
    state = await generate_job(job, return_state=True)
    assert state.is_failed()  # the assets are stored; the callback is not yet delivered
    (entry,) = Outbox(connections.settings.outbox_dir).entries()
    assert (entry.job_id, entry.status) == (job["id"], "completed")
    assert receiver.accepted(job["id"]) == []
    receiver.down_for(0)
    assert await redeliver_callbacks() == {"delivered": 1, "waiting": 0, "rejected": 0}
    assert await redeliver_callbacks() == {"delivered": 0, "waiting": 0, "rejected": 0}
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "completed" and json.loads(entry.body) == payload
    assert len(receiver.assets(job["id"])) == 1


@pytest.mark.slow
async def test_a_video_fast_job_on_the_embedded_default_completes_against_the_real_server(
    supabase_connections: Connections, real_storage: RealStorage, receiver: CallbackReceiver
) -> None:
    """The embedded tiny WAN renders the contract's video (480x832, 81 frames, 16 fps, H.264)
    and the real server stores it; the documented minimum of 10 steps keeps the test short."""
    job = {
        "id": str(uuid.uuid4()),
        "user_id": USER_ID,
        "type": "video_fast",
        "prompt": "waves on a beach at dusk",
        "config": {"seed": 11, "num_inference_steps": 10},
        "metadata": {},
    }
    state = await generate_job(job, return_state=True)
    assert state.is_completed(), state.message
    prefix = f"{USER_ID}/{job['id']}"
    assert job_objects(real_storage, job) == [f"{prefix}/0.mp4", f"{prefix}/0.thumb.webp"]
    video, video_type = stored(real_storage, f"{prefix}/0.mp4")
    thumb, thumb_type = stored(real_storage, f"{prefix}/0.thumb.webp")
    assert (video_type, thumb_type) == ("video/mp4", "image/webp")
    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert (stream.codec_context.name, stream.average_rate) == ("h264", 16)
        assert (stream.codec_context.width, stream.codec_context.height) == (480, 832)
    assert frames == 81
    assert Image.open(io.BytesIO(thumb)).size == (147, 256)
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "completed"
    (asset,) = payload["assets"]
    meta = asset["metadata"]
    assert (meta["seed"], meta["steps"], meta["frame_num"]) == (11, 10, 81)
    assert (meta["file_size_bytes"], meta["mime_type"]) == (len(video), "video/mp4")
    assert meta["duration_seconds"] == pytest.approx(5.0625)
