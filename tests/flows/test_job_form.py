"""The job parameter's published schema: a typed form, with validation left to the flow."""

from __future__ import annotations

import json
import uuid
from typing import Any

from prefect.utilities.callables import parameter_schema

from flows.generate import generate_job
from genjobs.jobs.form import FORM_RESOLUTIONS, job_form_schema
from genjobs.jobs.payload import parse_job
from genjobs.jobs.types import JOB_TYPES


def _fields(node: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every (path, schema) of the form's leaf inputs."""
    found = []
    for name, field in node["properties"].items():
        if field.get("type") == "object" and "properties" in field:
            found += [(f"{name}.{path}", leaf) for path, leaf in _fields(field)]
        else:
            found.append((name, field))
    return found


def test_the_form_has_one_typed_input_per_payload_field_and_no_references() -> None:
    form = job_form_schema()
    assert "$ref" not in json.dumps(form) and "$defs" not in form
    fields = form["properties"]
    assert fields["id"]["format"] == "uuid" and fields["user_id"]["format"] == "uuid"
    assert fields["type"]["enum"] == sorted(JOB_TYPES)
    assert form["required"] == ["id", "user_id", "type"]
    assert "reference_image_url" in fields["metadata"]["properties"]
    assert not {"job_id", "job_type", "quality", "format", "content_type"} & set(fields)


def test_optional_fields_are_plain_inputs_with_ranges_and_pick_lists() -> None:
    form = job_form_schema()
    text = json.dumps(form)
    # No "value or null" toggles, no null defaults, no pydantic-only bound keywords.
    assert '{"type": "null"}' not in text and "anyOf" not in text
    assert '"ge"' not in text and '"le"' not in text and ": null" not in text
    leaves = dict(_fields(form))
    for path, field in leaves.items():
        assert field.get("type") in ("string", "integer", "number", "boolean"), path
        assert field.get("description"), path
    ranges = {
        "config.num_inference_steps": (10, 50),
        "config.guidance_scale": (1.0, 20.0),
        "config.denoise_strength": (0.0, 1.0),
        "config.seed": (0, 2_147_483_647),
        "metadata.denoise_strength": (0.0, 1.0),
        "metadata.reference_strength": (0.0, 1.0),
    }
    for path, (low, high) in ranges.items():
        assert (leaves[path]["minimum"], leaves[path]["maximum"]) == (low, high), path
    assert leaves["config.guidance_scale"]["type"] == "number"
    assert leaves["config.resolution"]["enum"] == list(FORM_RESOLUTIONS)
    assert leaves["config.resolution"]["default"] == "1024x1024"
    assert (leaves["config.num_images"]["enum"], leaves["config.num_images"]["default"]) == (
        [1, 3, 6],
        1,
    )
    assert leaves["config.sample_solver"]["enum"] == ["dpm++", "unipc"]
    assert leaves["metadata.video_reference_mode"]["enum"] == [
        "none",
        "single",
        "start",
        "end",
        "both",
    ]
    assert form["properties"]["config"]["default"] == {"num_images": 1}


def test_every_pick_list_entry_is_a_payload_the_flow_accepts() -> None:
    for resolution in FORM_RESOLUTIONS:
        job = parse_job(
            {
                "id": str(uuid.uuid4()),
                "user_id": str(uuid.uuid4()),
                "type": "sdxl_image_fast",
                "prompt": "a cat",
                "config": {"resolution": resolution, "num_images": 3},
            }
        )
        assert job.config.resolution == resolution


def test_the_flow_publishes_the_form_and_takes_any_object() -> None:
    schema = parameter_schema(generate_job.fn).model_dump()
    job = schema["properties"]["job"]
    assert job["properties"]["type"]["enum"] == sorted(JOB_TYPES)
    assert job["properties"]["config"]["properties"]["resolution"]["enum"] == list(FORM_RESOLUTIONS)
    assert "validates it" in job["description"]
    # Prefect's own check of the parameters lets an off-form job through to validation: an odd
    # one, and one exactly as queue-job sends it (nulls, a resolution off the pick list, legacy
    # keys, free-form metadata).
    odd = {"id": "not-a-uuid", "config": {"num_images": "three"}, "extra": [1]}
    assert generate_job.validate_parameters({"job": odd}) == {"job": odd}
    queued = {
        "id": str(uuid.uuid4()),
        "user_id": str(uuid.uuid4()),
        "type": "wan_video_fast",
        "job_type": "wan_video_fast",
        "quality": "fast",
        "format": "video",
        "content_type": "sfw",
        "prompt": "waves",
        "negative_prompt": None,
        "config": {
            "num_images": 4,
            "seed": None,
            "resolution": "1024x576",
            "sample_solver": "dpm++",
        },
        "metadata": {"aspect_ratio": "16:9", "video_reference_mode": "none", "destination": "x"},
    }
    assert generate_job.validate_parameters({"job": queued}) == {"job": queued}
    assert parse_job(queued).type == "video_fast"
