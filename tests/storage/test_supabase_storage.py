"""Supabase Storage with the official client and ``SupabaseStorage`` over real HTTP against the
real storage server (v1.70.6 on loopback); faults come from a ``/storage/v1`` proxy of the test's
own in front of it. The row policies are in test_storage_policies.py, what every backend shares
in test_storage_contract.py."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
from storage3 import SyncStorageClient
from storage3.exceptions import StorageApiError

import supabase
from devstack.storage_proxy import StorageProxy
from devstack.tokens import role_key
from genjobs.errors import StorageError
from genjobs.storage.base import asset_path, thumbnail_path
from genjobs.storage.supabase import (
    SupabaseStorage,
    storage_error_from_api,
)
from tests.real_storage import WORKSPACE_BUCKET, RealStorage

JOB = "5d2f9a10-8c3b-4e6f-a1d7-0b9c8e7f6a5d"

# Binary content with CR/LF and dashes inside, to prove multipart bodies come through exactly.
PAYLOAD = random.Random(7).randbytes(4096) + b"\r\n--boundary\r\n\r\n" + bytes(range(256))

ClientFactory = Callable[..., SyncStorageClient]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _api_error(call: Callable[[], object]) -> StorageApiError:
    with pytest.raises(StorageApiError) as caught:
        call()
    return caught.value


def _storage_error(call: Callable[[], object]) -> StorageError:
    with pytest.raises(StorageError) as caught:
        call()
    return caught.value


@pytest.fixture
def user() -> str:
    return str(uuid.uuid4())


# --- The official client against the real server -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("0.png", "image/png"), ("0.thumb.webp", "image/webp"), ("0.mp4", "video/mp4")],
)
def test_multipart_upload_stores_exact_bytes_and_content_type(
    real_storage: RealStorage,
    real_bucket: str,
    service_client: SyncStorageClient,
    name: str,
    content_type: str,
) -> None:
    path = f"u/{JOB}/{name}"
    result = service_client.from_(real_bucket).upload(
        path, PAYLOAD, {"content-type": content_type, "upsert": "true"}
    )

    assert result.full_path == f"{real_bucket}/{path}"
    assert service_client.from_(real_bucket).download(path) == PAYLOAD
    row = real_storage.object_row(real_bucket, path)
    assert row is not None
    metadata = row["metadata"]
    assert (metadata["mimetype"], metadata["size"], metadata["cacheControl"]) == (
        content_type,
        len(PAYLOAD),
        "max-age=3600",
    )
    response = httpx.get(
        f"{real_storage.storage_url}/object/authenticated/{real_bucket}/{path}",
        headers=real_storage.headers(),
    )
    assert response.headers["content-type"] == content_type
    assert response.headers["etag"] == f'"{hashlib.md5(PAYLOAD).hexdigest()}"'


def test_raw_upload_takes_the_request_content_type(
    real_storage: RealStorage, real_bucket: str, service_client: SyncStorageClient
) -> None:
    response = httpx.post(
        f"{real_storage.storage_url}/object/{real_bucket}/u/0.png",
        content=PAYLOAD,
        headers={**real_storage.headers(), "Content-Type": "image/png", "x-upsert": "true"},
    )

    assert response.status_code == 200
    assert response.json()["Key"] == f"{real_bucket}/u/0.png"
    assert response.json()["Id"]
    assert service_client.from_(real_bucket).download("u/0.png") == PAYLOAD
    assert service_client.from_(real_bucket).info("u/0.png")["content_type"] == "image/png"


def test_upsert_overwrites_and_without_upsert_answers_409(
    real_storage: RealStorage, real_bucket: str, service_client: SyncStorageClient
) -> None:
    bucket = service_client.from_(real_bucket)
    bucket.upload("u/0.png", b"first", {"content-type": "image/png", "upsert": "true"})
    bucket.upload("u/0.png", b"second", {"content-type": "image/png", "upsert": "true"})
    assert bucket.download("u/0.png") == b"second"

    error = _api_error(lambda: bucket.upload("u/0.png", b"third", {"content-type": "image/png"}))
    assert (error.status, error.code, error.message) == (
        "409",
        "Duplicate",
        "The resource already exists",
    )
    assert bucket.download("u/0.png") == b"second"

    bucket.update("u/1.png", b"put", {"content-type": "image/png"})
    assert real_storage.object_names(real_bucket) == ["u/0.png", "u/1.png"]


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ({"content-type": "application/octet-stream"}, "application/octet-stream"),
        ({}, "text/plain"),
    ],
)
def test_bucket_mime_list_refuses_octet_stream_and_the_client_default(
    real_bucket: str, service_client: SyncStorageClient, options: dict[str, str], refused: str
) -> None:
    error = _api_error(
        lambda: service_client.from_(real_bucket).upload("u/0.png", b"x", options)  # type: ignore[arg-type]
    )

    assert (error.status, error.code) == ("415", "invalid_mime_type")
    assert error.message == f"mime type {refused} is not supported"


def test_mime_error_body_is_the_documented_one(real_storage: RealStorage, real_bucket: str) -> None:
    response = httpx.post(
        f"{real_storage.storage_url}/object/{real_bucket}/u/0.png",
        content=b"x",
        headers={**real_storage.headers(), "Content-Type": "application/octet-stream"},
    )

    assert response.status_code == 400
    assert response.json() == {
        "statusCode": "415",
        "error": "invalid_mime_type",
        "message": "mime type application/octet-stream is not supported",
        "code": "InvalidMimeType",
    }


def test_size_limit_and_wildcard_mime_types(
    real_storage: RealStorage, service_client: SyncStorageClient
) -> None:
    tiny = real_storage.create_bucket("tiny", file_size_limit=1024, allowed_mime_types=("image/*",))
    bucket = service_client.from_(tiny)
    bucket.upload("a/ok.webp", b"w" * 1024, {"content-type": "image/webp"})

    error = _api_error(
        lambda: bucket.upload("a/big.png", b"b" * 1025, {"content-type": "image/png"})
    )
    assert (error.status, error.code, error.message) == (
        "413",
        "Payload too large",
        "The object exceeded the maximum allowed size",
    )
    error = _api_error(lambda: bucket.upload("a/v.mp4", b"v", {"content-type": "video/mp4"}))
    assert error.status == "415"
    assert real_storage.object_names(tiny) == ["a/ok.webp"]


def test_missing_bucket_and_missing_object_answer_404(
    real_bucket: str, service_client: SyncStorageClient
) -> None:
    error = _api_error(
        lambda: service_client.from_("nope").upload("a/b.png", b"x", {"content-type": "image/png"})
    )
    assert (error.status, error.code, error.message) == (
        "404",
        "Bucket not found",
        "Bucket not found",
    )

    error = _api_error(lambda: service_client.from_(real_bucket).download("u/missing.png"))
    assert (error.status, error.code, error.message) == ("404", "not_found", "Object not found")
    assert service_client.from_(real_bucket).exists("u/missing.png") is False


@pytest.mark.parametrize("token", ["other-secret", "not-a-jwt", "expired"])
def test_bad_or_expired_jwt_cannot_write_and_reads_nothing(
    real_storage: RealStorage, real_bucket: str, make_client: ClientFactory, token: str
) -> None:
    keys = {
        "other-secret": role_key("service_role", "some-other-secret-of-at-least-32-bytes!"),
        "not-a-jwt": "not-a-jwt",
        "expired": real_storage.user_token(str(uuid.uuid4()), ttl_s=-60),
    }
    make_client().from_(real_bucket).upload("u/0.png", b"x", {"content-type": "image/png"})
    client = make_client(keys[token])

    refused = _api_error(
        lambda: client.from_(real_bucket).upload("u/1.png", b"x", {"content-type": "image/png"})
    )
    hidden = _api_error(lambda: client.from_(real_bucket).download("u/0.png"))

    assert (refused.status, refused.code) == ("403", "Unauthorized")
    # Downloads fall back to public access, where a private bucket does not exist.
    assert (hidden.status, hidden.code) == ("404", "Bucket not found")
    assert real_storage.object_names(real_bucket) == ["u/0.png"]


def test_missing_authorization_header_answers_400(
    real_storage: RealStorage, real_bucket: str
) -> None:
    response = httpx.post(
        f"{real_storage.storage_url}/object/list/{real_bucket}", json={"prefix": ""}
    )

    assert response.status_code == 400
    assert response.json() == {
        "statusCode": "400",
        "error": "Error",
        "message": "headers must have required property 'authorization'",
        "code": "InvalidRequest",
    }


def test_list_returns_folders_with_null_id_and_file_metadata(
    real_bucket: str, service_client: SyncStorageClient
) -> None:
    bucket = service_client.from_(real_bucket)
    bucket.upload(f"u/{JOB}/0.png", PAYLOAD, {"content-type": "image/png"})
    bucket.upload(f"u/{JOB}/0.thumb.webp", b"webp", {"content-type": "image/webp"})
    bucket.upload(f"u/{JOB}/sub/1.png", b"deeper", {"content-type": "image/png"})

    top = bucket.list("")
    entries = bucket.list(f"u/{JOB}")

    assert top == [
        {
            "name": "u",
            "id": None,
            "updated_at": None,
            "created_at": None,
            "last_accessed_at": None,
            "metadata": None,
        }
    ]
    # Sorted by name, folders and files interleave.
    assert [(entry["name"], entry["id"] is None) for entry in entries] == [
        ("0.png", False),
        ("0.thumb.webp", False),
        ("sub", True),
    ]
    png = entries[0]
    assert set(png["metadata"]) >= {
        "eTag",
        "size",
        "mimetype",
        "cacheControl",
        "lastModified",
        "contentLength",
    }
    assert png["metadata"]["size"] == len(PAYLOAD)
    assert png["metadata"]["mimetype"] == "image/png"
    assert png["metadata"]["eTag"] == f'"{hashlib.md5(PAYLOAD).hexdigest()}"'
    assert png["created_at"].endswith("Z")


def test_signed_url_is_fetched_without_authorization(
    real_storage: RealStorage, real_bucket: str, service_client: SyncStorageClient
) -> None:
    bucket = service_client.from_(real_bucket)
    bucket.upload(f"u/{JOB}/0.png", PAYLOAD, {"content-type": "image/png"})

    signed = bucket.create_signed_url(f"u/{JOB}/0.png", 60)["signedURL"]
    assert signed is not None
    assert signed.startswith(
        f"{real_storage.storage_url}/object/sign/{real_bucket}/u/{JOB}/0.png?token="
    )
    response = httpx.get(signed)
    assert (response.status_code, response.content) == (200, PAYLOAD)
    assert response.headers["content-type"] == "image/png"

    tampered = httpx.get(signed.replace(f"/{JOB}/0.png", f"/{JOB}/1.png"))
    assert (tampered.status_code, tampered.json()["statusCode"]) == (400, "400")
    missing = _api_error(lambda: bucket.create_signed_url("u/x.png", 60))
    assert (missing.status, missing.code) == ("404", "not_found")


def test_copy_move_and_cross_bucket_copy(
    real_storage: RealStorage, real_bucket: str, service_client: SyncStorageClient
) -> None:
    source = f"u/{JOB}/0.png"
    bucket = service_client.from_(real_bucket)
    bucket.upload(source, PAYLOAD, {"content-type": "image/png"})

    copied = bucket.copy(source, f"u/{JOB}/copy.png")
    assert copied["Key"] == f"{real_bucket}/u/{JOB}/copy.png"
    assert bucket.download(f"u/{JOB}/copy.png") == PAYLOAD
    exists = _api_error(lambda: bucket.copy(source, f"u/{JOB}/copy.png"))
    assert exists.status == "409"

    moved = bucket.move(f"u/{JOB}/copy.png", f"u/{JOB}/moved.png")
    assert moved["message"] == "Successfully moved"
    assert real_storage.object_names(real_bucket) == [source, f"u/{JOB}/moved.png"]

    library = real_storage.create_bucket("library")
    response = httpx.post(
        f"{real_storage.storage_url}/object/copy",
        json={
            "bucketId": real_bucket,
            "sourceKey": source,
            "destinationBucket": library,
            "destinationKey": "u/asset.png",
        },
        headers=real_storage.headers(),
    )
    assert response.json()["Key"] == f"{library}/u/asset.png"
    assert service_client.from_(library).download("u/asset.png") == PAYLOAD
    assert service_client.from_(library).info("u/asset.png")["content_type"] == "image/png"


def test_remove_returns_deleted_rows_and_nothing_for_missing(
    real_storage: RealStorage, real_bucket: str, service_client: SyncStorageClient
) -> None:
    bucket = service_client.from_(real_bucket)
    bucket.upload(f"u/{JOB}/0.png", b"x", {"content-type": "image/png"})

    rows = bucket.remove([f"u/{JOB}/0.png", "u/none.png"])

    assert [row["name"] for row in rows] == [f"u/{JOB}/0.png"]
    assert rows[0]["bucket_id"] == real_bucket
    assert bucket.remove([f"u/{JOB}/0.png"]) == []
    assert real_storage.object_names(real_bucket) == []


@pytest.mark.parametrize("base", ["root", "storage"])
def test_both_route_forms_answer_the_same(
    real_storage: RealStorage, real_bucket: str, make_client: ClientFactory, base: str
) -> None:
    bucket = make_client(base=base).from_(real_bucket)
    bucket.upload(f"u/{JOB}/0.png", PAYLOAD, {"content-type": "image/png"})

    assert bucket.download(f"u/{JOB}/0.png") == PAYLOAD
    assert real_storage.object_names(real_bucket) == [f"u/{JOB}/0.png"]


def test_supabase_create_client_storage_reaches_the_server(
    real_storage: RealStorage, fault_proxy: StorageProxy, user: str
) -> None:
    client = supabase.create_client(fault_proxy.url, real_storage.service_key)
    path = f"{user}/{JOB}/0.png"
    try:
        client.storage.from_(WORKSPACE_BUCKET).upload(
            path, PAYLOAD, {"content-type": "image/png", "upsert": "true"}
        )
        assert client.storage.from_(WORKSPACE_BUCKET).download(path) == PAYLOAD
    finally:
        client.storage.session.close()
    first = fault_proxy.seen()[0]
    assert (first.method, first.path, first.status) == (
        "POST",
        f"/storage/v1/object/{WORKSPACE_BUCKET}/{path}",
        200,
    )


# --- SupabaseStorage ----------------------------------------------------------------------------


def _through(real: RealStorage, proxy: StorageProxy, **options: object) -> SupabaseStorage:
    return real.backend(proxy.url, **options)


def test_put_get_round_trip_with_upsert(
    real_storage: RealStorage, fault_proxy: StorageProxy, user: str
) -> None:
    path = asset_path(user, JOB, 0, "png")
    with _through(real_storage, fault_proxy) as storage:
        stored = storage.put(WORKSPACE_BUCKET, path, PAYLOAD, "image/png")
        storage.put(WORKSPACE_BUCKET, path, PAYLOAD[::-1], "image/png")

        assert (stored.bucket, stored.path, stored.size, stored.content_type) == (
            WORKSPACE_BUCKET,
            path,
            len(PAYLOAD),
            "image/png",
        )
        assert storage.get(WORKSPACE_BUCKET, path) == PAYLOAD[::-1]
        assert storage.content_type(WORKSPACE_BUCKET, path) == "image/png"
        assert storage.exists(WORKSPACE_BUCKET, path) is True
        assert storage.exists(WORKSPACE_BUCKET, asset_path(user, JOB, 1, "png")) is False
    upload = fault_proxy.seen()[0]
    assert (upload.method, upload.path) == ("POST", f"/storage/v1/object/{WORKSPACE_BUCKET}/{path}")


def test_list_descends_folders_pages_and_filters_by_prefix(
    real_storage: RealStorage, real_bucket: str, fault_proxy: StorageProxy
) -> None:
    user_a, user_b = "a-user", "b-user"
    names = [
        asset_path(user_a, JOB, 0, "png"),
        thumbnail_path(user_a, JOB, 0),
        asset_path(user_a, JOB, 1, "png"),
        f"{user_a}/{JOB}_1754611200.png",
        f"{user_a}/other/0.mp4",
        f"{user_b}/{JOB}/0.png",
        "root-object.png",
    ]
    with real_storage.backend() as seeding:
        for index, name in enumerate(names):
            seeding.put(real_bucket, name, b"x" * (index + 1), "image/png")
    old = datetime(2025, 8, 10, 12, 0, tzinfo=UTC)
    import psycopg

    with psycopg.connect(real_storage.dsn) as conn:
        conn.execute(
            "update storage.objects set created_at = %s where bucket_id = %s and name = %s",
            (old, real_bucket, names[0]),
        )

    with _through(real_storage, fault_proxy, list_page_size=2) as paged:
        everything = paged.list(real_bucket)
        under_user = paged.list(real_bucket, f"{user_a}/")
        under_job = paged.list(real_bucket, f"{user_a}/{JOB}")

    assert [info.path for info in everything] == sorted(names)
    assert [info.path for info in under_user] == sorted(names[:5])
    assert [info.path for info in under_job] == sorted(names[:4])
    first = next(info for info in everything if info.path == names[0])
    assert (first.size, first.content_type, first.created_at) == (1, "image/png", old)
    assert first.etag == hashlib.md5(b"x").hexdigest()
    list_calls = [seen for seen in fault_proxy.seen() if "/object/list/" in seen.path]
    assert len(list_calls) > len({seen.path for seen in list_calls})


def test_list_asks_for_the_folders_of_a_level_at_once_and_misses_none(
    real_storage: RealStorage, real_bucket: str, fault_proxy: StorageProxy
) -> None:
    # Nine user folders (one with a folder of its own), more than the four listed at once.
    names = [f"user-{n}/job_{n}_1754611200.png" for n in range(9)] + [
        "user-0/deeper/0.png",
        "user-0/deeper/1.png",
        "root.png",
    ]
    with real_storage.backend() as seeding:
        for name in names:
            seeding.put(real_bucket, name, name.encode(), "image/png")
    listing = fault_proxy.delay(r"^POST /storage/v1/object/list/", seconds=0.5)
    result: list[list[str]] = []

    def walk() -> None:
        with _through(real_storage, fault_proxy, list_concurrency=4, list_page_size=5) as storage:
            result.append([info.path for info in storage.list(real_bucket)])

    walker = threading.Thread(target=walk)
    walker.start()
    samples: list[tuple[float, int]] = []  # (when, list requests arrived so far)
    while walker.is_alive():
        samples.append((time.monotonic(), listing.hits))
        time.sleep(0.02)
    walker.join()
    # Requests held 0.5 s each: one after another, at most two arrive within 0.25 s.
    most_within = max(
        later - hits for at, hits in samples for when, later in samples if 0 <= when - at <= 0.25
    )

    assert result == [sorted(names)]
    assert most_within >= 4
    with pytest.raises(ValueError, match="list_concurrency"):
        _through(real_storage, fault_proxy, list_concurrency=0)


def test_list_of_empty_and_missing_buckets(
    real_storage: RealStorage, real_bucket: str, fault_proxy: StorageProxy
) -> None:
    with _through(real_storage, fault_proxy) as storage:
        assert storage.list(real_bucket) == []
        assert storage.list(real_bucket, "u/") == []
        assert storage.list(real_bucket, "v/w/") == []

        error = _storage_error(lambda: storage.list("no-such-bucket"))
        again = _storage_error(lambda: storage.list("no-such-bucket", "u/"))

    for refused in (error, again):
        assert (refused.code, refused.status) == ("BUCKET_NOT_FOUND", "404")
        assert not refused.retryable
    # An empty listing asks whether its bucket exists once: the bucket that answered is known.
    bucket_reads = [seen.path for seen in fault_proxy.seen() if "/bucket/" in seen.path]
    assert bucket_reads == [
        f"/storage/v1/bucket/{real_bucket}",
        "/storage/v1/bucket/no-such-bucket",
        "/storage/v1/bucket/no-such-bucket",
    ]


def test_copy_within_a_bucket_is_server_side_and_overwrites(
    real_storage: RealStorage, real_bucket: str, fault_proxy: StorageProxy
) -> None:
    source, target = asset_path("u", JOB, 0, "png"), asset_path("u", JOB, 9, "png")
    with real_storage.backend() as direct, _through(real_storage, fault_proxy) as storage:
        direct.put(real_bucket, source, PAYLOAD, "image/png")

        storage.copy(real_bucket, source, target)
        assert [(seen.method, seen.path) for seen in fault_proxy.seen()] == [
            ("POST", "/storage/v1/object/copy")
        ]

        direct.put(real_bucket, source, b"newer", "image/png")
        storage.copy(real_bucket, source, target)
        assert direct.get(real_bucket, target) == b"newer"


def test_copy_into_another_bucket_is_server_side_and_overwrites_through_the_client(
    real_storage: RealStorage, real_bucket: str, fault_proxy: StorageProxy
) -> None:
    legacy = real_storage.create_bucket("legacy")
    source, target = f"u/{JOB}_1754611200.png", asset_path("u", JOB, 0, "png")
    with real_storage.backend() as direct, _through(real_storage, fault_proxy) as storage:
        direct.put(legacy, source, PAYLOAD, "image/png")

        storage.copy(legacy, source, target, real_bucket)

        assert [(seen.method, seen.path) for seen in fault_proxy.seen()] == [
            ("POST", "/storage/v1/object/copy")
        ]  # no byte of the object passed through this process
        assert storage.server_side_copy_across_buckets is True
        assert direct.get(real_bucket, target) == PAYLOAD
        assert direct.content_type(real_bucket, target) == "image/png"

        direct.put(legacy, source, b"newer", "image/png")
        storage.copy(legacy, source, target, real_bucket)  # the server's copy never overwrites
        assert direct.get(real_bucket, target) == b"newer"
        assert [i.path for i in direct.list(legacy)] == [source]


class StripDestinationBucket(httpx.BaseTransport):
    """The network seam of a storage server that predates ``destinationBucket``: the field is
    dropped from copy requests on their way to the real server, which then copies within the
    source bucket, as such a server does."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.copies: list[dict[str, object]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/object/copy"):
            body = json.loads(request.read())
            self.copies.append(dict(body))
            body.pop("destinationBucket", None)
            headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
            request = httpx.Request(request.method, request.url, headers=headers, json=body)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_a_server_that_ignores_the_destination_bucket_is_detected_once_and_cleaned_up(
    real_storage: RealStorage, real_bucket: str
) -> None:
    legacy = real_storage.create_bucket("legacy")
    sources = [f"u/{JOB}_175461120{n}.png" for n in range(2)]
    seam = StripDestinationBucket()
    http = httpx.Client(transport=seam, timeout=30)
    client = SyncStorageClient(
        real_storage.storage_url + "/", real_storage.headers(), http_client=http
    )
    with real_storage.backend() as direct, SupabaseStorage(client, owns_client=True) as storage:
        for n, source in enumerate(sources):
            direct.put(legacy, source, PAYLOAD + bytes([n]), "image/png")

        for n, source in enumerate(sources):
            storage.copy(legacy, source, asset_path("u", JOB, n, "png"), real_bucket)

        assert storage.server_side_copy_across_buckets is False
        assert len(seam.copies) == 1  # asked once; the second copy went through the client
        for n in range(2):
            assert direct.get(real_bucket, asset_path("u", JOB, n, "png")) == PAYLOAD + bytes([n])
        # The stray copy the old server made in the legacy bucket is gone; the sources stay.
        assert [i.path for i in direct.list(legacy)] == sorted(sources)


