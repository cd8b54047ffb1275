"""The ``job`` parameter as the Prefect UI shows it: a typed, documented form.

The flow takes the job as a plain JSON object (``dict``), so whatever queue-job sends reaches
validation, which answers a bad payload with an error naming the field and a failed callback.
The schema published for the parameter is that of the payload model (genjobs/jobs/payload.py),
with its references inlined, so the run form in the UI has one typed input per field. The
generation deployments set ``enforce_parameter_schema: false``: the API does not refuse a
payload the form would not allow, the flow does, and reports it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import WithJsonSchema

from genjobs.jobs.payload import Job
from genjobs.jobs.types import JOB_TYPES

_DESCRIPTION = (
    "The job exactly as queue-job sends it: id and user_id (UUIDs), type, prompt, "
    "negative_prompt, config (num_images 1/3/6, num_inference_steps, guidance_scale, "
    "resolution, seed, pipeline, reference frames) and metadata (reference mode and URLs, "
    "strengths). Unknown keys are ignored."
)


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/X"}`` replaced by the definition itself."""
    if isinstance(node, dict):
        reference = node.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/$defs/"):
            target = definitions[reference.removeprefix("#/$defs/")]
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return _inline(merged, definitions)
        return {key: _inline(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    return node


def job_form_schema() -> dict[str, Any]:
    """The JSON schema of the job payload, self-contained (no ``$defs``), as a form."""
    schema = Job.model_json_schema()
    definitions = schema.pop("$defs", {})
    form: dict[str, Any] = _inline(schema, definitions)
    form["title"] = "Job"
    form["description"] = _DESCRIPTION
    form["additionalProperties"] = True
    form["properties"]["type"]["enum"] = sorted(JOB_TYPES)  # a pick list in the form
    form["required"] = ["id", "user_id", "type"]
    return form


JobParameter = Annotated[dict[str, Any], WithJsonSchema(job_form_schema())]
"""The flow's ``job`` parameter: validated as any JSON object, published as the payload form."""
