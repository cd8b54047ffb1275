"""Hostile job payloads, fuzzed: refused with a clear error naming the field, never rendered.

The pure part runs validation (``parse_job`` + ``plan_job`` + ``classify_references``) over
hundreds of generated payloads; the flow part sends a bounded number of them through the real
``generate_job`` flow on a real Prefect API and the local callback receiver.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from prefect.exceptions import PrefectHTTPStatusError

from flows.generate import generate_job
from genjobs.assets import scratch_dir
from genjobs.callback.payload import failure_payload, serialise, storable_text
from genjobs.connections import Connections
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.errors import (
    InvalidPayload,
    JobError,
    ReferenceDownloadError,
    UnsupportedJobType,
)
from genjobs.jobs.payload import parse_job, raw_job_id
from genjobs.jobs.plan import RenderPlan, plan_job
from genjobs.references import HttpReference, ReferenceFetcher, classify_references
from genjobs.render.cache import PIPELINES
from genjobs.storage.base import asset_path, thumbnail_path
from genjobs.storage.local import LocalFolderStorage
from tests.flows.helpers import task_run_counts
from tests.stress.payloads import (
    REFERENCE_SLOTS,
    USER_ID,
    Hostile,
    bad_scheme_reference_urls,
    base_payload,
    hostile_payloads,
    is_enhanced_type,
    named_fields,
    place_reference,
    private_reference_urls,
    refused_payloads,
    unknown_keys,
)

PURE = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
THROUGH_THE_FLOW = settings(
    max_examples=20,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MAX_MESSAGE_CHARS = 1000
# What PostgreSQL text (jobs.error_message) and UTF-8 JSON cannot carry, or should not show.
UNSAFE_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
ENHANCED_MESSAGE = re.compile(
    r"^Job type (\S+) is not supported: prompt enhancement is out of scope$"
)


def validate(payload: Any) -> RenderPlan:
    """The validation stage of the flow, exactly as ``tasks.validate`` runs it."""
    plan = plan_job(parse_job(payload))
    classify_references(plan)
    return plan


def assert_clear_refusal(refusal: JobError) -> None:
    """A refusal is permanent, short, printable and names the field it is about."""
    message = refusal.message
    assert isinstance(message, str) and message
    assert refusal.code and refusal.code == refusal.code.upper(), refusal.code
    assert refusal.retryable is False, message
    assert len(message) <= MAX_MESSAGE_CHARS, f"{len(message)} characters: {message[:200]}"
    enhanced = ENHANCED_MESSAGE.match(message)
    if isinstance(refusal, UnsupportedJobType) and enhanced:
        # Contract 5.5 gives this message word for word; it names the job type itself.
        assert is_enhanced_type(enhanced.group(1))
        return
    assert named_fields(message), f"no field named in: {message}"


def assert_safe_paths(plan: RenderPlan, work_dir: Path) -> None:
    """Accepted ids are canonical UUIDs, so every object path and scratch folder is safe."""
    assert str(uuid.UUID(plan.job_id)) == plan.job_id
    assert str(uuid.UUID(plan.user_id)) == plan.user_id
    for index in range(plan.num_images):
        for path in (
            asset_path(plan.user_id, plan.job_id, index, plan.extension),
            thumbnail_path(plan.user_id, plan.job_id, index),
        ):
            parts = path.split("/")
            assert parts[:2] == [plan.user_id, plan.job_id] and len(parts) == 3, path
            assert ".." not in parts and "\\" not in path
    folder = scratch_dir(work_dir, plan.job_id).resolve()
    assert folder.parent == work_dir.resolve()


# --- Pure: validation over many generated payloads ----------------------------------------------


@PURE
@given(hostile=hostile_payloads())
@example(hostile=Hostile("nul_id", {**base_payload(), "id": "x\x00y"}))
@example(hostile=Hostile("surrogate_id", {**base_payload(), "id": "x\ud800y"}))
@example(hostile=Hostile("surrogate_type", {**base_payload(), "type": "sdxl\ud800"}))
@example(
    hostile=Hostile(
        "nul_reference",
        place_reference(base_payload(), f"workspace-temp/{USER_ID}/a\x00.png", "modify"),
    )
)
@example(
    hostile=Hostile(
        "surrogate_reference",
        place_reference(base_payload(), f"workspace-temp/{USER_ID}/\ud800\x01.png", "start"),
    )
)
def test_validation_refuses_only_with_job_errors_that_name_the_field(hostile: Hostile) -> None:
    try:
        plan = validate(hostile.payload)
    except JobError as refusal:
        assert_clear_refusal(refusal)
        # The failed callback can carry it: UTF-8 JSON, and text PostgreSQL can store.
        body = serialise(failure_payload(raw_job_id(hostile.payload) or "none", refusal))
        sent = json.loads(body)
        assert not UNSAFE_CHARACTERS.search(sent["error_message"] + sent["job_id"]), sent
        return
    assert_safe_paths(plan, Path("/srv/genjobs/work"))


@PURE
@given(hostile=refused_payloads())
@example(hostile=Hostile("id_traversal", {**base_payload(), "id": "../../etc/passwd"}))
@example(hostile=Hostile("user_id_traversal", {**base_payload(), "user_id": "..\\..\\x"}))
@example(hostile=Hostile("nan", {**base_payload(), "config": {"guidance_scale": math.nan}}))
@example(hostile=Hostile("inf", {**base_payload(), "metadata": {"denoise_strength": -math.inf}}))
@example(hostile=Hostile("enhanced", {**base_payload(), "type": "video7b_fast_enhanced"}))
def test_every_single_hostile_change_is_refused_before_any_render(hostile: Hostile) -> None:
    with pytest.raises(JobError) as caught:
        validate(hostile.payload)
    assert_clear_refusal(caught.value)
    assert isinstance(caught.value, InvalidPayload | UnsupportedJobType), caught.value


@settings(PURE, max_examples=100)
@given(extras=unknown_keys(), job_type=st.sampled_from(["sdxl_image_fast", "video_high"]))
def test_unknown_keys_are_ignored(extras: dict[str, dict[str, Any]], job_type: str) -> None:
    plain = base_payload(job_type)
    noisy = {
        **extras[""],
        **plain,
        "config": {**extras["config"], **plain["config"]},
        "metadata": {**extras["metadata"], **plain["metadata"]},
    }
    if job_type.startswith("video"):
        for job in (plain, noisy):
            job["config"].pop("resolution")
    assert validate(noisy) == validate(plain)


class NoNetwork(httpx.BaseTransport):
    """The network seam: records any request that would leave the process, answers none."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        raise httpx.ConnectError("the network is not available in this test", request=request)


