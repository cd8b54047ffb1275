"""The job parameter's published schema: a typed form, with validation left to the flow."""

from __future__ import annotations

import json

from prefect.utilities.callables import parameter_schema

from flows.generate import generate_job
from genjobs.jobs.form import job_form_schema
from genjobs.jobs.types import JOB_TYPES


def test_the_form_has_one_typed_input_per_payload_field_and_no_references() -> None:
    form = job_form_schema()
    assert "$ref" not in json.dumps(form) and "$defs" not in form
    fields = form["properties"]
    assert fields["id"]["format"] == "uuid" and fields["user_id"]["format"] == "uuid"
    assert fields["type"]["enum"] == sorted(JOB_TYPES)
    assert fields["config"]["properties"]["num_images"] == {
        "default": 1,
        "title": "Num Images",
        "type": "integer",
    }
    steps = fields["config"]["properties"]["num_inference_steps"]["anyOf"][0]
    assert (steps["minimum"], steps["maximum"]) == (10, 50)
    assert "reference_image_url" in fields["metadata"]["properties"]
    assert form["required"] == ["id", "user_id", "type"]


def test_the_flow_publishes_the_form_and_takes_any_object() -> None:
    schema = parameter_schema(generate_job.fn).model_dump()
    job = schema["properties"]["job"]
    assert job["properties"]["type"]["enum"] == sorted(JOB_TYPES)
    assert "validates it" in job["description"]
    # Prefect's own check of the parameters lets an off-form job through to validation.
    odd = {"id": "not-a-uuid", "config": {"num_images": "three"}, "extra": [1]}
    assert generate_job.validate_parameters({"job": odd}) == {"job": odd}
