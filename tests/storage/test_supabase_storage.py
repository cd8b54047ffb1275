"""Supabase Storage with the official client over real HTTP against the local stand-in."""

from __future__ import annotations

import hashlib
import logging
import random
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
from storage3 import SyncStorageClient
from storage3.exceptions import StorageApiError

import supabase
from devstack.storage_standin import StorageStandIn, make_jwt
from genjobs.errors import StorageError
from genjobs.storage.base import asset_path, thumbnail_path
from genjobs.storage.supabase import (
    STANDARD_UPLOAD_LIMIT,
    SupabaseStorage,
    storage_error_from_api,
)

USER_A = "9f1c6a52-3d0e-4b7a-8c55-1b2d3e4f5a6b"
USER_B = "2a7d0c1e-5b6f-4e8a-9d3c-7f1e2b4a6c8d"
JOB = "5d2f9a10-8c3b-4e6f-a1d7-0b9c8e7f6a5d"
BUCKET = "workspace-temp"

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


# --- The official client against the stand-in -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("0.png", "image/png"), ("0.thumb.webp", "image/webp"), ("0.mp4", "video/mp4")],
)
def test_multipart_upload_stores_exact_bytes_and_content_type(
    standin: StorageStandIn, service_client: SyncStorageClient, name: str, content_type: str
) -> None:
    path = f"{USER_A}/{JOB}/{name}"
    result = service_client.from_(BUCKET).upload(
        path, PAYLOAD, {"content-type": content_type, "upsert": "true"}
    )

    assert result.full_path == f"{BUCKET}/{path}"
    assert service_client.from_(BUCKET).download(path) == PAYLOAD
    stored = standin.get_object(BUCKET, path)
    assert stored is not None
    assert (stored.data, stored.content_type, stored.cache_control) == (
        PAYLOAD,
        content_type,
        "max-age=3600",
    )
    response = httpx.get(
        f"{standin.storage_url}/object/authenticated/{BUCKET}/{path}",
        headers={"Authorization": f"Bearer {standin.token()}"},
    )
    assert response.headers["content-type"] == content_type
    assert response.headers["etag"] == f'"{hashlib.md5(PAYLOAD).hexdigest()}"'


def test_raw_upload_takes_the_request_content_type(
    standin: StorageStandIn, service_client: SyncStorageClient
) -> None:
    path = f"{USER_A}/{JOB}/0.png"
    response = httpx.post(
        f"{standin.storage_url}/object/{BUCKET}/{path}",
        content=PAYLOAD,
        headers={
            "Authorization": f"Bearer {standin.token()}",
            "Content-Type": "image/png",
            "x-upsert": "true",
        },
    )

    assert response.status_code == 200
    assert response.json()["Key"] == f"{BUCKET}/{path}"
    assert response.json()["Id"]
    assert service_client.from_(BUCKET).download(path) == PAYLOAD
    assert service_client.from_(BUCKET).info(path)["content_type"] == "image/png"


def test_upsert_overwrites_and_without_upsert_answers_409(
    standin: StorageStandIn, service_client: SyncStorageClient
) -> None:
    bucket = service_client.from_(BUCKET)
    path = f"{USER_A}/{JOB}/0.png"
    bucket.upload(path, b"first", {"content-type": "image/png", "upsert": "true"})
    bucket.upload(path, b"second", {"content-type": "image/png", "upsert": "true"})
    assert bucket.download(path) == b"second"

    error = _api_error(lambda: bucket.upload(path, b"third", {"content-type": "image/png"}))
    assert (error.status, error.code, error.message) == (
        "409",
        "Duplicate",
        "The resource already exists",
    )
    assert bucket.download(path) == b"second"

    bucket.update(f"{USER_A}/{JOB}/1.png", b"put", {"content-type": "image/png"})
    assert standin.object_names(BUCKET) == [path, f"{USER_A}/{JOB}/1.png"]


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ({"content-type": "application/octet-stream"}, "application/octet-stream"),
        ({}, "text/plain;charset=UTF-8"),
    ],
)
def test_bucket_mime_list_refuses_octet_stream_and_the_client_default(
    service_client: SyncStorageClient, options: dict[str, str], refused: str
) -> None:
    error = _api_error(
        lambda: service_client.from_(BUCKET).upload(f"{USER_A}/{JOB}/0.png", b"x", options)  # type: ignore[arg-type]
    )

    assert (error.status, error.code) == ("415", "invalid_mime_type")
    assert error.message == f"mime type {refused} is not supported"


