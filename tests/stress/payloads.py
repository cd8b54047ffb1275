"""Hostile job payloads for property-based tests: strategies and the field-name oracle.

Every payload starts from a valid, tiny SDXL job and is then broken in one or more ways a
careless or malicious caller could: ids that are not UUIDs or that smuggle path separators and
``..``, huge strings, NaN and infinite numbers, wrong JSON types, unknown keys, and reference
URLs that point at private, loopback or link-local addresses or use non-http schemes.
"""

from __future__ import annotations

import copy
import math
import re
import uuid
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

USER_ID = "3f1b6a52-8c0d-4d8e-9b9a-2f4c7e1d0a11"
OTHER_USER_ID = "0a0b0c0d-aaaa-4bbb-8ccc-dddddddddddd"

IN_SCOPE_TYPES = (
    "sdxl_image_fast",
    "sdxl_image_high",
    "video_fast",
    "video_high",
    "wan_video_fast",
    "image_fast",
)
OUT_OF_SCOPE_TYPES = (
    "rv51_fast",
    "rv51_high",
    "video7b_fast_enhanced",
    "image7b_high_enhanced",
    "",
    "SDXL_IMAGE_FAST",
    "sdxl_image_fast ",
    "../sdxl_image_fast",
)

TOP_LEVEL_FIELDS = (
    "id",
    "user_id",
    "type",
    "prompt",
    "config",
    "metadata",
    "negative_prompt",
    "compel_enabled",
    "compel_weights",
    "job_id",
    "job_type",
    "quality",
    "format",
    "content_type",
)
CONFIG_FIELDS = (
    "pipeline",
    "num_images",
    "num_inference_steps",
    "guidance_scale",
    "denoise_strength",
    "resolution",
    "seed",
    "image",
    "first_frame",
    "last_frame",
    "sample_solver",
)
METADATA_FIELDS = (
    "exact_copy_mode",
    "reference_mode",
    "reference_image_url",
    "denoise_strength",
    "reference_strength",
    "video_reference_mode",
    "start_reference_url",
    "end_reference_url",
)
REFERENCE_ROLES = ("image", "first_frame", "last_frame")

# Typed keys and the JSON kinds each one accepts; anything else is a wrong type.
STRING_FIELDS = ("id", "user_id", "type", "prompt", "job_id", "job_type", "quality", "format")
CONFIG_INT_FIELDS = ("num_images", "num_inference_steps", "seed")
CONFIG_NUMBER_FIELDS = ("guidance_scale", "denoise_strength")
METADATA_NUMBER_FIELDS = ("denoise_strength", "reference_strength")

_QUOTED = re.compile(r"'([A-Za-z_][\w.]*)'")


def named_fields(message: str) -> list[str]:
    """Quoted payload field names in a refusal message (``'config.seed'`` -> ``config.seed``).

    A field counts when its first part is a top-level payload key (``job`` for the whole
    payload) or a reference role; union-member suffixes such as ``.int`` are allowed.
    """
    roots = {*TOP_LEVEL_FIELDS, "job", *REFERENCE_ROLES}
    return [name for name in _QUOTED.findall(message) if name.split(".")[0] in roots]


def is_enhanced_type(job_type: str) -> bool:
    return "7b" in job_type and job_type.endswith("_enhanced")


def base_payload(job_type: str = "sdxl_image_fast") -> dict[str, Any]:
    """A valid tiny job: one 256x256 image in 10 steps (fixed size for WAN types)."""
    return {
        "id": str(uuid.uuid4()),
        "user_id": USER_ID,
        "type": job_type,
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "blurry",
        "config": {"num_images": 1, "num_inference_steps": 10, "resolution": "256x256"},
        "metadata": {"aspect_ratio": "1:1"},
    }


# --- Building blocks ----------------------------------------------------------------------------

