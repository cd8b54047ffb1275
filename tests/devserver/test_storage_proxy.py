"""The ``/storage/v1`` proxy in front of the real storage server: bodies both ways unchanged,
the prefix in resumable-upload URLs, refusals answered before the body is all sent, faults."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Iterator

import httpx
import pytest

from devstack.storage_proxy import StorageProxy
from devstack.tokens import role_key
from tests.real_storage import RealStorage

BODY = os.urandom(3 * 1024 * 1024 + 17)


@pytest.fixture
def client(fault_proxy: StorageProxy, real_storage: RealStorage) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{fault_proxy.url}/storage/v1", headers=real_storage.headers(), timeout=30
    ) as http:
        yield http


def _chunks() -> Iterator[bytes]:
    for start in range(0, len(BODY), 100_000):
        yield BODY[start : start + 100_000]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_bodies_pass_both_ways_unchanged(
    client: httpx.Client, real_bucket: str, framing: str
) -> None:
    content = BODY if framing == "content-length" else _chunks()
    stored = client.post(
        f"/object/{real_bucket}/u/a.png", content=content, headers={"content-type": "image/png"}
    )
    read = client.get(f"/object/{real_bucket}/u/a.png")

    assert stored.status_code == 200, stored.text
    assert (read.status_code, read.headers["content-type"]) == (200, "image/png")
    assert read.content == BODY


def test_paths_outside_the_prefix_are_not_passed_on(fault_proxy: StorageProxy) -> None:
    response = httpx.get(f"{fault_proxy.url}/object/list")

    assert response.status_code == 404
    assert fault_proxy.seen()[0].status == 404


def test_resumable_upload_urls_carry_the_prefix(
    client: httpx.Client, fault_proxy: StorageProxy, real_bucket: str
) -> None:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    created = client.post(
        "/upload/resumable",
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(len(BODY)),
            "Upload-Metadata": f"bucketName {b64(real_bucket)},objectName {b64('u/v.mp4')},"
            f"contentType {b64('video/mp4')}",
        },
    )
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    assert location.startswith(f"{fault_proxy.url}/storage/v1/upload/resumable/")
    patched = client.patch(
        location,
        content=BODY,
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert (patched.status_code, patched.headers["upload-offset"]) == (204, str(len(BODY)))
    assert client.get(f"/object/{real_bucket}/u/v.mp4").content == BODY


def test_a_refusal_sent_before_the_body_is_all_read_comes_back(
    fault_proxy: StorageProxy, real_bucket: str
) -> None:
    """The server refuses a key at once and closes; the body still in flight makes its kernel
    reset the connection, and the refusal must still reach the client (several tries, since
    the reset is a race the proxy has to win every time)."""
    bad = role_key("service_role", "another-secret-of-at-least-32-bytes!")
    headers = {"Authorization": f"Bearer {bad}", "content-type": "image/png"}
    with httpx.Client(base_url=f"{fault_proxy.url}/storage/v1", timeout=30) as http:
        for index in range(5):
            response = http.post(
                f"/object/{real_bucket}/u/{index}.png", content=BODY, headers=headers
            )
            assert response.status_code == 400
            assert response.json()["statusCode"] == "403"


def test_faults_fail_then_reset_then_pass(
    client: httpx.Client, fault_proxy: StorageProxy, real_storage: RealStorage, real_bucket: str
) -> None:
    path = f"/object/{real_bucket}/u/f.png"
    fault_proxy.fail(r"^POST /storage/v1/object/", status=502, times=1)
    fault_proxy.reset(r"^POST /storage/v1/object/", after_bytes=1_000_000)

    failed = client.post(path, content=BODY, headers={"content-type": "image/png"})
    with pytest.raises(httpx.TransportError):
        client.post(path, content=BODY, headers={"content-type": "image/png"})
    assert real_storage.object_names(real_bucket) == []
    # Another key: right after an upload reset mid-body the server may still answer 500 for
    # the same key while it clears the aborted one; the proxy passes the request either way.
    other = f"/object/{real_bucket}/u/g.png"
    passed = client.post(other, content=BODY, headers={"content-type": "image/png"})

    assert (failed.status_code, failed.json()["statusCode"]) == (502, "502")
    assert passed.status_code == 200
    assert [seen.status for seen in fault_proxy.seen()] == [502, 0, 200]
    assert real_storage.object_names(real_bucket) == ["u/g.png"]


def test_a_delay_passes_matching_requests_on_late_and_others_at_once(
    client: httpx.Client, fault_proxy: StorageProxy, real_bucket: str
) -> None:
    stored = client.post(
        f"/object/{real_bucket}/u/d.png", content=b"late", headers={"content-type": "image/png"}
    )
    assert stored.status_code == 200, stored.text
    late = fault_proxy.delay(r"^GET /storage/v1/object/", seconds=0.4, times=1)

    started = time.perf_counter()
    first = client.get(f"/object/{real_bucket}/u/d.png")
    first_seconds = time.perf_counter() - started
    second = client.get(f"/object/{real_bucket}/u/d.png")

    assert (first.content, second.content) == (b"late", b"late")
    assert first_seconds >= 0.4
    assert late.hits == 1  # the second one went on at once
    with pytest.raises(ValueError, match="negative"):
        fault_proxy.delay("", seconds=-1)


def test_a_limited_link_carries_bodies_unchanged_no_faster_than_its_rate_each_way(
    client: httpx.Client, fault_proxy: StorageProxy, real_bucket: str
) -> None:
    # 3 MiB each way at 8 MiB/s up and 4 MiB/s down: at least 0.375 s up and 0.75 s down.
    fault_proxy.limit_link(8 * 2**20, 4 * 2**20)

    started = time.perf_counter()
    stored = client.post(
        f"/object/{real_bucket}/u/link.png", content=BODY, headers={"content-type": "image/png"}
    )
    up_seconds = time.perf_counter() - started
    started = time.perf_counter()
    read = client.get(f"/object/{real_bucket}/u/link.png")
    down_seconds = time.perf_counter() - started

    assert stored.status_code == 200, stored.text
    assert read.content == BODY
    assert up_seconds >= len(BODY) / (8 * 2**20)
    assert down_seconds >= len(BODY) / (4 * 2**20)
    with pytest.raises(ValueError, match="positive rate"):
        fault_proxy.limit_link(0, 1)


def test_a_limited_link_is_shared_by_concurrent_requests(
    fault_proxy: StorageProxy, real_storage: RealStorage, real_bucket: str
) -> None:
    with httpx.Client(
        base_url=f"{fault_proxy.url}/storage/v1", headers=real_storage.headers(), timeout=30
    ) as http:
        for name in ("s1", "s2"):
            stored = http.post(
                f"/object/{real_bucket}/u/{name}.png",
                content=BODY,
                headers={"content-type": "image/png"},
            )
            assert stored.status_code == 200, stored.text
    fault_proxy.limit_link(64 * 2**20, 6 * 2**20)

    async def both() -> list[bytes]:
        async with httpx.AsyncClient(
            base_url=f"{fault_proxy.url}/storage/v1", headers=real_storage.headers(), timeout=30
        ) as http:
            answers = await asyncio.gather(
                http.get(f"/object/{real_bucket}/u/s1.png"),
                http.get(f"/object/{real_bucket}/u/s2.png"),
            )
        return [answer.content for answer in answers]

    started = time.perf_counter()
    bodies = asyncio.run(both())
    seconds = time.perf_counter() - started

    assert bodies == [BODY, BODY]
    # Two bodies over one 6 MiB/s link, not one each: at least twice the time of one.
    assert seconds >= 2 * len(BODY) / (6 * 2**20)