def test_mime_error_body_is_the_documented_one(standin: StorageStandIn) -> None:
    response = httpx.post(
        f"{standin.storage_url}/object/{BUCKET}/{USER_A}/{JOB}/0.png",
        content=b"x",
        headers={
            "Authorization": f"Bearer {standin.token()}",
            "Content-Type": "application/octet-stream",
        },
    )

    assert response.status_code == 400
    assert response.json() == {
        "statusCode": "415",
        "error": "invalid_mime_type",
        "message": "mime type application/octet-stream is not supported",
        "code": "InvalidMimeType",
    }


def test_size_limit_and_wildcard_mime_types(
    standin: StorageStandIn, service_client: SyncStorageClient
) -> None:
    standin.create_bucket("tiny", file_size_limit=1024, allowed_mime_types=["image/*"])
    bucket = service_client.from_("tiny")
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
    assert standin.object_names("tiny") == ["a/ok.webp"]


def test_missing_bucket_and_missing_object_answer_404(service_client: SyncStorageClient) -> None:
    error = _api_error(
        lambda: service_client.from_("nope").upload("a/b.png", b"x", {"content-type": "image/png"})
    )
    assert (error.status, error.code, error.message) == (
        "404",
        "Bucket not found",
        "Bucket not found",
    )

    error = _api_error(lambda: service_client.from_(BUCKET).download(f"{USER_A}/missing.png"))
    assert (error.status, error.code, error.message) == ("404", "not_found", "Object not found")
    assert service_client.from_(BUCKET).exists(f"{USER_A}/missing.png") is False


@pytest.mark.parametrize(
    "token",
    [
        make_jwt("some-other-secret-of-at-least-32-bytes!"),
        "not-a-jwt",
        "expired",
    ],
)
def test_bad_or_expired_jwt_answers_403(
    standin: StorageStandIn, make_client: ClientFactory, token: str
) -> None:
    if token == "expired":
        token = standin.token(exp_seconds=-60)
    client = make_client(token)

    error = _api_error(lambda: client.from_(BUCKET).download(f"{USER_A}/{JOB}/0.png"))

    assert (error.status, error.code) == ("403", "Unauthorized")


def test_missing_authorization_header_answers_400(standin: StorageStandIn) -> None:
    response = httpx.get(f"{standin.storage_url}/object/{BUCKET}/{USER_A}/{JOB}/0.png")

    assert response.status_code == 400
    assert response.json() == {
        "statusCode": "400",
        "error": "Error",
        "message": "headers must have required property 'authorization'",
        "code": "InvalidRequest",
    }


def test_row_level_security_limits_users_to_their_folder(
    standin: StorageStandIn, make_client: ClientFactory
) -> None:
    standin.put_object(BUCKET, f"{USER_B}/{JOB}/0.png", b"b-image", "image/png")
    user_a = make_client(standin.token(role="authenticated", sub=USER_A)).from_(BUCKET)

    user_a.upload(f"{USER_A}/{JOB}/0.png", b"a-image", {"content-type": "image/png"})
    assert user_a.download(f"{USER_A}/{JOB}/0.png") == b"a-image"

    hidden = _api_error(lambda: user_a.download(f"{USER_B}/{JOB}/0.png"))
    assert (hidden.status, hidden.code, hidden.message) == ("404", "not_found", "Object not found")
    refused = _api_error(
        lambda: user_a.upload(f"{USER_B}/{JOB}/1.png", b"x", {"content-type": "image/png"})
    )
    assert (refused.status, refused.code, refused.message) == (
        "403",
        "Unauthorized",
        "new row violates row-level security policy",
    )
    assert user_a.list(USER_B) == []
    assert [entry["name"] for entry in user_a.list(f"{USER_A}/{JOB}")] == ["0.png"]
    assert standin.object_names(BUCKET) == sorted(
        [f"{USER_A}/{JOB}/0.png", f"{USER_B}/{JOB}/0.png"]
    )