def test_remove_returns_only_what_existed(
    real_storage: RealStorage, real_bucket: str, storage: SupabaseStorage
) -> None:
    kept = asset_path("b", JOB, 0, "png")
    for path in (asset_path("a", JOB, 0, "png"), thumbnail_path("a", JOB, 0), kept):
        storage.put(real_bucket, path, b"x", "image/png")

    removed = storage.remove(
        real_bucket, [thumbnail_path("a", JOB, 0), "missing.png", asset_path("a", JOB, 0, "png")]
    )

    assert removed == [thumbnail_path("a", JOB, 0), asset_path("a", JOB, 0, "png")]
    assert storage.remove(real_bucket, ["missing.png"]) == []
    assert storage.remove(real_bucket, []) == []
    assert real_storage.object_names(real_bucket) == [kept]


def test_signed_url_from_the_backend(real_bucket: str, storage: SupabaseStorage) -> None:
    storage.put(real_bucket, asset_path("u", JOB, 0, "png"), PAYLOAD, "image/png")

    url = storage.signed_url(real_bucket, asset_path("u", JOB, 0, "png"), 60)

    assert httpx.get(url).content == PAYLOAD


# --- Error translation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "code", "status"),
    [
        ("octet-stream", "INVALID_MIME_TYPE", "415"),
        ("too-large", "OBJECT_TOO_LARGE", "413"),
        ("no-bucket", "BUCKET_NOT_FOUND", "404"),
        ("no-object", "OBJECT_NOT_FOUND", "404"),
        ("hidden-object", "OBJECT_NOT_FOUND", "404"),
        ("bad-jwt", "STORAGE_ACCESS_DENIED", "403"),
        ("rls-write", "STORAGE_ACCESS_DENIED", "403"),
        ("non-uuid-user", "STORAGE_BAD_REQUEST", "400"),
    ],
)
def test_refusals_map_to_non_retryable_storage_errors(
    real_storage: RealStorage, real_bucket: str, user: str, case: str, code: str, status: str
) -> None:
    tiny = real_storage.create_bucket("tiny", file_size_limit=4, allowed_mime_types=("image/png",))
    theirs = asset_path(str(uuid.uuid4()), JOB, 0, "png")
    with real_storage.backend() as service:
        service.put(WORKSPACE_BUCKET, theirs, b"x", "image/png")
    service_key = real_storage.service_key
    as_user = real_storage.user_token(user)
    calls: dict[str, tuple[str, Callable[[SupabaseStorage], object]]] = {
        "octet-stream": (
            service_key,
            lambda s: s.put(real_bucket, "a/0.png", b"x", "application/octet-stream"),
        ),
        "too-large": (service_key, lambda s: s.put(tiny, "a/0.png", b"12345", "image/png")),
        "no-bucket": (service_key, lambda s: s.put("nope", "a/0.png", b"x", "image/png")),
        "no-object": (service_key, lambda s: s.get(real_bucket, "a/missing.png")),
        "hidden-object": (as_user, lambda s: s.get(WORKSPACE_BUCKET, theirs)),
        "bad-jwt": (
            role_key("service_role", "a-different-secret-of-32-bytes-or-more"),
            lambda s: s.put(real_bucket, "a/0.png", b"x", "image/png"),
        ),
        "rls-write": (
            as_user,
            lambda s: s.put(WORKSPACE_BUCKET, asset_path(user, JOB, 1, "png"), b"x", "image/png"),
        ),
        "non-uuid-user": (
            real_storage.user_token("user-b"),
            lambda s: s.get(WORKSPACE_BUCKET, theirs),
        ),
    }
    token, call = calls[case]

    with SupabaseStorage.from_supabase(real_storage.url, token, timeout=30.0) as backend:
        error = _storage_error(lambda: call(backend))

    assert (error.code, error.status, error.retryable) == (code, status, False)
    assert isinstance(error.__cause__, StorageApiError)