@pytest.fixture(scope="module")
def offline_fetcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, NoNetwork]]:
    transport = NoNetwork()
    storage = LocalFolderStorage(tmp_path_factory.mktemp("references"))
    with httpx.Client(transport=transport) as http:
        yield ReferenceFetcher(storage, http, timeout_seconds=2.0), transport


@PURE
@given(url=private_reference_urls, slot=st.sampled_from(REFERENCE_SLOTS))
def test_private_loopback_and_link_local_references_are_never_fetched(
    url: str, slot: str, offline_fetcher: tuple[ReferenceFetcher, NoNetwork]
) -> None:
    fetcher, transport = offline_fetcher
    with pytest.raises(InvalidPayload) as refused:
        validate(place_reference(base_payload(), url, slot))
    assert_clear_refusal(refused.value)
    assert re.search(r"is a (\S+ )?(loopback|link-local|private|non-global|unspecified|reserved)",
                     refused.value.message), refused.value.message  # fmt: skip
    assert "secret" not in refused.value.message
    # The fetcher refuses it again on its own (a host name resolving to such an address gets
    # that far), before any connection.
    role = "image"
    before = len(transport.requests)
    with pytest.raises(ReferenceDownloadError) as caught:
        fetcher.fetch(HttpReference(url=url), role=role)
    message = caught.value.message
    assert f"'{role}'" in message and "was refused" in message, message
    assert re.search(
        r"is a (\S+ )?(loopback|link-local|private|non-global|unspecified|reserved)", message
    ), message
    assert "secret" not in message  # the query string of the URL is redacted
    assert caught.value.retryable is False
    assert len(transport.requests) == before, "a refused address was contacted"


@PURE
@given(url=bad_scheme_reference_urls, slot=st.sampled_from(REFERENCE_SLOTS))
def test_non_http_references_are_refused_at_validation_without_echoing_them(
    url: str, slot: str
) -> None:
    with pytest.raises(InvalidPayload) as caught:
        validate(place_reference(base_payload(), url, slot))
    message = caught.value.message
    scheme = url.split(":", 1)[0].lower()
    assert_clear_refusal(caught.value)
    assert f"the scheme '{scheme}' is not supported" in message, message
    body = url.split(":", 1)[1]
    assert len(body) < 8 or body not in message  # data:, javascript: bodies are not echoed


# --- Through the flow: a bounded number of hostile payloads -------------------------------------


PREFECT_MAX_PARAMETER_BYTES = 524_288  # the API refuses larger flow run parameters (422)