def test_non_uuid_user_id_fails_like_the_uuid_cast(
    standin: StorageStandIn, make_client: ClientFactory
) -> None:
    standin.put_object(BUCKET, "user-1/j/0.png", b"x", "image/png")
    client = make_client(standin.token(role="authenticated", sub="user-1"))

    error = _api_error(lambda: client.from_(BUCKET).download("user-1/j/0.png"))

    assert (error.status, error.code) == ("400", "InvalidParameter")
    assert error.message == 'invalid input syntax for type uuid: "user-1"'


def test_list_returns_folders_with_null_id_and_file_metadata(
    standin: StorageStandIn, service_client: SyncStorageClient
) -> None:
    standin.put_object(BUCKET, f"{USER_A}/{JOB}/0.png", PAYLOAD, "image/png")
    standin.put_object(BUCKET, f"{USER_A}/{JOB}/0.thumb.webp", b"webp", "image/webp")
    standin.put_object(BUCKET, f"{USER_A}/{JOB}/sub/1.png", b"deeper", "image/png")

    top = service_client.from_(BUCKET).list("")
    entries = service_client.from_(BUCKET).list(f"{USER_A}/{JOB}")

    assert top == [
        {
            "name": USER_A,
            "id": None,
            "updated_at": None,
            "created_at": None,
            "last_accessed_at": None,
            "metadata": None,
        }
    ]
    assert [(entry["name"], entry["id"] is None) for entry in entries] == [
        ("sub", True),
        ("0.png", False),
        ("0.thumb.webp", False),
    ]
    png = entries[1]
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
    standin: StorageStandIn, service_client: SyncStorageClient
) -> None:
    path = f"{USER_A}/{JOB}/0.png"
    standin.put_object(BUCKET, path, PAYLOAD, "image/png")

    signed = service_client.from_(BUCKET).create_signed_url(path, 60)["signedURL"]
    assert signed is not None
    assert signed.startswith(f"{standin.storage_url}/object/sign/{BUCKET}/{path}?token=")
    response = httpx.get(signed)
    assert (response.status_code, response.content) == (200, PAYLOAD)
    assert response.headers["content-type"] == "image/png"

    tampered = httpx.get(signed.replace(f"/{JOB}/0.png", f"/{JOB}/1.png"))
    assert (tampered.status_code, tampered.json()["statusCode"]) == (400, "400")
    missing = _api_error(
        lambda: service_client.from_(BUCKET).create_signed_url(f"{USER_A}/x.png", 60)
    )
    assert (missing.status, missing.code) == ("404", "not_found")


def test_copy_move_and_cross_bucket_copy(
    standin: StorageStandIn, service_client: SyncStorageClient
) -> None:
    source = f"{USER_A}/{JOB}/0.png"
    standin.put_object(BUCKET, source, PAYLOAD, "image/png")
    bucket = service_client.from_(BUCKET)

    copied = bucket.copy(source, f"{USER_A}/{JOB}/copy.png")
    assert copied["Key"] == f"{BUCKET}/{USER_A}/{JOB}/copy.png"
    assert bucket.download(f"{USER_A}/{JOB}/copy.png") == PAYLOAD
    exists = _api_error(lambda: bucket.copy(source, f"{USER_A}/{JOB}/copy.png"))
    assert exists.status == "409"

    assert bucket.move(f"{USER_A}/{JOB}/copy.png", f"{USER_A}/{JOB}/moved.png")["message"] == (
        "Successfully moved"
    )
    assert standin.object_names(BUCKET) == [source, f"{USER_A}/{JOB}/moved.png"]

    response = httpx.post(
        f"{standin.storage_url}/object/copy",
        json={
            "bucketId": BUCKET,
            "sourceKey": source,
            "destinationBucket": "user-library",
            "destinationKey": f"{USER_A}/asset.png",
        },
        headers={"Authorization": f"Bearer {standin.token()}"},
    )
    assert response.json()["Key"] == f"user-library/{USER_A}/asset.png"
    library = standin.get_object("user-library", f"{USER_A}/asset.png")
    assert library is not None
    assert (library.data, library.content_type) == (PAYLOAD, "image/png")