def test_conflict_from_the_client_maps_to_object_exists(
    real_bucket: str, service_client: SyncStorageClient
) -> None:
    bucket = service_client.from_(real_bucket)
    bucket.upload("a/0.png", b"x", {"content-type": "image/png"})
    conflict = _api_error(lambda: bucket.upload("a/0.png", b"x", {"content-type": "image/png"}))

    error = storage_error_from_api(conflict, "upload", f"{real_bucket}/a/0.png")

    assert (error.code, error.status, error.retryable) == ("OBJECT_EXISTS", "409", False)


@pytest.mark.parametrize("status", [500, 503])
def test_gateway_faults_map_to_retryable_errors(
    real_storage: RealStorage, real_bucket: str, fault_proxy: StorageProxy, status: int
) -> None:
    fault_proxy.fail(r"^POST /storage/v1/object/", status=status)

    with _through(real_storage, fault_proxy) as storage:
        error = _storage_error(lambda: storage.put(real_bucket, "a/0.png", b"x", "image/png"))

    assert (error.code, error.status, error.retryable) == ("STORAGE_UNAVAILABLE", str(status), True)
    assert real_storage.object_names(real_bucket) == []


def test_two_503s_then_success_stores_the_object_once(
    real_storage: RealStorage, real_bucket: str, fault_proxy: StorageProxy
) -> None:
    path = asset_path("u", JOB, 0, "png")
    fault_proxy.fail(rf"^POST /storage/v1/object/{real_bucket}/", status=503, times=2)
    failures: list[StorageError] = []

    with _through(real_storage, fault_proxy) as storage:
        for _attempt in range(5):
            try:
                storage.put(real_bucket, path, PAYLOAD, "image/png")
                break
            except StorageError as exc:
                assert exc.retryable
                failures.append(exc)
        assert storage.get(real_bucket, path) == PAYLOAD

    assert [failure.status for failure in failures] == ["503", "503"]
    assert [seen.status for seen in fault_proxy.seen() if seen.method == "POST"] == [503, 503, 200]
    assert real_storage.object_names(real_bucket) == [path]