PATH_TRICKS = (
    "..",
    "../..",
    "../../etc/passwd",
    "a/b",
    "/absolute",
    "..\\..\\windows",
    "%2e%2e%2f%2e%2e",
    "./.",
    "x\x00y",
    "x\ud800y",  # a lone surrogate: valid in JSON text, not encodable as UTF-8
    "\u2215etc\u2215passwd",  # division slash
    "..%c0%af",
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return False
    return True


not_uuid_text = st.one_of(
    st.sampled_from(PATH_TRICKS),
    # Tricks around a real UUID: unique, and almost valid.
    st.builds(lambda trick, u: f"{trick}/{u}", st.sampled_from(PATH_TRICKS), st.uuids()),
    st.uuids().map(lambda u: f"{u}/.."),
    st.uuids().map(lambda u: f"../{u}"),
    st.text(min_size=1, max_size=60).filter(lambda s: not _is_uuid(s)),
)
huge_text = st.builds(
    lambda char, length: char * length,
    st.sampled_from(["x", "\u00e9", "\U0001f600", "/", "'", "\x00"]),
    st.integers(min_value=4001, max_value=200_000),
)
huge_ints = st.one_of(
    st.integers(min_value=2**31, max_value=2**200), st.integers(max_value=-1, min_value=-(2**200))
)


def _not_strings() -> st.SearchStrategy[Any]:
    """JSON values of every type but string (and not None, which optional fields accept)."""
    return st.one_of(
        st.integers(),
        st.floats(allow_nan=True),
        st.booleans(),
        st.lists(st.text(max_size=5), max_size=2),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    )


# --- Reference URLs ------------------------------------------------------------------------------

PRIVATE_NETWORKS_V4 = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "0.0.0.0/8",
)
PRIVATE_NETWORKS_V6 = ("::1/128", "fe80::/10", "fc00::/7")
PRIVATE_HOST_SPELLINGS = (
    "localhost",
    "127.1",
    "0x7f000001",
    "2130706433",
    "017700000001",
    "[::ffff:127.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[64:ff9b::a9fe:a9fe]",
    "[2002:7f00:1::]",
)

private_hosts = st.one_of(
    st.sampled_from(PRIVATE_NETWORKS_V4).flatmap(lambda net: st.ip_addresses(network=net)).map(str),
    st.sampled_from(PRIVATE_NETWORKS_V6)
    .flatmap(lambda net: st.ip_addresses(network=net))
    .map(lambda ip: f"[{ip}]"),
    st.sampled_from(PRIVATE_HOST_SPELLINGS),
)
private_reference_urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}/{path}",
    st.sampled_from(["http", "https", "HTTP"]),
    private_hosts,
    st.sampled_from(["", ":80", ":8080", ":54321"]),
    st.sampled_from(["a.png", "latest/meta-data/", "x.png?token=secret", "storage/v1/object"]),
)
bad_scheme_reference_urls = st.one_of(
    st.sampled_from(
        [
            "file:///etc/passwd",
            "FILE:///etc/shadow",
            "file://localhost/etc/passwd",
            "gopher://127.0.0.1:6379/_FLUSHALL",
            "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==",
            "javascript:alert(document.cookie)",
            "JavaScript:void(0)",
            "ftp://example.com/a.png",
            "dict://127.0.0.1:11211/stats",
            "jar:http://example.com/a.jar!/x.png",
        ]
    ),
    st.builds(
        lambda scheme, rest: f"{scheme}:{rest}",
        st.sampled_from(["file", "gopher", "data", "javascript", "ldap", "smb"]),
        st.text(
            alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"),
            min_size=1,
            max_size=40,
        ),
    ),
)
cross_user_reference_urls = st.sampled_from(
    [
        f"workspace-temp/{OTHER_USER_ID}/job/0.png",
        f"user-library/{OTHER_USER_ID}/a.png",
        f"workspace-temp/{USER_ID}/../{OTHER_USER_ID}/0.png",
        f"workspace-temp/{USER_ID}/./0.png",
        f"workspace-temp/{USER_ID}//0.png",
        f"workspace-temp/{USER_ID}\\..\\{OTHER_USER_ID}\\0.png",
        f"user-library/{USER_ID}",
        "workspace-temp/../user-library/x.png",
        f"https://abc.supabase.co/storage/v1/object/sign/workspace-temp/{OTHER_USER_ID}/a.png?token=t",
        f"https://abc.supabase.co/storage/v1/object/public/user-library/{USER_ID}/..%2F{OTHER_USER_ID}/a.png",
    ]
)