def test_remove_returns_deleted_rows_and_nothing_for_missing(
    standin: StorageStandIn, service_client: SyncStorageClient
) -> None:
    standin.put_object(BUCKET, f"{USER_A}/{JOB}/0.png", b"x", "image/png")

    rows = service_client.from_(BUCKET).remove([f"{USER_A}/{JOB}/0.png", f"{USER_A}/none.png"])

    assert [row["name"] for row in rows] == [f"{USER_A}/{JOB}/0.png"]
    assert rows[0]["bucket_id"] == BUCKET
    assert service_client.from_(BUCKET).remove([f"{USER_A}/{JOB}/0.png"]) == []
    assert standin.object_names(BUCKET) == []


@pytest.mark.parametrize("base", ["root", "storage"])
def test_both_route_forms_answer_the_same(
    standin: StorageStandIn, make_client: ClientFactory, base: str
) -> None:
    bucket = make_client(base=base).from_(BUCKET)
    bucket.upload(f"{USER_A}/{JOB}/0.png", PAYLOAD, {"content-type": "image/png"})

    assert bucket.download(f"{USER_A}/{JOB}/0.png") == PAYLOAD
    prefix = "/storage/v1" if base == "storage" else ""
    assert [entry.raw_path for entry in standin.requests] == [
        f"{prefix}/object/{BUCKET}/{USER_A}/{JOB}/0.png"
    ] * 2


def test_supabase_create_client_storage_reaches_the_stand_in(standin: StorageStandIn) -> None:
    client = supabase.create_client(standin.url, standin.token())
    try:
        client.storage.from_(BUCKET).upload(
            f"{USER_A}/{JOB}/0.png", PAYLOAD, {"content-type": "image/png", "upsert": "true"}
        )
        assert client.storage.from_(BUCKET).download(f"{USER_A}/{JOB}/0.png") == PAYLOAD
    finally:
        client.storage.session.close()
    assert standin.requests[0].raw_path == f"/storage/v1/object/{BUCKET}/{USER_A}/{JOB}/0.png"


# --- SupabaseStorage ----------------------------------------------------------------------------


def test_put_get_round_trip_with_upsert(standin: StorageStandIn, storage: SupabaseStorage) -> None:
    path = asset_path(USER_A, JOB, 0, "png")
    stored = storage.put(BUCKET, path, PAYLOAD, "image/png")
    storage.put(BUCKET, path, PAYLOAD[::-1], "image/png")

    assert (stored.bucket, stored.path, stored.size, stored.content_type) == (
        BUCKET,
        path,
        len(PAYLOAD),
        "image/png",
    )
    assert storage.get(BUCKET, path) == PAYLOAD[::-1]
    assert storage.content_type(BUCKET, path) == "image/png"
    assert storage.exists(BUCKET, path) is True
    assert storage.exists(BUCKET, asset_path(USER_A, JOB, 1, "png")) is False
    upload = standin.requests[0]
    assert (upload.method, upload.raw_path) == ("POST", f"/storage/v1/object/{BUCKET}/{path}")