def test_lost_answer_is_retried_safely_because_uploads_upsert(
    real_storage: RealStorage, real_bucket: str, fault_proxy: StorageProxy
) -> None:
    path = asset_path("u", JOB, 0, "png")
    fault_proxy.drop_answer(r"^POST /storage/v1/object/")

    with _through(real_storage, fault_proxy) as storage:
        first = _storage_error(lambda: storage.put(real_bucket, path, PAYLOAD, "image/png"))
        assert real_storage.object_names(real_bucket) == [path]
        storage.put(real_bucket, path, PAYLOAD, "image/png")
        assert storage.get(real_bucket, path) == PAYLOAD

    assert (first.code, first.retryable) == ("STORAGE_UNAVAILABLE", True)
    assert [seen.status for seen in fault_proxy.seen() if seen.method == "POST"] == [200, 200]
    assert real_storage.object_names(real_bucket) == [path]


def test_a_held_upload_stores_the_object_once_released(
    real_storage: RealStorage, real_bucket: str, fault_proxy: StorageProxy
) -> None:
    path = asset_path("u", JOB, 0, "png")
    fault_proxy.stall(r"^POST /storage/v1/object/", after_bytes=1000, seconds=0.3)

    with _through(real_storage, fault_proxy) as storage:
        stored = storage.put(real_bucket, path, PAYLOAD, "image/png")
        assert storage.get(real_bucket, path) == PAYLOAD

    assert (stored.path, stored.size) == (path, len(PAYLOAD))
    assert [seen.status for seen in fault_proxy.seen() if seen.method == "POST"] == [200]


