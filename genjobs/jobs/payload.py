"""Pydantic models of the job payload (the flow parameter ``job``), contract section 2.

:func:`parse_job` is the one entry point: it turns a raw dict into a :class:`Job` or raises
:class:`~genjobs.errors.InvalidPayload` / :class:`~genjobs.errors.UnsupportedJobType` with a
message that names the offending field and value.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from genjobs.errors import InvalidPayload
from genjobs.jobs.types import JobTypeSpec, job_type_spec, normalise_job_type

MAX_SEED = 2_147_483_647
MAX_PROMPT_CHARS = 4000
MAX_URL_CHARS = 4096
MIN_SIDE, MAX_SIDE = 256, 2048


def clamp_num_images(requested: int) -> int:
    """Contract rule: at most 1 -> 1, at most 3 -> 3, anything more -> 6."""
    if requested <= 1:
        return 1
    if requested <= 3:
        return 3
    return 6


def parse_resolution(value: str) -> tuple[int, int]:
    """Parse ``"WxH"`` into (width, height); both multiples of 8 within the supported range."""
    parts = value.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 5 for p in parts):
        raise ValueError(f"must look like '1024x1024', got {value!r}")
    width, height = int(parts[0]), int(parts[1])
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE or side % 8:
            raise ValueError(
                f"sides must be multiples of 8 between {MIN_SIDE} and {MAX_SIDE}, got {value!r}"
            )
    return width, height


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return value


Number = StrictInt | StrictFloat


class JobConfig(BaseModel):
    """``job.config``. Unknown keys are ignored, as the backend may add some."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    pipeline: Literal["txt2img", "img2img", "video"] | None = Field(
        default=None, description="img2img needs metadata.reference_image_url; empty: by type."
    )
    num_images: StrictInt = Field(
        default=1, description="SDXL renders 1, 3 or 6 (2-3 -> 3, 4+ -> 6); video: 1."
    )
    num_inference_steps: StrictInt | None = Field(
        default=None, ge=10, le=50, description="10-50; empty: the type's default (15-50)."
    )
    guidance_scale: Number | None = Field(
        default=None, ge=1.0, le=20.0, description="1.0-20.0; empty: the type's default."
    )
    denoise_strength: Number | None = Field(
        default=None, ge=0.0, le=1.0, description="0.0-1.0; metadata.denoise_strength wins."
    )
    resolution: StrictStr | None = Field(
        default=None,
        description="SDXL 'WxH', sides multiples of 8 from 256 to 2048; empty: 1024x1024. "
        "WAN is always 480x832.",
    )
    seed: StrictInt | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Image i gets seed + i; empty: drawn from the job id.",
    )
    image: StrictStr | None = Field(
        default=None,
        max_length=MAX_URL_CHARS,
        description="Video reference for video_reference_mode 'single': a URL or storage path.",
    )
    first_frame: StrictStr | None = Field(
        default=None,
        max_length=MAX_URL_CHARS,
        description="First frame for video_reference_mode 'start' or 'both'.",
    )
    last_frame: StrictStr | None = Field(
        default=None,
        max_length=MAX_URL_CHARS,
        description="Last frame for video_reference_mode 'end' or 'both'.",
    )
    sample_solver: Literal["dpm++", "unipc"] | None = Field(
        default=None, description="Video only; empty: dpm++."
    )

    _finite_numbers = field_validator("guidance_scale", "denoise_strength")(_finite)

    @field_validator("resolution")
    @classmethod
    def _valid_resolution(cls, value: str | None) -> str | None:
        if value is not None:
            parse_resolution(value)
        return value


VideoReferenceMode = Literal["none", "single", "start", "end", "both"]