def test_list_descends_folders_pages_and_filters_by_prefix(
    standin: StorageStandIn, storage: SupabaseStorage
) -> None:
    names = [
        asset_path(USER_A, JOB, 0, "png"),
        thumbnail_path(USER_A, JOB, 0),
        asset_path(USER_A, JOB, 1, "png"),
        f"{USER_A}/{JOB}_1754611200.png",
        f"{USER_A}/other/0.mp4",
        f"{USER_B}/{JOB}/0.png",
        "root-object.png",
    ]
    for index, name in enumerate(names):
        standin.put_object(BUCKET, name, b"x" * (index + 1), "image/png")
    old = datetime(2025, 8, 10, 12, 0, tzinfo=UTC)
    standin.set_created_at(BUCKET, names[0], old)
    paged = SupabaseStorage.from_supabase(standin.url, standin.token(), list_page_size=2)

    with paged:
        everything = paged.list(BUCKET)
        under_user = paged.list(BUCKET, f"{USER_A}/")
        under_job = paged.list(BUCKET, f"{USER_A}/{JOB}")

    assert [info.path for info in everything] == sorted(names)
    assert [info.path for info in under_user] == sorted(names[:5])
    assert [info.path for info in under_job] == sorted(names[:4])
    first = next(info for info in everything if info.path == names[0])
    assert (first.size, first.content_type, first.created_at) == (1, "image/png", old)
    assert first.etag == hashlib.md5(b"x").hexdigest()
    list_calls = [entry for entry in standin.requests if entry.path.startswith("/object/list/")]
    assert len(list_calls) > len({entry.path for entry in list_calls})


def test_list_of_empty_and_missing_buckets(storage: SupabaseStorage) -> None:
    assert storage.list("user-library") == []
    assert storage.list(BUCKET, f"{USER_A}/") == []

    error = _storage_error(lambda: storage.list("no-such-bucket"))

    assert (error.code, error.status, error.retryable) == ("BUCKET_NOT_FOUND", "404", False)


def test_copy_within_a_bucket_is_server_side_and_overwrites(
    standin: StorageStandIn, storage: SupabaseStorage
) -> None:
    source, target = asset_path(USER_A, JOB, 0, "png"), asset_path(USER_A, JOB, 9, "png")
    standin.put_object(BUCKET, source, PAYLOAD, "image/png")

    storage.copy(BUCKET, source, target)
    assert [(entry.method, entry.path) for entry in standin.requests] == [("POST", "/object/copy")]

    standin.put_object(BUCKET, source, b"newer", "image/png")
    storage.copy(BUCKET, source, target)
    assert storage.get(BUCKET, target) == b"newer"


def test_copy_into_another_bucket_goes_through_the_client(
    standin: StorageStandIn, storage: SupabaseStorage
) -> None:
    source = f"{USER_A}/{JOB}_1754611200.png"
    standin.put_object("sdxl_image_fast", source, PAYLOAD, "image/png")

    storage.copy("sdxl_image_fast", source, asset_path(USER_A, JOB, 0, "png"), BUCKET)

    copied = standin.get_object(BUCKET, asset_path(USER_A, JOB, 0, "png"))
    assert copied is not None
    assert (copied.data, copied.content_type) == (PAYLOAD, "image/png")
    assert "/object/copy" not in [entry.path for entry in standin.requests]


def test_remove_returns_only_what_existed(
    standin: StorageStandIn, storage: SupabaseStorage
) -> None:
    kept = asset_path(USER_B, JOB, 0, "png")
    for path in (asset_path(USER_A, JOB, 0, "png"), thumbnail_path(USER_A, JOB, 0), kept):
        standin.put_object(BUCKET, path, b"x", "image/png")

    removed = storage.remove(
        BUCKET, [thumbnail_path(USER_A, JOB, 0), "missing.png", asset_path(USER_A, JOB, 0, "png")]
    )

    assert removed == [thumbnail_path(USER_A, JOB, 0), asset_path(USER_A, JOB, 0, "png")]
    assert storage.remove(BUCKET, ["missing.png"]) == []
    assert storage.remove(BUCKET, []) == []
    assert standin.object_names(BUCKET) == [kept]


def test_signed_url_from_the_backend(standin: StorageStandIn, storage: SupabaseStorage) -> None:
    standin.put_object(BUCKET, asset_path(USER_A, JOB, 0, "png"), PAYLOAD, "image/png")

    url = storage.signed_url(BUCKET, asset_path(USER_A, JOB, 0, "png"), 60)

    assert httpx.get(url).content == PAYLOAD