def place_reference(payload: dict[str, Any], url: str, slot: str) -> dict[str, Any]:
    """Put ``url`` where a job reads a reference: SDXL modify/copy, or a WAN reference mode."""
    job = copy.deepcopy(payload)
    if slot in ("modify", "copy"):
        job["type"] = "sdxl_image_fast"
        job["config"]["pipeline"] = "img2img"
        job["metadata"].update(
            {"reference_image_url": url, "reference_mode": slot, "exact_copy_mode": slot == "copy"}
        )
    else:
        job["type"] = "video_fast"
        job["config"].pop("resolution", None)
        field = {"single": "image", "start": "first_frame", "end": "last_frame"}[slot]
        job["config"][field] = url
        job["metadata"]["video_reference_mode"] = slot
    return job


REFERENCE_SLOTS = ("modify", "copy", "single", "start", "end")


# --- Mutations -----------------------------------------------------------------------------------


class Hostile:
    """A hostile payload and a short label of what was done to it.

    A plain class with a short ``repr`` (not a dataclass, whose fields Hypothesis would print
    in full): a payload may hold a prompt of 200 000 characters.
    """

    __slots__ = ("label", "payload")

    def __init__(self, label: str, payload: dict[str, Any]):
        self.label = label
        self.payload = payload

    def __repr__(self) -> str:
        shown = repr(self.payload)
        return f"Hostile({self.label!r}, {shown[:300]}{'...' if len(shown) > 300 else ''})"


