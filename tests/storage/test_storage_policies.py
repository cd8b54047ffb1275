"""The row policies of ``workspace-temp`` (supabase/migrations) on the real storage server, through
its HTTP API with users' JWTs, as the frontend reaches it.

Objects are written with the service role (the flows' key); a user reads and signs what lies
under its own first folder and nothing else; no user writes, moves or deletes anything, and a
refused remove leaves the object in place.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.real_storage import WORKSPACE_BUCKET, RealStorage, storage_error_body

NOT_FOUND = (400, "404", "not_found")
RLS_REFUSED = "new row violates row-level security policy"


class Api:
    """Plain HTTP calls to ``{SUPABASE_URL}/storage/v1`` with one bearer token."""

    def __init__(self, real: RealStorage, token: str):
        self.client = httpx.Client(
            base_url=real.storage_url, headers=real.headers(token), timeout=30
        )

    def get(self, path: str) -> httpx.Response:
        return self.client.get(f"/object/{WORKSPACE_BUCKET}/{path}")

    def upload(self, path: str, data: bytes, *, upsert: bool = False) -> httpx.Response:
        headers = {"content-type": "image/png"}
        if upsert:
            headers["x-upsert"] = "true"
        return self.client.post(f"/object/{WORKSPACE_BUCKET}/{path}", content=data, headers=headers)

    def sign(self, path: str) -> httpx.Response:
        return self.client.post(f"/object/sign/{WORKSPACE_BUCKET}/{path}", json={"expiresIn": 60})

    def list(self, prefix: str) -> httpx.Response:
        return self.client.post(f"/object/list/{WORKSPACE_BUCKET}", json={"prefix": prefix})

    def move(self, source: str, destination: str) -> httpx.Response:
        body = {"bucketId": WORKSPACE_BUCKET, "sourceKey": source, "destinationKey": destination}
        return self.client.post("/object/move", json=body)

    def copy(self, source: str, destination: str) -> httpx.Response:
        body = {"bucketId": WORKSPACE_BUCKET, "sourceKey": source, "destinationKey": destination}
        return self.client.post("/object/copy", json=body)

    def remove(self, paths: list[str]) -> httpx.Response:
        return self.client.request(
            "DELETE", f"/object/{WORKSPACE_BUCKET}", json={"prefixes": paths}
        )

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def users(real_storage: RealStorage) -> Iterator[tuple[str, str, Api, Api, Api]]:
    """Two fresh users with one image each (written by the service role), and three clients:
    user A, the service role, and user A with an expired token."""
    import uuid

    user_a, user_b = str(uuid.uuid4()), str(uuid.uuid4())
    service = Api(real_storage, real_storage.service_key)
    for user in (user_a, user_b):
        response = service.upload(f"{user}/job/0.png", f"image of {user}".encode())
        assert response.status_code == 200, response.text
    as_a = Api(real_storage, real_storage.user_token(user_a))
    expired = Api(real_storage, real_storage.user_token(user_a, ttl_s=-60))
    yield user_a, user_b, as_a, service, expired
    for api in (as_a, service, expired):
        api.close()


def test_a_user_reads_lists_and_signs_its_own_folder(
    users: tuple[str, str, Api, Api, Api],
) -> None:
    user_a, _, as_a, _, _ = users
    own = f"{user_a}/job/0.png"

    response = as_a.get(own)
    assert (response.status_code, response.content) == (200, f"image of {user_a}".encode())
    assert response.headers["content-type"] == "image/png"
    listed = as_a.list(f"{user_a}/job/")
    assert [entry["name"] for entry in listed.json()] == ["0.png"]
    signed = as_a.sign(own)
    assert signed.status_code == 200
    fetched = httpx.get(as_a.client.base_url.join(signed.json()["signedURL"].lstrip("/")))
    assert (fetched.status_code, fetched.content) == (200, f"image of {user_a}".encode())


def test_another_users_objects_are_hidden(users: tuple[str, str, Api, Api, Api]) -> None:
    _, user_b, as_a, _, _ = users
    theirs = f"{user_b}/job/0.png"

    assert storage_error_body(as_a.get(theirs)) == NOT_FOUND
    assert storage_error_body(as_a.sign(theirs)) == NOT_FOUND
    listed = as_a.list(f"{user_b}/job/")
    assert (listed.status_code, listed.json()) == (200, [])


@pytest.mark.parametrize("upsert", [False, True])
def test_users_cannot_write_even_in_their_own_folder(
    real_storage: RealStorage, users: tuple[str, str, Api, Api, Api], upsert: bool
) -> None:
    user_a, user_b, as_a, service, _ = users

    for path in (f"{user_b}/job/0.png", f"{user_b}/job/1.png", f"{user_a}/job/1.png"):
        response = as_a.upload(path, b"overwritten", upsert=upsert)
        assert storage_error_body(response) == (400, "403", "Unauthorized")
        assert response.json()["message"] == RLS_REFUSED

    assert real_storage.object_names(WORKSPACE_BUCKET).count(f"{user_b}/job/1.png") == 0
    assert real_storage.object_names(WORKSPACE_BUCKET).count(f"{user_a}/job/1.png") == 0
    assert service.get(f"{user_b}/job/0.png").content == f"image of {user_b}".encode()


def test_users_cannot_move_copy_or_delete_another_users_object(
    real_storage: RealStorage, users: tuple[str, str, Api, Api, Api]
) -> None:
    user_a, user_b, as_a, service, _ = users
    theirs = f"{user_b}/job/0.png"

    assert storage_error_body(as_a.move(theirs, f"{user_a}/job/taken.png")) == NOT_FOUND
    assert storage_error_body(as_a.copy(theirs, f"{user_a}/job/taken.png")) == NOT_FOUND
    removed = as_a.remove([theirs])
    assert (removed.status_code, removed.json()) == (200, [])
    single = as_a.client.delete(f"/object/{WORKSPACE_BUCKET}/{theirs}")
    assert storage_error_body(single) == (400, "403", "Unauthorized")

    assert service.get(theirs).content == f"image of {user_b}".encode()
    row = real_storage.object_row(WORKSPACE_BUCKET, theirs)
    assert row is not None and row["metadata"]["mimetype"] == "image/png"
    assert real_storage.object_row(WORKSPACE_BUCKET, f"{user_a}/job/taken.png") is None


def test_a_users_remove_of_its_own_object_deletes_nothing(
    users: tuple[str, str, Api, Api, Api],
) -> None:
    user_a, _, as_a, service, _ = users
    own = f"{user_a}/job/0.png"

    removed = as_a.remove([own])

    assert (removed.status_code, removed.json()) == (200, [])
    assert service.get(own).content == f"image of {user_a}".encode()


def test_an_expired_token_reads_nothing_and_writes_nothing(
    users: tuple[str, str, Api, Api, Api],
) -> None:
    user_a, _, _, service, expired = users

    assert storage_error_body(expired.get(f"{user_a}/job/0.png")) == (
        400,
        "404",
        "Bucket not found",
    )
    refused = expired.upload(f"{user_a}/job/2.png", b"x")
    assert storage_error_body(refused) == (400, "403", "Unauthorized")
    assert storage_error_body(service.get(f"{user_a}/job/2.png")) == NOT_FOUND