def test_a_stalled_upload_times_out_as_a_retryable_error(
    real_storage: RealStorage, real_bucket: str, fault_proxy: StorageProxy
) -> None:
    fault_proxy.stall(r"^POST /storage/v1/object/", after_bytes=1000)

    with _through(real_storage, fault_proxy, timeout=0.5) as storage:
        error = _storage_error(lambda: storage.put(real_bucket, "a/0.png", PAYLOAD, "image/png"))

    assert (error.code, error.status, error.retryable) == ("STORAGE_UNAVAILABLE", None, True)
    assert isinstance(error.__cause__, httpx.TimeoutException)
    assert real_storage.object_names(real_bucket) == []


def test_reset_and_refused_connections_map_to_retryable_errors(
    real_storage: RealStorage, real_bucket: str, fault_proxy: StorageProxy
) -> None:
    fault_proxy.reset(r"^GET /storage/v1/object/")
    fault_proxy.reset(r"^POST /storage/v1/object/", after_bytes=2000)

    with _through(real_storage, fault_proxy) as storage:
        dropped = _storage_error(lambda: storage.get(real_bucket, "a/0.png"))
        cut = _storage_error(lambda: storage.put(real_bucket, "a/0.png", PAYLOAD, "image/png"))
    with SupabaseStorage.from_supabase(f"http://127.0.0.1:{_closed_port()}", "key") as nowhere:
        refused = _storage_error(lambda: nowhere.get(real_bucket, "a/0.png"))

    for error in (dropped, cut):
        assert (error.code, error.retryable) == ("STORAGE_UNAVAILABLE", True)
        assert isinstance(error.__cause__, httpx.TransportError)
    assert (refused.code, refused.retryable) == ("STORAGE_UNAVAILABLE", True)
    assert isinstance(refused.__cause__, httpx.ConnectError)
    assert real_storage.object_names(real_bucket) == []


def test_the_key_never_reaches_logs_or_errors(
    real_storage: RealStorage,
    real_bucket: str,
    fault_proxy: StorageProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = real_storage.service_key
    caplog.set_level(logging.DEBUG)
    fault_proxy.fail(r"^POST /storage/v1/object/")

    with _through(real_storage, fault_proxy) as backend:
        error = _storage_error(lambda: backend.put(real_bucket, "a/0.png", b"x", "image/png"))
        backend.put(real_bucket, "a/0.png", b"x", "image/png")
        backend.list(real_bucket)

    assert key not in caplog.text
    assert key not in str(error)
    assert key not in repr(backend)
