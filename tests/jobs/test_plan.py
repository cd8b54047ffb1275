"""Effective values decided by the plan (contract sections 2, 3)."""

from __future__ import annotations

from typing import Any

import pytest

from genjobs.errors import InvalidPayload, ReferenceModeUnsupported
from genjobs.jobs.payload import MAX_SEED, parse_job
from genjobs.jobs.plan import WAN_DEFAULT_NEGATIVE_PROMPT, RenderPlan, plan_job
from genjobs.metadata import job_metadata
from tests.jobs.test_payload import USER, payload

REF = f"workspace-temp/{USER}/old/0.png"


def plan(**changes: Any) -> RenderPlan:
    return plan_job(parse_job(payload(**changes)))


def test_sdxl_defaults_follow_the_job_type_table() -> None:
    fast, high = plan(), plan(type="sdxl_image_high")
    assert (fast.steps, fast.guidance_scale, fast.width, fast.height) == (15, 6.0, 1024, 1024)
    assert (high.steps, high.guidance_scale) == (25, 7.5)


def test_config_overrides_the_table_and_resolution_is_honoured() -> None:
    p = plan(config={"num_inference_steps": 30, "guidance_scale": 4.5, "resolution": "1024x576"})
    assert (p.steps, p.guidance_scale, p.width, p.height) == (30, 4.5, 1024, 576)


def test_seed_zero_is_a_seed_and_each_image_gets_base_plus_index() -> None:
    p = plan(config={"seed": 0, "num_images": 6})
    assert p.seeds == (0, 1, 2, 3, 4, 5)
    assert (p.base_seed, p.seed_source) == (0, "request")


def test_random_base_is_drawn_reported_and_keeps_every_seed_valid() -> None:
    for _ in range(50):
        p = plan(config={"num_images": 6})
        assert p.seed_source == "random"
        assert len(set(p.seeds)) == 6
        assert p.seeds[0] >= 1 and p.seeds[-1] <= MAX_SEED


def test_modify_uses_denoise_strength_then_reference_strength() -> None:
    p = plan(
        config={"pipeline": "img2img"},
        metadata={"reference_image_url": REF, "denoise_strength": 0.3},
    )
    assert (p.mode, p.strength, p.denoising_steps) == ("img2img", 0.3, 4)
    q = plan(
        config={"pipeline": "img2img"},
        metadata={"reference_image_url": REF, "reference_strength": 0.8},
    )
    assert q.strength == pytest.approx(0.2)


def test_exact_copy_always_runs_at_least_one_denoising_step() -> None:
    p = plan(
        metadata={"exact_copy_mode": True, "reference_image_url": REF, "denoise_strength": 0.05},
        negative_prompt="ugly",
    )
    assert p.mode == "copy"
    assert (p.prompt, p.negative_prompt, p.guidance_scale) == ("", None, 1.0)
    assert p.strength == 0.05 and p.denoising_steps >= 1


def test_image_to_image_without_reference_names_the_field() -> None:
    with pytest.raises(InvalidPayload, match=r"metadata\.reference_image_url"):
        plan(config={"pipeline": "img2img"})


def test_wan_video_is_480_wide_832_tall_81_frames_16_fps() -> None:
    p = plan(type="wan_video_fast", config={"seed": 0})
    assert (p.width, p.height, p.num_frames, p.fps) == (480, 832, 81, 16)
    assert (p.steps, p.guidance_scale, p.sample_solver, p.sample_shift) == (25, 6.5, "dpm++", 5.0)
    assert p.seeds == (0,) and p.num_images == 1
    assert p.negative_prompt == WAN_DEFAULT_NEGATIVE_PROMPT
    assert plan(type="video_high", negative_prompt="blurry").negative_prompt == "blurry"


def test_wan_honours_steps_and_guidance_from_config() -> None:
    p = plan(type="video_high", config={"num_inference_steps": 12, "guidance_scale": 3.0})
    assert (p.steps, p.guidance_scale) == (12, 3.0)


@pytest.mark.parametrize(
    ("mode", "config", "roles"),
    [
        ("single", {"image": "https://x/a.png"}, ["image"]),
        ("start", {"first_frame": "https://x/a.png"}, ["first_frame"]),
        ("end", {"last_frame": "https://x/b.png"}, ["last_frame"]),
        (
            "both",
            {"first_frame": "https://x/a.png", "last_frame": "https://x/b.png"},
            ["first_frame", "last_frame"],
        ),
    ],
)
def test_video_reference_modes_map_to_roles(
    mode: str, config: dict[str, str], roles: list[str]
) -> None:
    p = plan(type="video_fast", config=config, metadata={"video_reference_mode": mode})
    assert [r.role for r in p.references] == roles and p.reference_mode == mode


def test_video_reference_without_its_url_names_the_field() -> None:
    with pytest.raises(InvalidPayload, match=r"config\.last_frame"):
        plan(type="video_fast", metadata={"video_reference_mode": "end"})


def test_single_frame_types_refuse_references() -> None:
    with pytest.raises(ReferenceModeUnsupported):
        plan(
            type="image_fast",
            config={"image": "https://x/a.png"},
            metadata={"video_reference_mode": "single"},
        )
    assert plan(type="image_fast").num_frames == 1


def test_prompt_weighting_is_refused_not_dropped() -> None:
    with pytest.raises(InvalidPayload, match="compel_enabled") as info:
        plan(compel_enabled=True, compel_weights="(cat:1.3)")
    assert info.value.code == "COMPEL_UNSUPPORTED"


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        ({"prompt": ""}, "text-to-image"),
        ({"prompt": "   "}, "text-to-image"),
        (
            {
                "prompt": "",
                "config": {"pipeline": "img2img"},
                "metadata": {"reference_image_url": REF},
            },
            "image-to-image",
        ),
        ({"prompt": "", "type": "video_fast"}, "video"),
        ({"prompt": "", "type": "image_fast"}, "single-frame"),
    ],
)
def test_an_empty_prompt_is_refused_naming_the_field_except_for_exact_copy(
    changes: dict[str, Any], what: str
) -> None:
    with pytest.raises(InvalidPayload, match=f"Field 'prompt' is required for {what} jobs") as info:
        plan(**changes)
    assert info.value.code == "INVALID_PAYLOAD"
    copy = plan(prompt="", metadata={"exact_copy_mode": True, "reference_image_url": REF})
    assert (copy.mode, copy.prompt) == ("copy", "")


@pytest.mark.parametrize(
    ("job_type", "requested", "effective"),
    [
        ("sdxl_image_fast", 4, 6),
        ("sdxl_image_fast", 2, 3),
        ("sdxl_image_fast", 6, 6),
        ("video_fast", 3, 1),
    ],
)
def test_a_clamped_batch_keeps_the_requested_count_and_says_so(
    job_type: str, requested: int, effective: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="genjobs.jobs.plan"):
        p = plan(type=job_type, config={"num_images": requested})
    assert (p.num_images, p.num_images_requested, len(p.seeds)) == (effective, requested, effective)
    warned = [r.getMessage() for r in caplog.records if r.name == "genjobs.jobs.plan"]
    if requested == effective:
        assert warned == []
    else:
        assert len(warned) == 1
        assert f"asked for {requested} image(s); {job_type} renders {effective}" in warned[0]


def test_the_job_metadata_reports_the_requested_count_beside_the_rendered_one() -> None:
    meta = job_metadata(plan(config={"num_images": 4}), {}, 1.0, None)
    assert (meta["num_images"], meta["num_images_requested"]) == (6, 4)
