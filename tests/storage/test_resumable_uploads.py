"""Large objects through resumable (TUS) uploads against the real Supabase Storage server.

Every test goes through a ``/storage/v1`` fault proxy of its own in front of the real server
(the ``real_storage`` and ``fault_proxy`` fixtures), into the production bucket
``workspace-temp`` under a fresh user folder. The proxy's log says which route an upload took;
a recorder on the HTTP transport (the network seam, nothing faked) says which offsets the
client sent and what the server answered, so the tests can prove that an upload resumed from
the server's offset without sending again what the server held.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from genjobs.errors import StorageError
from genjobs.storage.resumable import DEFAULT_CHUNK_SIZE
from genjobs.storage.supabase import SupabaseStorage

pytest.importorskip("tests.real_storage", reason="the real storage server's fixtures are absent")

BUCKET = "workspace-temp"
MB = 1000 * 1000
TUS_ROUTE = "/storage/v1/upload/resumable"
STANDARD_ROUTE = "/storage/v1/object/"


@dataclass(frozen=True)
class Exchange:
    """One request to the resumable route: the offset sent, body bytes, and the answer
    (status and offset; ``status`` None when the request failed without an answer)."""

    method: str
    sent_offset: int | None
    length: int
    status: int | None
    answered_offset: int | None


def _offset(headers: httpx.Headers) -> int | None:
    value = headers.get("Upload-Offset")
    return int(value) if value is not None else None


@pytest.fixture
def exchanges(monkeypatch: pytest.MonkeyPatch) -> list[Exchange]:
    """Records every request to the resumable route as the transport sends it."""
    recorded: list[Exchange] = []
    send = httpx.HTTPTransport.handle_request

    def recording(transport: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        if not request.url.path.startswith(TUS_ROUTE):
            return send(transport, request)
        length = len(request.content) if request.method == "PATCH" else 0
        sent = _offset(request.headers)
        try:
            response = send(transport, request)
        except httpx.TransportError:
            recorded.append(Exchange(request.method, sent, length, None, None))
            raise
        answered = _offset(response.headers)
        recorded.append(Exchange(request.method, sent, length, response.status_code, answered))
        return response

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", recording)
    return recorded


@pytest.fixture
def object_path(workspace_user: str) -> str:
    return f"{workspace_user}/{uuid.uuid4()}/0.mp4"


@pytest.fixture
def backend(real_storage: Any, fault_proxy: Any) -> Iterator[SupabaseStorage]:
    """The backend as production builds it, through the test's fault proxy; short timeouts
    so that a stall is noticed within a test's time."""
    with real_storage.backend(url=fault_proxy.url, timeout=2.0) as built:
        yield built


