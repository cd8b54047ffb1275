"""The spine: one SDXL job end to end on a real Prefect API, the tiny real pipeline, local
storage and real HTTP to the local callback receiver."""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prefect.client.orchestration import get_client

from flows.generate import generate_job
from genjobs.callback.signing import verify
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.render.cache import PIPELINES
from genjobs.runtime import Runtime, set_runtime
from tests.flows.helpers import (
    USER_ID,
    FlakyStorage,
    sdxl_job,
    settled_task_runs,
    task_run_counts,
)

pytestmark = pytest.mark.usefixtures("prefect_api")


def stored(runtime: Runtime, path: str) -> Path:
    return Path(runtime.settings.resolved_storage_root) / "workspace-temp" / path


async def run(job: dict[str, Any]) -> Any:
    return await generate_job(job, return_state=True)


async def test_three_image_job_lands_files_rows_and_a_signed_callback(
    runtime: Runtime, receiver: CallbackReceiver, callback_secret: str
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
        png = stored(runtime, f"{prefix}/{index}.png").read_bytes()
        image = Image.open(io.BytesIO(png))
        thumb = Image.open(stored(runtime, f"{prefix}/{index}.thumb.webp"))
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
    assert runtime.storage.content_type("workspace-temp", f"{prefix}/0.png") == "image/png"  # type: ignore[attr-defined]
    assert (
        runtime.storage.content_type(  # type: ignore[attr-defined]
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
    assert not list(runtime.settings.work_dir.glob("*")), "scratch folder left behind"


async def test_same_job_and_seed_give_identical_bytes_and_seeds_differ_per_image(
    runtime: Runtime,
) -> None:
    first, second = sdxl_job(seed=1234), sdxl_job(seed=1234)
    for job in (first, second):
        assert (await run(job)).is_completed()

    def pngs(job: dict[str, Any]) -> list[bytes]:
        return [stored(runtime, f"{USER_ID}/{job['id']}/{i}.png").read_bytes() for i in range(3)]

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
    runtime: Runtime, receiver: CallbackReceiver, changes: dict[str, Any], code: str, field: str
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


async def test_upload_failing_twice_is_retried_without_rendering_again(
    runtime: Runtime, receiver: CallbackReceiver
) -> None:
    flaky = FlakyStorage(runtime.storage, suffix="/1.png", failures=2)
    set_runtime(replace(runtime, storage=flaky))  # type: ignore[arg-type]
    job = sdxl_job(num_images=3)
    state = await run(job)
    assert state.is_completed(), state.message
    names = sorted(run.name for run in await settled_task_runs(state.state_details.flow_run_id))
    counts = Counter(name.split("-")[0] for name in names)
    # One upload task for the job; the asset that failed is stored again by its own task,
    # whose first attempt fails once more and whose retry succeeds.
    assert counts["render"] == 1 and counts["upload"] == 1 and counts["reupload"] == 1
    path = f"{USER_ID}/{job['id']}/1.png"
    assert flaky.attempts[path] == 3
    assert all(flaky.attempts[f"{USER_ID}/{job['id']}/{i}.png"] == 1 for i in (0, 2))
    # Every run name carries the job id.
    steps = ("validate", "check", "render", "encode", "upload", "reupload", "metadata", "callback")
    assert names == sorted(f"{step}-{job['id']}" for step in steps)
    async with get_client() as client:
        flow_run = await client.read_flow_run(state.state_details.flow_run_id)
    assert flow_run.name == f"job-{job['id']}"
    assert stored(runtime, path).is_file()
    assert [p["status"] for p in receiver.accepted(job["id"])] == ["completed"]


async def test_permanent_upload_failure_fails_the_job_and_removes_partial_uploads(
    runtime: Runtime, receiver: CallbackReceiver
) -> None:
    flaky = FlakyStorage(runtime.storage, suffix="/2.png", failures=99, retryable=False)
    set_runtime(replace(runtime, storage=flaky))  # type: ignore[arg-type]
    job = sdxl_job(num_images=3)
    state = await run(job)
    assert state.is_failed()
    assert flaky.attempts[f"{USER_ID}/{job['id']}/2.png"] == 1
    assert not stored(runtime, f"{USER_ID}/{job['id']}").exists() or not any(
        stored(runtime, f"{USER_ID}/{job['id']}").iterdir()
    )
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "failed" and payload["assets"] == []
    assert payload["metadata"]["error_code"] == "INVALID_MIME_TYPE"


def _reference_png(runtime: Runtime, path: str) -> bytes:
    image = Image.new("RGB", (320, 200), (200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    runtime.storage.put("workspace-temp", path, buffer.getvalue(), "image/png")
    return buffer.getvalue()


async def test_image_to_image_reads_the_reference_from_storage_and_reports_effective_values(
    runtime: Runtime, receiver: CallbackReceiver
) -> None:
    _reference_png(runtime, f"{USER_ID}/earlier/0.png")
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
    runtime: Runtime, receiver: CallbackReceiver
) -> None:
    job = sdxl_job(num_images=1, pipeline="img2img")
    job["metadata"]["reference_image_url"] = f"workspace-temp/{USER_ID}/missing/0.png"
    state = await run(job)
    assert state.is_failed()
    (payload,) = receiver.accepted(job["id"])
    assert payload["metadata"]["error_code"] == "REFERENCE_DOWNLOAD_ERROR"
    assert payload["assets"] == []


async def test_another_users_reference_is_refused_before_any_render(
    runtime: Runtime, receiver: CallbackReceiver
) -> None:
    other = "9d0e4c1a-2b3c-4d5e-8f90-a1b2c3d4e5f6"
    _reference_png(runtime, f"{other}/private/0.png")
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
    set_runtime(None)  # as in a deployed run: the flow builds its runtime from the environment
    for name, value in {
        "HOME": str(tmp_path),
        "CALLBACK_URL": receiver.url,
        "JOB_CALLBACK_SECRET": callback_secret,
        "SUPABASE_BLOCK": "no-such-connection",
    }.items():
        monkeypatch.setenv(f"GENJOBS_{name}", value)
    job = sdxl_job()
    loads_before = PIPELINES.load_count()
    try:
        state = await run(job)
    finally:
        set_runtime(None)
    assert state.is_failed()
    assert "no-such-connection" in state.message
    counts = await task_run_counts(state.state_details.flow_run_id)
    assert counts["validate"] == 1 and counts["render"] == 0
    assert PIPELINES.load_count() == loads_before
    assert receiver.accepted(job["id"]) == []  # without its runtime the run reports nothing
