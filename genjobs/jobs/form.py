"""The ``job`` parameter as the Prefect UI shows it: a typed, documented form.

The flow takes the job as a plain JSON object (``dict``), so whatever queue-job sends reaches
validation, which answers a bad payload with an error naming the field and a failed callback.
The schema published for the parameter is that of the payload model (genjobs/jobs/payload.py),
with its references inlined and shaped for a person: an optional field is a plain input (left
empty, it is not sent) rather than a choice between a value and ``null``, numbers show their
ranges, and the batch size and resolution are pick lists. The generation deployments set
``enforce_parameter_schema: false``: the API does not refuse a payload the form would not allow
(any resolution the payload model takes, say), the flow does, and reports it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import WithJsonSchema

from genjobs.jobs.payload import Job
from genjobs.jobs.plan import DEFAULT_RESOLUTION
from genjobs.jobs.types import JOB_TYPES

FORM_RESOLUTIONS = ("1024x1024", "1024x576", "576x1024", "768x768", "512x512", "256x256")
"""The form's pick list: the app's three aspect ratios, and smaller squares for quick runs."""
FORM_BATCH_SIZES = (1, 3, 6)
LEGACY_KEYS = ("job_id", "job_type", "quality", "format", "content_type")

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


def _plain(node: Any) -> Any:
    """``node`` with ``X | None`` turned into ``X``, number unions into one bounded ``number``,
    and null defaults dropped, all the way down."""
    if isinstance(node, list):
        return [_plain(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _plain(value) for key, value in node.items()}
    members = node.get("anyOf")
    if isinstance(members, list):
        kept = [m for m in members if m != {"type": "null"}]
        if {m.get("type") for m in kept} == {"integer", "number"}:
            kept = [{"type": "number"}]
        if len(kept) == 1:
            node = {**{k: v for k, v in node.items() if k != "anyOf"}, **kept[0]}
    for bound, name in (("ge", "minimum"), ("le", "maximum")):
        if bound in node:  # pydantic's constraint on a union, as JSON schema spells it
            node[name] = node.pop(bound)
    if node.get("default", ...) is None:
        del node["default"]
    elif isinstance(node.get("default"), dict):
        node["default"] = {k: v for k, v in node["default"].items() if v is not None}
    return node


def job_form_schema() -> dict[str, Any]:
    """The JSON schema of the job payload, self-contained (no ``$defs``), as a form."""
    schema = Job.model_json_schema()
    definitions = schema.pop("$defs", {})
    form: dict[str, Any] = _plain(_inline(schema, definitions))
    config = form["properties"]["config"]["properties"]
    config["resolution"]["enum"] = list(FORM_RESOLUTIONS)
    config["resolution"]["default"] = DEFAULT_RESOLUTION
    config["num_images"]["enum"] = list(FORM_BATCH_SIZES)
    for legacy in LEGACY_KEYS:  # still accepted (additionalProperties), not asked for
        del form["properties"][legacy]
    form["title"] = "Job"
    form["description"] = _DESCRIPTION
    form["additionalProperties"] = True
    form["properties"]["type"]["enum"] = sorted(JOB_TYPES)  # a pick list in the form
    form["required"] = ["id", "user_id", "type"]
    return form


JobParameter = Annotated[dict[str, Any], WithJsonSchema(job_form_schema())]
"""The flow's ``job`` parameter: validated as any JSON object, published as the payload form."""
