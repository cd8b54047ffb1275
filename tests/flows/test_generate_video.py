"""A WAN video job through the whole flow: real H.264 encoding, PyAV read-back, thumbnail,
upload and callback. The diffusion itself is the timed stand-in renderer here, which costs
nothing; the embedded tiny WAN runs a whole video_fast job against the real storage server in
tests/flows/test_generate_supabase.py, and at small sizes in tests/render/test_wan.py."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import av
import pytest
from PIL import Image

from flows.generate import generate_job
from genjobs.connections import connections_from_settings
from genjobs.devserver.receiver import CallbackReceiver
from tests.conftest import make_settings
from tests.flows.helpers import USER_ID
from tests.settings_env import install_settings

pytestmark = pytest.mark.usefixtures("prefect_api")


async def test_video_job_stores_an_81_frame_h264_mp4_and_reports_true_facts(
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENJOBS_TIMED_STEP_SECONDS", "0")
    monkeypatch.setenv("GENJOBS_TIMED_LOAD_SECONDS", "0")
    settings = make_settings(
        tmp_path,
        model_cache,
        receiver,
        callback_secret,
        renderer_class="devstack.timed_renderer:TimedRenderer",
    )
    connections = connections_from_settings(install_settings(monkeypatch, settings))
    job = {
        "id": str(uuid.uuid4()),
        "user_id": USER_ID,
        "type": "wan_video_fast",
        "prompt": "waves on a beach",
        "config": {"seed": 0},
        "metadata": {},
    }
    state = await generate_job(job, return_state=True)
    assert state.is_completed(), state.message
    folder = settings.resolved_storage_root / "workspace-temp" / USER_ID / job["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["0.mp4", "0.thumb.webp"]
    data = (folder / "0.mp4").read_bytes()
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (stream.codec_context.width, stream.codec_context.height) == (480, 832)
        assert not container.streams.audio
    assert frames == 81
    assert Image.open(folder / "0.thumb.webp").size == (147, 256)
    assert (
        connections.storage.content_type(  # type: ignore[attr-defined]
            "workspace-temp", f"{USER_ID}/{job['id']}/0.mp4"
        )
        == "video/mp4"
    )

    (payload,) = receiver.accepted(job["id"])
    (asset,) = payload["assets"]
    meta = asset["metadata"]
    assert asset["type"] == "video" and asset["url"] == f"{USER_ID}/{job['id']}/0.mp4"
    assert meta["duration_seconds"] == pytest.approx(5.0625)
    assert (meta["frame_num"], meta["fps"], meta["width"], meta["height"]) == (81, 16, 480, 832)
    assert (meta["seed"], meta["mime_type"], meta["file_size_bytes"]) == (0, "video/mp4", len(data))
    assert (meta["sample_solver"], meta["sample_shift"], meta["steps"]) == ("dpm++", 5.0, 25)
    assert payload["metadata"]["frame_num"] == 81 and "seed" not in payload["metadata"]