def _data(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _routes(fault_proxy: Any) -> list[tuple[str, str]]:
    return [
        (seen.method, TUS_ROUTE if seen.path.startswith(TUS_ROUTE) else seen.path)
        for seen in fault_proxy.seen()
    ]


def _assert_stored(
    real_storage: Any, backend: SupabaseStorage, path: str, data: bytes, content_type: str
) -> None:
    assert _sha256(backend.get(BUCKET, path)) == _sha256(data)
    assert backend.content_type(BUCKET, path) == content_type
    row = real_storage.object_row(BUCKET, path)
    assert row is not None
    metadata = row["metadata"]
    assert (metadata["size"], metadata["mimetype"], metadata["cacheControl"]) == (
        len(data),
        content_type,
        "max-age=3600",
    )


def _assert_resumed_from_server_offsets(exchanges: list[Exchange], total: int) -> None:
    """One upload, never restarted; a request failed; every PATCH after a HEAD starts at the
    offset that HEAD answered, one of them past 0; offsets never go back; the server holds
    every byte at the end."""
    assert [exchange.method for exchange in exchanges].count("POST") == 1
    assert any(exchange.status is None for exchange in exchanges), "no request failed"
    for before, after in itertools.pairwise(exchanges):
        if before.method == "HEAD" and before.status == 200 and after.method == "PATCH":
            assert after.sent_offset == before.answered_offset
    answered = [e.answered_offset for e in exchanges if e.method == "HEAD" and e.status == 200]
    assert any(answered), "never resumed past 0"
    sent = [exchange.sent_offset for exchange in exchanges if exchange.method == "PATCH"]
    assert sent == sorted(sent), "an offset went backwards"
    assert exchanges[-1].status in (200, 204)
    assert exchanges[-1].answered_offset == total


@pytest.mark.parametrize("size", [7 * MB, 30 * MB, 60 * MB], ids=["7MB", "30MB", "60MB"])
def test_large_objects_round_trip_through_resumable_uploads(
    real_storage: Any,
    fault_proxy: Any,
    backend: SupabaseStorage,
    object_path: str,
    size: int,
) -> None:
    data = _data(size)

    stored = backend.put(BUCKET, object_path, data, "video/mp4")

    assert (stored.path, stored.size, stored.content_type) == (object_path, size, "video/mp4")
    chunks = math.ceil(size / DEFAULT_CHUNK_SIZE)
    assert _routes(fault_proxy) == [("POST", TUS_ROUTE)] + [("PATCH", TUS_ROUTE)] * chunks
    _assert_stored(real_storage, backend, object_path, data, "video/mp4")


def test_sixty_megabytes_need_the_resumable_route(
    real_storage: Any, fault_proxy: Any, object_path: str
) -> None:
    """The harness caps standard uploads at 50 MiB, as hosted projects cap them: the same
    object sent as one standard upload is refused, naming the object and its size."""
    data = _data(60 * MB)
    standard_only = real_storage.backend(
        url=fault_proxy.url, resumable_upload_threshold_bytes=100 * MB
    )
    with standard_only, pytest.raises(StorageError) as caught:
        standard_only.put(BUCKET, object_path, data, "video/mp4")

    assert (caught.value.code, caught.value.retryable) == ("OBJECT_TOO_LARGE", False)
    assert f"{BUCKET}/{object_path} has {60 * MB} bytes" in caught.value.message
    assert _routes(fault_proxy) == [("POST", f"{STANDARD_ROUTE}{BUCKET}/{object_path}")]


def test_objects_up_to_the_threshold_stay_standard_uploads(
    real_storage: Any, fault_proxy: Any, object_path: str
) -> None:
    data = _data(7 * MB)
    with real_storage.backend(
        url=fault_proxy.url, resumable_upload_threshold_bytes=7 * MB
    ) as standard:
        standard.put(BUCKET, object_path, data, "video/mp4")
        _assert_stored(real_storage, standard, object_path, data, "video/mp4")

    assert _routes(fault_proxy)[0] == ("POST", f"{STANDARD_ROUTE}{BUCKET}/{object_path}")


def test_a_connection_reset_mid_chunk_resumes_from_the_server_offset(
    real_storage: Any,
    fault_proxy: Any,
    backend: SupabaseStorage,
    exchanges: list[Exchange],
    object_path: str,
) -> None:
    data = _data(20 * MB)
    fault_proxy.reset(r"^PATCH /storage/v1/upload/resumable/", after_bytes=2_500_000)

    backend.put(BUCKET, object_path, data, "video/mp4")

    _assert_stored(real_storage, backend, object_path, data, "video/mp4")
    _assert_resumed_from_server_offsets(exchanges, len(data))
    assert exchanges[1].status is None and exchanges[1].sent_offset == 0


def test_lost_answers_resume_and_the_upload_is_confirmed_by_its_version(
    real_storage: Any,
    fault_proxy: Any,
    backend: SupabaseStorage,
    exchanges: list[Exchange],
    object_path: str,
) -> None:
    if not hasattr(fault_proxy, "drop_answer"):
        pytest.skip("this fault proxy cannot swallow answers")
    backend.put(BUCKET, object_path, _data(8 * MB)[::-1], "video/mp4")
    exchanges.clear()
    data = _data(8 * MB)
    # Both PATCHes take effect, the first and the last, and the client hears of neither.
    fault_proxy.drop_answer(r"^PATCH /storage/v1/upload/resumable/", times=2)

    backend.put(BUCKET, object_path, data, "video/mp4")

    # The last HEAD found every byte; the object's info then showed the new version.
    assert _routes(fault_proxy)[-2:] == [
        ("HEAD", TUS_ROUTE),
        ("GET", f"{STANDARD_ROUTE}info/{BUCKET}/{object_path}"),
    ]
    _assert_stored(real_storage, backend, object_path, data, "video/mp4")
    _assert_resumed_from_server_offsets(exchanges, len(data))
    assert [e.sent_offset for e in exchanges if e.method == "PATCH"] == [0, DEFAULT_CHUNK_SIZE]


@pytest.mark.slow
def test_a_stall_mid_upload_resumes_from_the_server_offset(
    real_storage: Any,
    fault_proxy: Any,
    backend: SupabaseStorage,
    exchanges: list[Exchange],
    object_path: str,
) -> None:
    data = _data(10 * MB)
    # Each PATCH is held after 3 MB for longer than the client waits for an answer.
    fault_proxy.stall(r"^PATCH /storage/v1/upload/resumable/", after_bytes=3 * MB, seconds=3.0)

    backend.put(BUCKET, object_path, data, "video/mp4")

    _assert_stored(real_storage, backend, object_path, data, "video/mp4")
    _assert_resumed_from_server_offsets(exchanges, len(data))


@pytest.mark.slow
def test_a_stall_that_never_ends_gives_up_with_a_retryable_error(
    real_storage: Any,
    fault_proxy: Any,
    exchanges: list[Exchange],
    object_path: str,
) -> None:
    fault_proxy.stall(r"^PATCH /storage/v1/upload/resumable/", after_bytes=0)

    backend = real_storage.backend(url=fault_proxy.url, timeout=1.0)
    with backend, pytest.raises(StorageError) as caught:
        backend.put(BUCKET, object_path, _data(7 * MB), "video/mp4")
    fault_proxy.clear_faults()

    assert (caught.value.code, caught.value.retryable) == ("STORAGE_UNAVAILABLE", True)
    # Five tries in a row without progress: stalled PATCHes and HEADs waiting behind them.
    assert [exchange.status for exchange in exchanges[1:]].count(None) == 5
    assert {e.sent_offset for e in exchanges if e.method == "PATCH"} == {0}
    assert {e.answered_offset for e in exchanges if e.method == "HEAD" and e.status} <= {0}
    assert real_storage.object_row(BUCKET, object_path) is None


@pytest.mark.parametrize(
    ("limit", "content_type", "code", "status"),
    [
        (None, "application/zip", "INVALID_MIME_TYPE", "415"),
        (8 * MB, "video/mp4", "OBJECT_TOO_LARGE", "413"),
    ],
    ids=["mime-type", "size"],
)
def test_refusals_at_creation_map_like_standard_uploads(
    real_storage: Any,
    fault_proxy: Any,
    backend: SupabaseStorage,
    limit: int | None,
    content_type: str,
    code: str,
    status: str,
) -> None:
    bucket = real_storage.create_bucket(file_size_limit=limit)
    path = f"{uuid.uuid4()}/0.mp4"

    with pytest.raises(StorageError) as caught:
        backend.put(bucket, path, _data(10 * MB), content_type)

    assert (caught.value.code, caught.value.status, caught.value.retryable) == (code, status, False)
    assert _routes(fault_proxy) == [("POST", TUS_ROUTE)]
    if code == "OBJECT_TOO_LARGE":
        assert f"{bucket}/{path} has {10 * MB} bytes" in caught.value.message
        assert "file_size_limit" in caught.value.message