# --- Error translation --------------------------------------------------------------------------


def _backend(standin: StorageStandIn, token: str, **options: object) -> SupabaseStorage:
    return SupabaseStorage.from_supabase(standin.url, token, timeout=5.0, **options)  # type: ignore[arg-type]


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
    standin: StorageStandIn, case: str, code: str, status: str
) -> None:
    standin.create_bucket("tiny", file_size_limit=4, allowed_mime_types=["image/png"])
    standin.put_object(BUCKET, asset_path(USER_B, JOB, 0, "png"), b"x", "image/png")
    user_a = standin.token(role="authenticated", sub=USER_A)
    calls: dict[str, tuple[str, Callable[[SupabaseStorage], object]]] = {
        "octet-stream": (
            standin.token(),
            lambda s: s.put(BUCKET, "a/0.png", b"x", "application/octet-stream"),
        ),
        "too-large": (standin.token(), lambda s: s.put("tiny", "a/0.png", b"12345", "image/png")),
        "no-bucket": (standin.token(), lambda s: s.put("nope", "a/0.png", b"x", "image/png")),
        "no-object": (standin.token(), lambda s: s.get(BUCKET, "a/missing.png")),
        "hidden-object": (user_a, lambda s: s.get(BUCKET, asset_path(USER_B, JOB, 0, "png"))),
        "bad-jwt": (
            make_jwt("a-different-secret-of-32-bytes-or-more"),
            lambda s: s.get(BUCKET, "a/0.png"),
        ),
        "rls-write": (
            user_a,
            lambda s: s.put(BUCKET, asset_path(USER_B, JOB, 1, "png"), b"x", "image/png"),
        ),
        "non-uuid-user": (
            standin.token(role="authenticated", sub="user-b"),
            lambda s: s.get(BUCKET, asset_path(USER_B, JOB, 0, "png")),
        ),
    }
    token, call = calls[case]

    with _backend(standin, token) as backend:
        error = _storage_error(lambda: call(backend))

    assert (error.code, error.status, error.retryable) == (code, status, False)
    assert isinstance(error.__cause__, StorageApiError)


def test_conflict_from_the_client_maps_to_object_exists(
    standin: StorageStandIn, service_client: SyncStorageClient
) -> None:
    bucket = service_client.from_(BUCKET)
    bucket.upload("a/0.png", b"x", {"content-type": "image/png"})
    conflict = _api_error(lambda: bucket.upload("a/0.png", b"x", {"content-type": "image/png"}))

    error = storage_error_from_api(conflict, "upload", f"{BUCKET}/a/0.png")

    assert (error.code, error.status, error.retryable) == ("OBJECT_EXISTS", "409", False)


@pytest.mark.parametrize("status", [500, 503])
def test_server_faults_map_to_retryable_errors(
    standin: StorageStandIn, storage: SupabaseStorage, status: int
) -> None:
    standin.inject_fault("status", status=status, method="POST")

    error = _storage_error(lambda: storage.put(BUCKET, "a/0.png", b"x", "image/png"))

    assert (error.code, error.status, error.retryable) == ("STORAGE_UNAVAILABLE", str(status), True)
    assert standin.object_names(BUCKET) == []


def test_two_503s_then_success_stores_the_object_once(
    standin: StorageStandIn, storage: SupabaseStorage
) -> None:
    path = asset_path(USER_A, JOB, 0, "png")
    standin.inject_fault("status", count=2, method="POST", path_prefix=f"/object/{BUCKET}/")
    failures: list[StorageError] = []

    for _attempt in range(5):
        try:
            storage.put(BUCKET, path, PAYLOAD, "image/png")
            break
        except StorageError as exc:
            assert exc.retryable
            failures.append(exc)

    assert [failure.status for failure in failures] == ["503", "503"]
    assert [entry.status for entry in standin.requests] == [503, 503, 200]
    assert standin.object_names(BUCKET) == [path]
    assert storage.get(BUCKET, path) == PAYLOAD


