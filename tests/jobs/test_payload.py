"""The payload model against contract section 2."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from genjobs.errors import InvalidPayload, UnsupportedJobType
from genjobs.jobs.payload import clamp_num_images, parse_job, raw_job_id

USER = str(uuid.uuid4())


def payload(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "user_id": USER,
        "type": "sdxl_image_fast",
        "prompt": "a cat",
        "config": {},
        "metadata": {},
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("requested", "clamped"), [(-3, 1), (0, 1), (1, 1), (2, 3), (3, 3), (4, 6), (6, 6), (99, 6)]
)
def test_num_images_is_clamped_to_1_3_or_6(requested: int, clamped: int) -> None:
    assert clamp_num_images(requested) == clamped


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("wan_video_fast", "video_fast"),
        ("wan_video_high", "video_high"),
        ("video_fast", "video_fast"),
        ("sdxl_image_high", "sdxl_image_high"),
    ],
)
def test_wan_video_alias_is_normalised(raw: str, normalised: str) -> None:
    assert parse_job(payload(type=raw)).type == normalised


def test_type_falls_back_to_legacy_job_type() -> None:
    raw = payload(job_type="wan_video_high")
    del raw["type"]
    assert parse_job(raw).type == "video_high"


@pytest.mark.parametrize("job_type", ["video7b_fast_enhanced", "image7b_high_enhanced"])
def test_enhanced_types_are_refused_as_out_of_scope(job_type: str) -> None:
    with pytest.raises(UnsupportedJobType, match="prompt enhancement is out of scope") as info:
        parse_job(payload(type=job_type))
    assert info.value.code == "UNSUPPORTED_JOB_TYPE"


@pytest.mark.parametrize("job_type", ["rv51_fast", "banana", ""])
def test_unknown_types_are_refused_naming_the_field(job_type: str) -> None:
    with pytest.raises(UnsupportedJobType, match="'type'"):
        parse_job(payload(type=job_type))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": "not-a-uuid"}, "'id'"),
        ({"user_id": "../../etc"}, "'user_id'"),
        ({"id": 12}, "'id'"),
        ({"config": {"num_inference_steps": 9}}, "'config.num_inference_steps'"),
        ({"config": {"num_inference_steps": 51}}, "'config.num_inference_steps'"),
        ({"config": {"guidance_scale": 0.5}}, "'config.guidance_scale'"),
        ({"config": {"guidance_scale": float("nan")}}, "'config.guidance_scale'"),
        ({"config": {"guidance_scale": float("inf")}}, "'config.guidance_scale'"),
        ({"config": {"seed": -1}}, "'config.seed'"),
        ({"config": {"seed": 2_147_483_648}}, "'config.seed'"),
        ({"config": {"seed": "7"}}, "'config.seed'"),
        ({"config": {"resolution": "1023x1024"}}, "'config.resolution'"),
        ({"config": {"resolution": "huge"}}, "'config.resolution'"),
        ({"config": {"num_images": True}}, "'config.num_images'"),
        ({"prompt": "x" * 5000}, "'prompt'"),
        ({"prompt": 7}, "'prompt'"),
        ({"metadata": {"denoise_strength": 1.5}}, "'metadata.denoise_strength'"),
        # A value of neither number type: the field, not pydantic's union member, is named.
        (
            {"config": {"guidance_scale": "high"}},
            r"'config.guidance_scale' is invalid \('high'\): Input should be a number$",
        ),
        ({"metadata": {"reference_strength": [1]}}, "'metadata.reference_strength' is"),
    ],
)
def test_invalid_fields_are_named_in_the_error(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPayload, match=field) as info:
        parse_job(payload(**changes))
    assert info.value.code == "INVALID_PAYLOAD"


def test_missing_user_id_is_named() -> None:
    raw = payload()
    del raw["user_id"]
    with pytest.raises(InvalidPayload, match="'user_id' is invalid \\(missing\\)"):
        parse_job(raw)


def test_seed_zero_and_documented_bounds_are_accepted() -> None:
    job = parse_job(
        payload(
            config={
                "seed": 0,
                "num_inference_steps": 10,
                "guidance_scale": 20,
                "resolution": "576x1024",
            }
        )
    )
    assert job.config.seed == 0


def test_unknown_keys_and_free_form_metadata_are_kept_out_of_the_way() -> None:
    job = parse_job(
        payload(
            surprise=1,
            config={"future_knob": 3},
            metadata={"destination": "roleplay_scene", "aspect_ratio": "16:9"},
        )
    )
    assert job.metadata.model_extra == {"destination": "roleplay_scene", "aspect_ratio": "16:9"}


def test_raw_job_id_survives_an_invalid_payload() -> None:
    assert raw_job_id({"id": "not-a-uuid"}) == "not-a-uuid"
    assert raw_job_id({"job_id": "legacy"}) == "legacy"
    assert raw_job_id({"id": ""}) is None
    assert raw_job_id(["not", "a", "dict"]) is None


def test_an_unknown_type_lists_the_supported_ones() -> None:
    with pytest.raises(UnsupportedJobType) as info:
        parse_job(payload(type="sdxl_fast"))
    assert str(info.value).endswith(
        "the supported types are sdxl_image_fast, sdxl_image_high, video_fast, video_high, "
        "image_fast, image_high, wan_video_fast, wan_video_high"
    )
