"""The storage stand-in itself: documented bodies, bucket API, listing, faults, lifecycle."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from storage3 import SyncStorageClient

from devstack.storage_standin import (
    CONTRACT_BUCKETS,
    StorageStandIn,
    make_jwt,
    serve_standin,
)

SECRET = "standin-tests-jwt-secret-0123456789abcdef"
USER = "9f1c6a52-3d0e-4b7a-8c55-1b2d3e4f5a6b"
BUCKET = "workspace-temp"


@pytest.fixture(scope="module")
def server() -> Iterator[StorageStandIn]:
    with StorageStandIn(SECRET, hang_seconds=2.0) as running:
        yield running


@pytest.fixture
def standin(server: StorageStandIn) -> StorageStandIn:
    server.reset()
    server.create_contract_buckets([BUCKET])
    return server


@pytest.fixture
def http(standin: StorageStandIn) -> Iterator[httpx.Client]:
    """Raw HTTP under ``/storage/v1`` with a service-role key."""
    headers = {"Authorization": f"Bearer {standin.token()}"}
    with httpx.Client(base_url=standin.storage_url, headers=headers, timeout=5.0) as client:
        yield client


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _upload(http: httpx.Client, path: str, **headers: str) -> httpx.Response:
    return http.post(
        f"/object/{path}", content=b"data", headers={"Content-Type": "image/png", **headers}
    )


def test_documented_error_bodies(standin: StorageStandIn, http: httpx.Client) -> None:
    standin.create_bucket("tiny", file_size_limit=1)
    standin.put_object(BUCKET, f"{USER}/j/0.png", b"x", "image/png")
    standin.put_object(BUCKET, "user-1/j/0.png", b"x", "image/png")
    user = standin.token(role="authenticated", sub=USER)

    answers = {
        "exists": _upload(http, f"{BUCKET}/{USER}/j/0.png"),
        "too large": _upload(http, "tiny/a.png"),
        "no bucket": _upload(http, "nope/a.png"),
        "no object": http.get(f"/object/{BUCKET}/{USER}/j/9.png"),
        "bad jwt": http.get(
            f"/object/{BUCKET}/{USER}/j/0.png", headers=_as(make_jwt("x" * 32 + "-other"))
        ),
        "rls": _upload(http, f"{BUCKET}/someone-else/0.png", **_as(user)),
        "bucket exists": http.post("/bucket", json={"id": BUCKET, "name": BUCKET}),
        "not empty": http.delete(f"/bucket/{BUCKET}"),
        "not a uuid": http.get(
            f"/object/{BUCKET}/user-1/j/0.png",
            headers=_as(standin.token(role="authenticated", sub="user-1")),
        ),
    }

    assert {case: response.status_code for case, response in answers.items()} == dict.fromkeys(
        answers, 400
    )
    duplicate = {
        "statusCode": "409",
        "error": "Duplicate",
        "message": "The resource already exists",
    }
    assert {case: response.json() for case, response in answers.items()} == {
        "exists": {**duplicate, "code": "KeyAlreadyExists"},
        "too large": {
            "statusCode": "413",
            "error": "Payload too large",
            "message": "The object exceeded the maximum allowed size",
            "code": "EntityTooLarge",
        },
        "no bucket": {
            "statusCode": "404",
            "error": "Bucket not found",
            "message": "Bucket not found",
            "code": "NoSuchBucket",
        },
        "no object": {
            "statusCode": "404",
            "error": "not_found",
            "message": "Object not found",
            "code": "NoSuchKey",
        },
        # A download with a key that fails verification reads a public bucket or nothing.
        "bad jwt": {
            "statusCode": "404",
            "error": "Bucket not found",
            "message": "Bucket not found",
            "code": "NoSuchBucket",
        },
        "rls": {
            "statusCode": "403",
            "error": "Unauthorized",
            "message": "new row violates row-level security policy",
            "code": "AccessDenied",
        },
        "bucket exists": {**duplicate, "code": "BucketAlreadyExists"},
        "not empty": {
            "statusCode": "409",
            "error": "ResourceNotEmpty",
            "message": "The bucket you tried to delete is not empty",
            "code": "ResourceNotEmpty",
        },
        "not a uuid": {
            "statusCode": "400",
            "error": "InvalidParameter",
            "message": 'invalid input syntax for type uuid: "user-1"',
            "code": "InvalidParameter",
        },
    }


def test_expired_jwt_and_unknown_route(standin: StorageStandIn, http: httpx.Client) -> None:
    expired = http.get("/bucket", headers=_as(standin.token(exp_seconds=-5)))
    unknown = http.get("/nothing/here")

    assert (expired.status_code, expired.json()["statusCode"]) == (400, "403")
    assert expired.json()["message"] == '"exp" claim timestamp check failed'
    assert unknown.status_code == 404


def test_bucket_api_with_the_official_client(standin: StorageStandIn) -> None:
    headers = _as(standin.token())
    with httpx.Client(timeout=5.0) as session:
        client = SyncStorageClient(standin.url + "/", headers, http_client=session)
        client.create_bucket(
            "legacy",
            options={
                "public": True,
                "file_size_limit": 5242880,
                "allowed_mime_types": ["image/png"],
            },
        )
        bucket = client.get_bucket("legacy")
        listed = [entry.id for entry in client.list_buckets()]
        client.from_("legacy").upload("u/a.png", b"x", {"content-type": "image/png"})
        client.empty_bucket("legacy")
        client.delete_bucket("legacy")

    assert (bucket.public, bucket.file_size_limit, bucket.allowed_mime_types) == (
        True,
        5242880,
        ["image/png"],
    )
    assert listed == sorted([BUCKET, "legacy"])
    assert standin.bucket_ids() == [BUCKET]


def test_users_cannot_manage_buckets(standin: StorageStandIn, http: httpx.Client) -> None:
    user = _as(standin.token(role="authenticated", sub=USER))

    created = http.post("/bucket", json={"id": "mine"}, headers=user)
    listed = http.get("/bucket", headers=user)

    assert created.json()["message"] == "new row violates row-level security policy"
    assert listed.json() == []
    assert standin.bucket(BUCKET) is not None
    assert standin.bucket("mine") is None


def test_bucket_size_limit_accepts_unit_strings(
    standin: StorageStandIn, http: httpx.Client
) -> None:
    http.post("/bucket", json={"id": "sized", "file_size_limit": "20MB"})
    bad = http.post("/bucket", json={"id": "bad", "file_size_limit": "lots"})

    bucket = standin.bucket("sized")
    assert bucket is not None
    assert bucket.file_size_limit == 20 * 1024 * 1024
    assert bad.json()["statusCode"] == "400"


def test_list_sorts_folders_among_files_by_name_and_pages_and_searches(
    standin: StorageStandIn, http: httpx.Client
) -> None:
    for name in ("b.png", "a.png", "c.webp", "z/deep.png", "y/deeper/x.png"):
        standin.put_object(BUCKET, f"{USER}/{name}", b"x", "image/png")
    standin.set_created_at(BUCKET, f"{USER}/c.webp", datetime(2025, 8, 1, tzinfo=UTC))

    def names(**options: object) -> list[str]:
        response = http.post(f"/object/list/{BUCKET}", json={"prefix": USER, **options})
        return [entry["name"] for entry in response.json()]

    assert names() == ["a.png", "b.png", "c.webp", "y", "z"]
    assert names(limit=2, offset=1) == ["b.png", "c.webp"]
    assert names(sortBy={"column": "name", "order": "desc"}) == [
        "z",
        "y",
        "c.webp",
        "b.png",
        "a.png",
    ]
    assert names(sortBy={"column": "created_at", "order": "asc"})[2] == "c.webp"
    assert names(search="B") == ["b.png"]
    assert http.post(f"/object/list/{BUCKET}", json={"prefix": "nobody/"}).json() == []
    assert http.post("/object/list/no-such-bucket", json={"prefix": ""}).json() == []


def test_set_created_at_shows_in_info_and_list(standin: StorageStandIn, http: httpx.Client) -> None:
    path = f"{USER}/j/0.png"
    standin.put_object(BUCKET, path, b"x", "image/png")
    standin.set_created_at(BUCKET, path, datetime(2025, 8, 7, 9, 30, tzinfo=UTC))

    info = http.get(f"/object/info/{BUCKET}/{path}").json()
    listed = http.post(f"/object/list/{BUCKET}", json={"prefix": f"{USER}/j"}).json()

    assert info["created_at"] == "2025-08-07T09:30:00.000Z"
    assert info["last_modified"] == "2025-08-07T09:30:00.000Z"
    assert listed[0]["created_at"] == "2025-08-07T09:30:00.000Z"
    assert listed[0]["metadata"]["lastModified"] == "2025-08-07T09:30:00.000Z"


def test_users_without_a_delete_policy_remove_nothing(
    standin: StorageStandIn, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = f"{USER}/j/0.png"
    standin.put_object(BUCKET, path, b"x", "image/png")
    user = _as(standin.token(role="authenticated", sub=USER))
    monkeypatch.setattr(standin, "users_can_delete", False)

    refused = http.request("DELETE", f"/object/{BUCKET}", json={"prefixes": [path]}, headers=user)
    monkeypatch.setattr(standin, "users_can_delete", True)
    allowed = http.request("DELETE", f"/object/{BUCKET}", json={"prefixes": [path]}, headers=user)

    assert refused.json() == []
    assert [row["name"] for row in allowed.json()] == [path]


def test_public_bucket_objects_need_no_authorization(standin: StorageStandIn) -> None:
    standin.create_bucket("videos", public=True)
    standin.put_object("videos", "v.mp4", b"mp4", "video/mp4")
    standin.put_object(BUCKET, "u/v.mp4", b"mp4", "video/mp4")

    public = httpx.get(f"{standin.url}/object/public/videos/v.mp4")
    private = httpx.get(f"{standin.url}/object/public/{BUCKET}/u/v.mp4")

    assert (public.status_code, public.content, public.headers["content-type"]) == (
        200,
        b"mp4",
        "video/mp4",
    )
    assert (private.status_code, private.json()["statusCode"]) == (400, "404")


def test_chunked_request_bodies_are_read_whole(standin: StorageStandIn, http: httpx.Client) -> None:
    chunks = [b"first-", b"\r\n0\r\n", b"last"]

    response = http.post(
        f"/object/{BUCKET}/{USER}/c.png",
        content=iter(chunks),
        headers={"Content-Type": "image/png"},
    )

    stored = standin.get_object(BUCKET, f"{USER}/c.png")
    assert response.status_code == 200
    assert stored is not None
    assert stored.data == b"".join(chunks)


def test_faults_match_method_and_path_and_count_down(
    standin: StorageStandIn, http: httpx.Client
) -> None:
    standin.inject_fault("status", count=2, method="GET", path_prefix=f"/object/{BUCKET}/")
    standin.put_object(BUCKET, f"{USER}/0.png", b"x", "image/png")

    statuses = [http.post(f"/object/list/{BUCKET}", json={"prefix": ""}).status_code]
    statuses += [http.get(f"/object/{BUCKET}/{USER}/0.png").status_code for _ in range(3)]

    assert statuses == [200, 503, 503, 200]
    assert standin.pending_faults == 0
    assert [(entry.method, entry.status, entry.fault) for entry in standin.requests] == [
        ("POST", 200, None),
        ("GET", 503, "status"),
        ("GET", 503, "status"),
        ("GET", 200, None),
    ]


def test_random_fault_rate_is_reproducible_with_a_seed(
    standin: StorageStandIn, http: httpx.Client
) -> None:
    def run() -> list[int]:
        standin.set_fault_rate(0.5, seed=11, method="GET")
        try:
            return [http.get("/bucket").status_code for _ in range(16)]
        finally:
            standin.clear_faults()

    first, second = run(), run()

    assert first == second
    assert set(first) == {200, 503}


def test_drop_closes_the_connection_without_an_answer(
    standin: StorageStandIn, http: httpx.Client
) -> None:
    standin.inject_fault("drop")

    with pytest.raises(httpx.RemoteProtocolError):
        http.get("/bucket")

    assert http.get("/bucket").status_code == 200
    assert [(entry.status, entry.fault) for entry in standin.requests] == [(0, "drop"), (200, None)]


def test_stop_releases_hanging_requests() -> None:
    standin = StorageStandIn(SECRET, hang_seconds=30.0).start()
    standin.inject_fault("hang")
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            httpx.get(f"{standin.url}/bucket", headers=_as(standin.token()), timeout=20.0)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while not standin.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    standin.stop()
    caller.join(timeout=5)

    assert not caller.is_alive()
    assert time.monotonic() - started < 3
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.TransportError)


def test_put_object_needs_an_existing_bucket(standin: StorageStandIn) -> None:
    with pytest.raises(KeyError):
        standin.put_object("nope", "a.png", b"x", "image/png")


def test_serve_standin_runs_until_stopped() -> None:
    stop = threading.Event()
    ready: list[StorageStandIn] = []
    answers: list[list[str]] = []

    def on_ready(running: StorageStandIn) -> None:
        response = httpx.get(f"{running.storage_url}/bucket", headers=_as(running.token()))
        answers.append([row["id"] for row in response.json()])
        ready.append(running)
        stop.set()

    runner = threading.Thread(
        target=serve_standin,
        kwargs={"jwt_secret": SECRET, "port": 0, "stop_event": stop, "on_ready": on_ready},
    )
    runner.start()
    runner.join(timeout=10)

    assert not runner.is_alive()
    assert answers == [sorted(CONTRACT_BUCKETS)]
    with pytest.raises(RuntimeError):
        _ = ready[0].url