def test_lost_answer_is_retried_safely_because_uploads_upsert(
    standin: StorageStandIn, storage: SupabaseStorage
) -> None:
    path = asset_path(USER_A, JOB, 0, "png")
    standin.inject_fault("drop_after", method="POST")

    first = _storage_error(lambda: storage.put(BUCKET, path, PAYLOAD, "image/png"))
    storage.put(BUCKET, path, PAYLOAD, "image/png")

    assert (first.code, first.retryable) == ("STORAGE_UNAVAILABLE", True)
    assert [(entry.status, entry.fault) for entry in standin.requests] == [
        (0, "drop_after"),
        (200, None),
    ]
    assert standin.object_names(BUCKET) == [path]


def test_a_slow_answer_stores_the_object_once_it_comes(
    standin: StorageStandIn, storage: SupabaseStorage
) -> None:
    path = asset_path(USER_A, JOB, 0, "png")
    standin.inject_fault("slow", method="POST", hang_seconds=0.3)

    started = time.monotonic()
    stored = storage.put(BUCKET, path, PAYLOAD, "image/png")

    assert time.monotonic() - started >= 0.3
    assert (stored.path, stored.size) == (path, len(PAYLOAD))
    assert [(entry.status, entry.fault) for entry in standin.requests] == [(200, "slow")]
    assert storage.get(BUCKET, path) == PAYLOAD


def test_timeout_maps_to_a_retryable_error(standin: StorageStandIn) -> None:
    standin.inject_fault("hang", method="POST", hang_seconds=2.0)

    with SupabaseStorage.from_supabase(standin.url, standin.token(), timeout=0.3) as backend:
        error = _storage_error(lambda: backend.put(BUCKET, "a/0.png", b"x", "image/png"))

    assert (error.code, error.status, error.retryable) == ("STORAGE_UNAVAILABLE", None, True)
    assert isinstance(error.__cause__, httpx.TimeoutException)
    standin.release_hangs()


def test_dropped_and_refused_connections_map_to_retryable_errors(
    standin: StorageStandIn, storage: SupabaseStorage
) -> None:
    standin.inject_fault("drop", method="GET")
    dropped = _storage_error(lambda: storage.get(BUCKET, "a/0.png"))

    with SupabaseStorage.from_supabase(f"http://127.0.0.1:{_closed_port()}", "key") as nowhere:
        refused = _storage_error(lambda: nowhere.get(BUCKET, "a/0.png"))

    assert (dropped.code, dropped.retryable) == ("STORAGE_UNAVAILABLE", True)
    assert isinstance(dropped.__cause__, httpx.RemoteProtocolError)
    assert (refused.code, refused.retryable) == ("STORAGE_UNAVAILABLE", True)
    assert isinstance(refused.__cause__, httpx.ConnectError)


def test_objects_above_the_standard_upload_limit_are_refused_before_sending(
    standin: StorageStandIn,
) -> None:
    big = b"v" * (STANDARD_UPLOAD_LIMIT + 1)
    with _backend(standin, standin.token()) as backend:
        error = _storage_error(lambda: backend.put(BUCKET, "a/0.mp4", big, "video/mp4"))
    assert (error.code, error.retryable) == ("OBJECT_TOO_LARGE_FOR_STANDARD_UPLOAD", False)
    assert standin.requests == []

    with _backend(standin, standin.token(), standard_upload_limit=None) as unlimited:
        unlimited.put(BUCKET, "a/0.mp4", big, "video/mp4")
    stored = standin.get_object(BUCKET, "a/0.mp4")
    assert stored is not None
    assert stored.size == len(big)


def test_the_key_never_reaches_logs_or_errors(
    standin: StorageStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    key = standin.token()
    caplog.set_level(logging.DEBUG)
    standin.inject_fault("status", method="POST")

    with _backend(standin, key) as backend:
        error = _storage_error(lambda: backend.put(BUCKET, "a/0.png", b"x", "image/png"))
        backend.put(BUCKET, "a/0.png", b"x", "image/png")
        backend.list(BUCKET)

    assert key not in caplog.text
    assert key not in str(error)
    assert key not in repr(backend)
