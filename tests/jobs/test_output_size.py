"""Outputs the storage bucket could not take are refused at validation, naming the field."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from genjobs.encode.png import encode_rgb_png
from genjobs.encode.video import encode_mp4
from genjobs.errors import InvalidPayload
from genjobs.jobs.output_size import mp4_worst_case_bytes, png_worst_case_bytes
from genjobs.jobs.payload import MAX_SIDE, parse_job
from genjobs.jobs.plan import RenderPlan, plan_job
from genjobs.jobs.types import JOB_TYPES
from genjobs.storage.limits import WORKSPACE_TEMP_FILE_SIZE_LIMIT
from tests.jobs.test_payload import payload

MB = 1000 * 1000


def _plan(limit: int = WORKSPACE_TEMP_FILE_SIZE_LIMIT, **changes: Any) -> RenderPlan:
    return plan_job(parse_job(payload(**changes)), max_object_bytes=limit)


def _refusal(limit: int, **changes: Any) -> InvalidPayload:
    with pytest.raises(InvalidPayload) as caught:
        _plan(limit, **changes)
    return caught.value


@pytest.mark.parametrize("job_type", sorted(JOB_TYPES))
def test_every_job_type_at_its_largest_fits_the_bucket(job_type: str) -> None:
    config = {"resolution": f"{MAX_SIDE}x{MAX_SIDE}"} if job_type.startswith("sdxl") else {}

    plan = _plan(type=job_type, config=config)

    assert plan.job_type == job_type


def test_a_resolution_whose_png_could_exceed_the_limit_is_refused() -> None:
    error = _refusal(10 * MB, config={"resolution": "2048x2048"})

    assert error.code == "OUTPUT_TOO_LARGE"
    assert error.message.startswith("Field 'config.resolution' is invalid ('2048x2048')")
    assert f"{png_worst_case_bytes(2048, 2048)} bytes" in error.message
    assert f"{10 * MB} bytes" in error.message
    assert _plan(10 * MB, config={"resolution": "1024x1024"}).width == 1024


def test_the_default_resolution_is_named_when_it_is_too_large() -> None:
    error = _refusal(MB)

    assert error.message.startswith("Field 'config.resolution' is invalid ('1024x1024')")


def test_a_video_whose_worst_case_exceeds_the_limit_is_refused_naming_the_type() -> None:
    error = _refusal(50 * MB, type="video_fast")

    assert error.code == "OUTPUT_TOO_LARGE"
    assert error.message.startswith("Field 'type' is invalid ('video_fast')")
    assert "MP4 of 81 frames of 480x832" in error.message
    assert f"{mp4_worst_case_bytes(480, 832, 81)} bytes" in error.message


@pytest.mark.parametrize("level", [0, 1, 9])
def test_the_png_worst_case_bounds_noise(level: int) -> None:
    pixels = np.random.default_rng(level).integers(0, 256, (200, 328, 3), dtype=np.uint8)

    assert len(encode_rgb_png(pixels, level)) <= png_worst_case_bytes(328, 200)


@pytest.mark.parametrize("crf", [0, 18])
def test_the_mp4_worst_case_bounds_noise(crf: int) -> None:
    frames = np.random.default_rng(crf).integers(0, 256, (5, 128, 96, 3), dtype=np.uint8)

    assert len(encode_mp4(frames, 16, crf=crf, preset="ultrafast")) <= mp4_worst_case_bytes(
        96, 128, 5
    )
