"""The job-type table: which renderer, defaults and output each normalised job type gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genjobs.errors import UnsupportedJobType

Family = Literal["sdxl", "wan"]
OutputKind = Literal["image", "video"]

WAN_FPS = 16
WAN_WIDTH = 480
WAN_HEIGHT = 832
WAN_REQUESTED_FRAMES = 83
WAN_SAMPLE_SHIFT = 5.0


def wan_frame_count(requested: int) -> int:
    """Round a requested frame count down to the 4k+1 form WAN needs (83 -> 81)."""
    return (requested - 1) // 4 * 4 + 1


@dataclass(frozen=True)
class JobTypeSpec:
    """Defaults of one in-scope job type (contract section 2)."""

    name: str
    family: Family
    output: OutputKind
    steps: int
    guidance_scale: float
    frames: int | None = None
    fixed_size: tuple[int, int] | None = None  # (width, height); None: from config.resolution


JOB_TYPES: dict[str, JobTypeSpec] = {
    spec.name: spec
    for spec in (
        JobTypeSpec("sdxl_image_fast", "sdxl", "image", steps=15, guidance_scale=6.0),
        JobTypeSpec("sdxl_image_high", "sdxl", "image", steps=25, guidance_scale=7.5),
        JobTypeSpec(
            "video_fast",
            "wan",
            "video",
            steps=25,
            guidance_scale=6.5,
            frames=wan_frame_count(WAN_REQUESTED_FRAMES),
            fixed_size=(WAN_WIDTH, WAN_HEIGHT),
        ),
        JobTypeSpec(
            "video_high",
            "wan",
            "video",
            steps=50,
            guidance_scale=7.5,
            frames=wan_frame_count(WAN_REQUESTED_FRAMES),
            fixed_size=(WAN_WIDTH, WAN_HEIGHT),
        ),
        JobTypeSpec(
            "image_fast",
            "wan",
            "image",
            steps=25,
            guidance_scale=6.5,
            frames=1,
            fixed_size=(WAN_WIDTH, WAN_HEIGHT),
        ),
        JobTypeSpec(
            "image_high",
            "wan",
            "image",
            steps=50,
            guidance_scale=7.5,
            frames=1,
            fixed_size=(WAN_WIDTH, WAN_HEIGHT),
        ),
    )
}


WAN_VIDEO_ALIAS = "wan_video_"


def supported_job_types() -> list[str]:
    """Every type a job may name: the table's types and the ``wan_video_*`` aliases."""
    aliases = [
        WAN_VIDEO_ALIAS + name.removeprefix("video_")
        for name in JOB_TYPES
        if name.startswith("video_")
    ]
    return [*JOB_TYPES, *aliases]


def normalise_job_type(raw: str) -> str:
    """Apply the contract's alias: a leading ``wan_video_`` becomes ``video_``."""
    return "video_" + raw[len(WAN_VIDEO_ALIAS) :] if raw.startswith(WAN_VIDEO_ALIAS) else raw


def job_type_spec(job_type: str) -> JobTypeSpec:
    """The spec of a normalised job type, or :class:`UnsupportedJobType` naming it."""
    spec = JOB_TYPES.get(job_type)
    if spec is not None:
        return spec
    if "7b" in job_type and job_type.endswith("_enhanced"):
        raise UnsupportedJobType(
            f"Job type {job_type} is not supported: prompt enhancement is out of scope"
        )
    raise UnsupportedJobType(
        f"Job type {job_type!r} (field 'type') is not supported; the supported types are "
        f"{', '.join(supported_job_types())}"
    )
