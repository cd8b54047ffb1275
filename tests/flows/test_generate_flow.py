"""The spine: one SDXL job end to end on a real Prefect API, the tiny real pipeline, local
storage and real HTTP to the local callback receiver."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flows.generate import generate_job
from genjobs.callback.signing import verify
from genjobs.connections import Connections
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.render.cache import PIPELINES
from tests.flows.helpers import (
    USER_ID,
    sdxl_job,
    task_run_counts,
)

pytestmark = pytest.mark.usefixtures("prefect_api")


def stored(connections: Connections, path: str) -> Path:
    return Path(connections.settings.resolved_storage_root) / "workspace-temp" / path


async def run(job: dict[str, Any]) -> Any:
    return await generate_job(job, return_state=True)


async def test_three_image_job_lands_files_rows_and_a_signed_callback(
    connections: Connections, receiver: CallbackReceiver, callback_secret: str
) -> None:
    job = sdxl_job(seed=0)
    state = await run(job)
    assert state.is_completed(), state.message
    outcome = await state.result()
    prefix = f"{USER_ID}/{job['id']}"
    assert outcome.assets == [f"{prefix}/{i}.png" for i in range(3)]
    assert outcome.thumbnails == [f"{prefix}/{i}.thumb.webp" for i in range(3)]

    rows = receiver.assets(job["id"])
    assert [r["asset_index"] for r in rows] == [0, 1, 2]
    for index, row in enumerate(rows):
        png = stored(connections, f"{prefix}/{index}.png").read_bytes()
        image = Image.open(io.BytesIO(png))
        thumb = Image.open(stored(connections, f"{prefix}/{index}.thumb.webp"))
        meta = row["asset_metadata"]
        assert meta["file_size_bytes"] == len(png)
        assert (meta["mime_type"], image.format) == ("image/png", "PNG")
        assert (meta["width"], meta["height"]) == image.size == (256, 256)
        assert thumb.format == "WEBP" and thumb.size == (256, 256)
        assert meta["seed"] == meta["generation_seed"] == index  # seed 0 is a seed
        assert meta["asset_index"] == index
        assert meta["temp_storage_path"] == row["temp_storage_path"] == f"{prefix}/{index}.png"
        assert row["thumbnail_path"] == f"{prefix}/{index}.thumb.webp"
        assert (meta["steps"], meta["guidance_scale"]) == (10, 6.0)
        assert meta["negative_prompt_used"] is True
    assert connections.storage.content_type("workspace-temp", f"{prefix}/0.png") == "image/png"  # type: ignore[attr-defined]
    assert (
        connections.storage.content_type(  # type: ignore[attr-defined]
            "workspace-temp", f"{prefix}/0.thumb.webp"
        )
        == "image/webp"
    )

    (request,) = [r for r in receiver.requests if r.answered == 200]
    assert verify(callback_secret, request.body, request.headers["X-Callback-Signature"])
    payload = json.loads(request.body)
    assert payload["status"] == "completed" and payload["error_message"] is None
    assert payload["metadata"]["base_seed"] == 0 and "seed" not in payload["metadata"]
    assert payload["metadata"]["num_images"] == 3
    assert receiver.job(job["id"])["status"] == "completed"  # type: ignore[index]
    assert not list(connections.settings.work_dir.glob("*")), "scratch folder left behind"


async def test_same_job_and_seed_give_identical_bytes_and_seeds_differ_per_image(
    connections: Connections,
) -> None:
    first, second = sdxl_job(seed=1234), sdxl_job(seed=1234)
    for job in (first, second):
        assert (await run(job)).is_completed()

    def pngs(job: dict[str, Any]) -> list[bytes]:
        return [
            stored(connections, f"{USER_ID}/{job['id']}/{i}.png").read_bytes() for i in range(3)
        ]

    assert pngs(first) == pngs(second)
    assert len(set(pngs(first))) == 3


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"id": "not-a-uuid"}, "INVALID_PAYLOAD", "'id'"),
        ({"type": "rv51_fast"}, "UNSUPPORTED_JOB_TYPE", "'type'"),
        ({"type": "video7b_fast_enhanced"}, "UNSUPPORTED_JOB_TYPE", "prompt enhancement"),
        (
            {"config": {"num_inference_steps": 500}},
            "INVALID_PAYLOAD",
            "'config.num_inference_steps'",
        ),
    ],
)
async def test_refused_job_gets_a_failed_callback_and_no_render(
    connections: Connections,
    receiver: CallbackReceiver,
    changes: dict[str, Any],
    code: str,
    field: str,
) -> None:
    job = {**sdxl_job(), **changes}
    loads_before = PIPELINES.load_count()
    state = await run(job)
    assert state.is_failed()
    counts = await task_run_counts(state.state_details.flow_run_id)
    assert counts["validate"] == 1 and counts["render"] == 0
    assert PIPELINES.load_count() == loads_before
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "failed" and payload["assets"] == []
    assert field in payload["error_message"]
    assert payload["metadata"] == {
        "error_type": payload["metadata"]["error_type"],
        "error_code": code,
        "retryable": False,
    }


def _reference_png(connections: Connections, path: str) -> bytes:
    image = Image.new("RGB", (320, 200), (200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    connections.storage.put("workspace-temp", path, buffer.getvalue(), "image/png")
    return buffer.getvalue()


async def test_image_to_image_reads_the_reference_from_storage_and_reports_effective_values(
    connections: Connections, receiver: CallbackReceiver
) -> None:
    _reference_png(connections, f"{USER_ID}/earlier/0.png")
    job = sdxl_job(num_images=1, seed=3, pipeline="img2img")
    job["metadata"].update(
        reference_image_url=f"workspace-temp/{USER_ID}/earlier/0.png", denoise_strength=0.3
    )
    state = await run(job)
    assert state.is_completed(), state.message
    (payload,) = receiver.accepted(job["id"])
    meta = payload["assets"][0]["metadata"]
    assert (meta["pipeline"], meta["denoise_strength"], meta["denoising_steps"]) == (
        "img2img",
        0.3,
        3,
    )
    assert meta["resize_policy"] == "center_crop" and (meta["width"], meta["height"]) == (256, 256)
    assert payload["metadata"]["reference_mode"] == "modify"


async def test_missing_reference_fails_the_job_instead_of_falling_back_to_text(
    connections: Connections, receiver: CallbackReceiver
) -> None:
    job = sdxl_job(num_images=1, pipeline="img2img")
    job["metadata"]["reference_image_url"] = f"workspace-temp/{USER_ID}/missing/0.png"
    state = await run(job)
    assert state.is_failed()
    (payload,) = receiver.accepted(job["id"])
    assert payload["metadata"]["error_code"] == "REFERENCE_DOWNLOAD_ERROR"
    assert payload["assets"] == []


async def test_another_users_reference_is_refused_before_any_render(
    connections: Connections, receiver: CallbackReceiver
) -> None:
    other = "9d0e4c1a-2b3c-4d5e-8f90-a1b2c3d4e5f6"
    _reference_png(connections, f"{other}/private/0.png")
    job = sdxl_job(num_images=1, pipeline="img2img")
    job["metadata"]["reference_image_url"] = f"workspace-temp/{other}/private/0.png"
    state = await run(job)
    assert state.is_failed()
    counts = await task_run_counts(state.state_details.flow_run_id)
    assert counts["render"] == 0
    (payload,) = receiver.accepted(job["id"])
    assert payload["metadata"]["error_code"] == "CROSS_USER_REFERENCE"


async def test_a_run_whose_blocks_do_not_load_fails_naming_the_block_before_any_render(
    tmp_path: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {  # as in a deployed run: the flow reads the environment at its entry
        "HOME": str(tmp_path),
        "CALLBACK_URL": receiver.url,
        "JOB_CALLBACK_SECRET": callback_secret,
        "SUPABASE_BLOCK": "no-such-connection",
    }.items():
        monkeypatch.setenv(f"GENJOBS_{name}", value)
    job = sdxl_job()
    loads_before = PIPELINES.load_count()
    state = await run(job)
    assert state.is_failed()
    assert "no-such-connection" in state.message
    counts = await task_run_counts(state.state_details.flow_run_id)
    assert counts["validate"] == 1 and counts["render"] == 0
    assert PIPELINES.load_count() == loads_before
    assert receiver.accepted(job["id"]) == []  # without its blocks the run reports nothing