class RequestMetadata(BaseModel):
    """``job.metadata``: free-form; the keys the renderers read are typed here."""

    model_config = ConfigDict(extra="allow", frozen=True)

    exact_copy_mode: StrictBool = Field(
        default=False, description="An exact copy of reference_image_url (no prompt needed)."
    )
    reference_mode: Literal["modify", "copy"] | None = Field(
        default=None, description="Image-to-image: modify follows the prompt, copy copies."
    )
    reference_image_url: StrictStr | None = Field(
        default=None,
        max_length=MAX_URL_CHARS,
        description="workspace-temp/{user_id}/... or user-library/{user_id}/..., or a public "
        "http(s) URL.",
    )
    denoise_strength: Number | None = Field(
        default=None, ge=0.0, le=1.0, description="0.0-1.0: how far a modify departs."
    )
    reference_strength: Number | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="0.0-1.0: used as 1 - reference_strength without a denoise strength.",
    )
    video_reference_mode: VideoReferenceMode | None = Field(
        default=None, description="Which config frames a video uses; empty: none."
    )
    start_reference_url: StrictStr | None = Field(
        default=None, max_length=MAX_URL_CHARS, description="Read when config.first_frame is empty."
    )
    end_reference_url: StrictStr | None = Field(
        default=None, max_length=MAX_URL_CHARS, description="Read when config.last_frame is empty."
    )

    _finite_numbers = field_validator("denoise_strength", "reference_strength")(_finite)


class Job(BaseModel):
    """A validated job payload. ``type`` is already normalised."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: UUID = Field(description="The jobs.id row of the job.")
    user_id: UUID = Field(description="The job's owner; assets go to {user_id}/{id}/.")
    type: StrictStr = Field(description="The job type (docs/payload.md).")
    prompt: StrictStr = Field(
        default="",
        max_length=MAX_PROMPT_CHARS,
        description="Required for every job but an exact copy.",
    )
    config: JobConfig = JobConfig()
    metadata: RequestMetadata = RequestMetadata()
    negative_prompt: StrictStr | None = Field(
        default=None, max_length=MAX_PROMPT_CHARS, description="What the image should not show."
    )
    compel_enabled: StrictBool = Field(default=False, description="Prompt weighting: refused.")
    compel_weights: StrictStr | None = Field(
        default=None, max_length=MAX_PROMPT_CHARS, description="Ignored (weighting is refused)."
    )
    job_id: StrictStr | None = None
    job_type: StrictStr | None = None
    quality: StrictStr | None = None
    format: StrictStr | None = None
    content_type: StrictStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _type_from_legacy(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") is None and "job_type" in data:
            data = {**data, "type": data["job_type"]}
        return data

    @field_validator("type")
    @classmethod
    def _normalise_type(cls, value: str) -> str:
        return normalise_job_type(value)

    @field_validator("id", "user_id", mode="before")
    @classmethod
    def _uuid_text(cls, value: Any) -> Any:
        if not isinstance(value, str | UUID):
            raise ValueError(f"must be a UUID string, got {type(value).__name__}")
        return value

    @property
    def spec(self) -> JobTypeSpec:
        return job_type_spec(self.type)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (``Model`` or ``Model | None``), else None."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _field_name(loc: tuple[int | str, ...]) -> str:
    """The payload path of a validation error, as the payload spells it.

    Pydantic's location also names union members and validators (``config.guidance_scale.int``);
    only the payload's own keys are kept.
    """
    names: list[str] = []
    model: type[BaseModel] | None = Job
    for part in loc:
        if model is None:
            break
        found = next(
            (
                (name, info)
                for name, info in model.model_fields.items()
                if part in (name, info.alias, info.validation_alias)
            ),
            None,
        )
        if found is None:
            break
        names.append(str(part))
        model = _nested_model(found[1].annotation)
    return ".".join(names)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_job(raw: Any) -> Job:
    """Validate a raw payload; errors name the field and value. Also checks the job type."""
    if not isinstance(raw, dict):
        raise InvalidPayload(f"Field 'job' must be an object, got {type(raw).__name__}")
    try:
        job = Job.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = _field_name(first["loc"]) or "job"
        shown = "missing" if first["type"] == "missing" else _describe(first.get("input"))
        message = first["msg"]
        if first["loc"][-1:] in (("int",), ("float",)) and first["type"].endswith("_type"):
            message = "Input should be a number"  # the first member of the int | float union
        raise InvalidPayload(f"Field '{field}' is invalid ({shown}): {message}") from None
    job.spec  # noqa: B018 - raises UnsupportedJobType for out-of-scope and unknown types
    return job


def raw_job_id(raw: Any) -> str | None:
    """The job id to report a refusal under, even when the payload is otherwise invalid."""
    if not isinstance(raw, dict):
        return None
    value = raw.get("id", raw.get("job_id"))
    if isinstance(value, UUID):
        return str(value)
    # Control characters (NUL above all) cannot reach the backend's uuid/text columns.
    if isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable():
        return value
    return None