def _set(payload: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    job = copy.deepcopy(payload)
    *parents, last = path.split(".")
    target = job
    for part in parents:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[last] = value
    return job


def _drop(payload: dict[str, Any], key: str) -> dict[str, Any]:
    job = copy.deepcopy(payload)
    job.pop(key, None)
    return job


@st.composite
def refused_payloads(draw: st.DrawFn) -> Hostile:
    """One hostile change that validation must refuse, before any render, naming the field."""
    payload = base_payload(draw(st.sampled_from(("sdxl_image_fast", "sdxl_image_high"))))
    kind = draw(
        st.sampled_from(
            (
                "id_not_uuid",
                "user_id_not_uuid",
                "id_wrong_type",
                "id_missing",
                "huge_prompt",
                "huge_negative_prompt",
                "non_finite_number",
                "huge_int",
                "wrong_type",
                "bad_type",
                "bad_scheme_reference",
                "cross_user_reference",
            )
        )
    )
    if kind == "id_not_uuid":
        return Hostile(kind, _set(payload, "id", draw(not_uuid_text)))
    if kind == "user_id_not_uuid":
        return Hostile(kind, _set(payload, "user_id", draw(not_uuid_text)))
    if kind == "id_wrong_type":
        return Hostile(kind, _set(payload, "id", draw(_not_strings())))
    if kind == "id_missing":
        return Hostile(kind, _drop(payload, "id"))
    if kind == "huge_prompt":
        return Hostile(kind, _set(payload, "prompt", draw(huge_text)))
    if kind == "huge_negative_prompt":
        return Hostile(kind, _set(payload, "negative_prompt", draw(huge_text)))
    if kind == "non_finite_number":
        field = draw(
            st.sampled_from(
                [f"config.{f}" for f in (*CONFIG_NUMBER_FIELDS, *CONFIG_INT_FIELDS)]
                + [f"metadata.{f}" for f in METADATA_NUMBER_FIELDS]
            )
        )
        return Hostile(f"{kind}:{field}", _set(payload, field, draw(non_finite)))
    if kind == "huge_int":
        field = draw(st.sampled_from(["config.seed", "config.num_inference_steps"]))
        return Hostile(f"{kind}:{field}", _set(payload, field, draw(huge_ints)))
    if kind == "wrong_type":
        field = draw(
            st.sampled_from(
                [*STRING_FIELDS[2:], "config", "metadata", "compel_enabled"]
                + [f"config.{f}" for f in CONFIG_INT_FIELDS]
                + [f"metadata.{f}" for f in ("exact_copy_mode", *METADATA_NUMBER_FIELDS)]
            )
        )
        value = draw(_wrong_value_for(field))
        return Hostile(f"{kind}:{field}", _set(payload, field, value))
    if kind == "bad_type":
        return Hostile(kind, _set(payload, "type", draw(st.sampled_from(OUT_OF_SCOPE_TYPES))))
    slot = draw(st.sampled_from(REFERENCE_SLOTS))
    urls = (
        bad_scheme_reference_urls if kind == "bad_scheme_reference" else cross_user_reference_urls
    )
    return Hostile(f"{kind}:{slot}", place_reference(payload, draw(urls), slot))


def _wrong_value_for(field: str) -> st.SearchStrategy[Any]:
    if field in ("config", "metadata"):
        return st.one_of(st.text(max_size=5), st.integers(), st.lists(st.integers(), max_size=2))
    if field in ("compel_enabled", "metadata.exact_copy_mode"):
        return st.one_of(
            st.sampled_from(["true", "yes", 1, 0]), st.lists(st.booleans(), max_size=1)
        )
    if field.startswith("config.") and field.split(".")[1] in CONFIG_INT_FIELDS:
        return st.one_of(
            st.sampled_from(["10", 12.5, True, False]), st.lists(st.integers(), max_size=2)
        )
    if field.split(".")[-1] in METADATA_NUMBER_FIELDS:
        return st.sampled_from(["0.5", True, [0.5], {"value": 0.5}])
    return _not_strings()


@st.composite
def hostile_payloads(draw: st.DrawFn) -> Hostile:
    """Anything: a refused or valid start, then up to three more hostile changes anywhere."""
    valid = st.sampled_from(IN_SCOPE_TYPES).map(lambda t: Hostile("valid", base_payload(t)))
    start = draw(st.one_of(refused_payloads(), valid))
    labels, payload = [start.label], start.payload
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        move = draw(st.sampled_from(("any_value", "unknown_key", "reference", "private_ref")))
        if move == "any_value":
            field = draw(
                st.sampled_from(
                    [*TOP_LEVEL_FIELDS]
                    + [f"config.{f}" for f in CONFIG_FIELDS]
                    + [f"metadata.{f}" for f in METADATA_FIELDS]
                )
            )
            labels.append(f"any_value:{field}")
            payload = _set(payload, field, draw(json_values))
        elif move == "unknown_key":
            where = draw(st.sampled_from(("", "config.", "metadata.")))
            key = draw(st.text(min_size=1, max_size=12).filter(lambda k: "." not in k))
            labels.append(f"unknown_key:{where}{key!r}")
            payload = _set(payload, where + key, draw(json_values))
        else:
            urls = (
                private_reference_urls
                if move == "private_ref"
                else st.one_of(bad_scheme_reference_urls, cross_user_reference_urls)
            )
            slot = draw(st.sampled_from(REFERENCE_SLOTS))
            labels.append(f"{move}:{slot}")
            if isinstance(payload.get("config"), dict) and isinstance(
                payload.get("metadata"), dict
            ):
                payload = place_reference(payload, draw(urls), slot)
    return Hostile("+".join(labels), payload)


def _not_in(names: set[str]) -> Callable[[str], bool]:
    return lambda key: key not in names


@st.composite
def unknown_keys(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    """Extra keys for the top level, ``config`` and ``metadata`` that no model declares."""
    known = {
        "": set(TOP_LEVEL_FIELDS),
        "config": set(CONFIG_FIELDS),
        "metadata": set(METADATA_FIELDS) | {"aspect_ratio"},
    }
    extras: dict[str, dict[str, Any]] = {}
    for where, names in known.items():
        extras[where] = draw(
            st.dictionaries(
                st.text(min_size=1, max_size=12).filter(_not_in(names)),
                json_values,
                max_size=3,
            )
        )
    return extras