def prefect_accepts(job: dict[str, Any]) -> bool:
    """Whether the API can create a run with this payload: UTF-8 JSON of at most 512 KiB."""
    try:
        size = len(json.dumps({"job": job}, ensure_ascii=False).encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return size < PREFECT_MAX_PARAMETER_BYTES - 1024  # headroom for the API's own encoding


def stored_files(connections: Connections) -> list[Path]:
    root = Path(connections.settings.resolved_storage_root)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.usefixtures("prefect_api")
@THROUGH_THE_FLOW
@given(hostile=refused_payloads())
@example(hostile=Hostile("id_traversal", {**base_payload(), "id": "../../etc/passwd"}))
@example(hostile=Hostile("no_id", {k: v for k, v in base_payload().items() if k != "id"}))
@example(hostile=Hostile("nul_id", {**base_payload(), "id": "x\x00y"}))
@example(
    hostile=Hostile(
        "nul_reference",
        place_reference(base_payload(), f"workspace-temp/{USER_ID}/a\x00.png", "modify"),
    )
)
@example(
    hostile=Hostile(
        "file_scheme",
        place_reference(base_payload(), "file:///etc/passwd", "modify"),
    )
)
async def test_hostile_payload_through_the_flow_ends_in_one_failed_callback_and_no_render(
    hostile: Hostile, connections: Connections, receiver: CallbackReceiver
) -> None:
    job = hostile.payload
    assume(prefect_accepts(job))
    with pytest.raises(JobError) as caught:
        validate(job)
    expected = caught.value
    job_id = raw_job_id(job)
    loads_before = PIPELINES.load_count()
    requests_before = len(receiver.requests)
    accepted_before = len(receiver.accepted(job_id)) if job_id else 0

    state = await generate_job(job, return_state=True)

    assert state.is_failed(), state
    assert state.state_details.flow_run_id is not None
    counts = await task_run_counts(state.state_details.flow_run_id)
    assert counts["render"] == 0 and counts["upload"] == 0, counts
    assert PIPELINES.load_count() == loads_before
    assert stored_files(connections) == []
    new_requests = receiver.requests[requests_before:]
    if job_id is None:
        assert new_requests == [], "a callback was sent for a payload without a usable id"
        return
    assert [r.answered for r in new_requests] == [200]
    payloads = receiver.accepted(job_id)[accepted_before:]
    assert len(payloads) == 1, payloads
    (payload,) = payloads
    assert payload["status"] == "failed" and payload["assets"] == []
    assert payload["error_message"] == storable_text(expected.message)
    assert not UNSAFE_CHARACTERS.search(payload["error_message"])
    assert payload["metadata"] == {
        "error_type": type(expected).__name__,
        "error_code": expected.code,
        "retryable": False,
    }


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data/", "http://[::1]:9/a.png", "http://localhost/a.png"],
)
async def test_private_reference_fails_the_job_at_validation(
    url: str, connections: Connections, receiver: CallbackReceiver
) -> None:
    """A host written as a non-public address is refused by validation: no render task run,
    no model loaded, one failed callback naming the reference. (A host name that resolves to
    such an address is refused by the fetcher, before any connection: the pure test above.)"""
    job = place_reference(base_payload(), url, "modify")
    loads_before = PIPELINES.load_count()
    state = await generate_job(job, return_state=True)
    assert state.is_failed()
    assert state.state_details.flow_run_id is not None
    counts = await task_run_counts(state.state_details.flow_run_id)
    assert counts["render"] == 0 and counts["upload"] == 0, counts
    assert PIPELINES.load_count() == loads_before
    assert stored_files(connections) == []
    (payload,) = receiver.accepted(job["id"])
    assert payload["status"] == "failed" and payload["assets"] == []
    assert payload["metadata"]["error_code"] == "INVALID_PAYLOAD"
    assert payload["metadata"]["retryable"] is False
    message = payload["error_message"]
    assert "Reference image for 'image'" in message and "address" in message


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    ("prompt", "refusal"),
    [("x\ud800y", UnicodeEncodeError), ("x" * PREFECT_MAX_PARAMETER_BYTES, PrefectHTTPStatusError)],
    ids=["lone-surrogate", "over-512-KiB"],
)
async def test_a_payload_the_prefect_api_cannot_take_never_becomes_a_run(
    prompt: str, refusal: type[Exception], connections: Connections, receiver: CallbackReceiver
) -> None:
    """Parameters must be UTF-8 JSON of at most 512 KiB: a lone surrogate (legal in JSON text)
    cannot be sent, and the API answers 422 to a larger payload. No run is created, so nothing
    renders and nothing is called back; whoever creates the run gets the error."""
    job = {**base_payload(), "prompt": prompt}
    assert not prefect_accepts(job)
    loads_before = PIPELINES.load_count()
    with pytest.raises(refusal):
        await generate_job(job)
    assert PIPELINES.load_count() == loads_before
    assert receiver.requests == [] and stored_files(connections) == []
