"""One storage contract for every backend: the local folder, Supabase Storage on the real server
(v1.70.6 on loopback, through the ``/storage/v1`` proxy) and the stand-in in ``devstack``.

Each test gets fresh buckets. What a backend cannot do (the local folder has no MIME allow-list,
no keys and no signed URLs; only the local folder has files on this disk) is a capability of its
target, and the backend's own answer (``signed_url`` None, ``local_path`` None) is checked.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.storage_standin import StorageStandIn
from devstack.tokens import role_key
from genjobs.errors import StorageError
from genjobs.storage.local import LocalFolderStorage
from genjobs.storage.supabase import SupabaseStorage
from tests.real_storage import WORKSPACE_MIME_TYPES, RealStorage

STANDIN_SECRET = "contract-tests-jwt-secret-0123456789abcdef"
PAYLOAD = random.Random(11).randbytes(50_000) + b"\r\n--x\r\n" + bytes(range(256))


@dataclass
class Target:
    """A backend under the contract, with two fresh buckets and what it can do."""

    name: str
    backend: Any
    bucket: str
    other_bucket: str
    enforces_mime_types: bool
    signs_urls: bool
    bad_key_backend: Any = None
    holds_local_files: bool = False

    def content_type(self, path: str, bucket: str | None = None) -> str | None:
        return self.backend.content_type(bucket or self.bucket, path)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def contract_standin() -> Iterator[StorageStandIn]:
    with StorageStandIn(STANDIN_SECRET) as running:
        yield running


def _local(tmp_path: Path) -> Iterator[Target]:
    root = tmp_path / "store"
    for bucket in ("contract", "other"):
        (root / bucket).mkdir(parents=True)
    local = LocalFolderStorage(root)
    yield Target("local", local, "contract", "other", False, False, holds_local_files=True)


def _real(request: pytest.FixtureRequest) -> Iterator[Target]:
    real: RealStorage = request.getfixturevalue("real_storage")
    bucket, other = real.create_bucket("contract"), real.create_bucket("other")
    with (
        real.backend() as backend,
        SupabaseStorage.from_supabase(real.url, role_key("service_role", "w" * 48)) as bad,
    ):
        yield Target("supabase", backend, bucket, other, True, True, bad)


def _standin(request: pytest.FixtureRequest) -> Iterator[Target]:
    standin: StorageStandIn = request.getfixturevalue("contract_standin")
    bucket, other = f"contract-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    for name in (bucket, other):
        standin.create_bucket(name, allowed_mime_types=WORKSPACE_MIME_TYPES)
    with (
        SupabaseStorage.from_supabase(standin.url, standin.token(), timeout=10.0) as backend,
        SupabaseStorage.from_supabase(standin.url, role_key("service_role", "w" * 48)) as bad,
    ):
        yield Target("standin", backend, bucket, other, True, True, bad)


@pytest.fixture(params=["local", "supabase", "standin"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "local":
        yield from _local(tmp_path)
    elif request.param == "supabase":
        yield from _real(request)
    else:
        yield from _standin(request)


def _error(call: Any) -> StorageError:
    with pytest.raises(StorageError) as caught:
        call()
    return caught.value


# --- put and get ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("u/j/0.png", "image/png"),
        ("u/j/0.thumb.webp", "image/webp"),
        ("u/j/0.mp4", "video/mp4"),
        ("u/j/1.jpg", "image/jpeg"),
    ],
)
def test_put_stores_exact_bytes_and_content_type(
    target: Target, name: str, content_type: str
) -> None:
    stored = target.backend.put(target.bucket, name, PAYLOAD, content_type)

    assert (stored.bucket, stored.path, stored.size, stored.content_type) == (
        target.bucket,
        name,
        len(PAYLOAD),
        content_type,
    )
    assert target.backend.get(target.bucket, name) == PAYLOAD
    assert target.content_type(name) == content_type
    [info] = target.backend.list(target.bucket, "u/j/")
    assert (info.path, info.size, info.content_type) == (name, len(PAYLOAD), content_type)


def test_put_upserts(target: Target) -> None:
    target.backend.put(target.bucket, "u/j/0.png", b"first version", "image/png")
    target.backend.put(target.bucket, "u/j/0.png", b"second", "image/webp")

    assert target.backend.get(target.bucket, "u/j/0.png") == b"second"
    assert target.content_type("u/j/0.png") == "image/webp"
    [info] = target.backend.list(target.bucket)
    assert (info.path, info.size) == ("u/j/0.png", 6)


def test_empty_object_round_trips(target: Target) -> None:
    target.backend.put(target.bucket, "u/empty.png", b"", "image/png")

    assert target.backend.get(target.bucket, "u/empty.png") == b""
    assert [(i.path, i.size) for i in target.backend.list(target.bucket)] == [("u/empty.png", 0)]


# --- errors -----------------------------------------------------------------------------------


def test_missing_object_is_a_final_404(target: Target) -> None:
    error = _error(lambda: target.backend.get(target.bucket, "u/missing.png"))

    assert (error.status, error.code, error.retryable) == ("404", "OBJECT_NOT_FOUND", False)


def test_missing_bucket_is_a_final_404(target: Target) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"

    error = _error(lambda: target.backend.get(missing, "u/a.png"))
    assert (error.status, error.code, error.retryable) == ("404", "BUCKET_NOT_FOUND", False)
    error = _error(lambda: target.backend.list(missing))
    assert (error.status, error.code, error.retryable) == ("404", "BUCKET_NOT_FOUND", False)


def test_missing_bucket_refuses_uploads_where_buckets_are_real(target: Target) -> None:
    if target.name == "local":
        pytest.skip("the local folder creates a bucket's folder on the first put")
    missing = f"missing-{uuid.uuid4().hex[:8]}"

    error = _error(lambda: target.backend.put(missing, "u/a.png", b"x", "image/png"))

    assert (error.status, error.code, error.retryable) == ("404", "BUCKET_NOT_FOUND", False)


@pytest.mark.parametrize("content_type", ["application/octet-stream", "text/plain"])
def test_a_type_outside_the_bucket_list_is_refused(target: Target, content_type: str) -> None:
    if not target.enforces_mime_types:
        pytest.skip(f"{target.name} has no MIME allow-list")

    error = _error(lambda: target.backend.put(target.bucket, "u/a.png", b"x", content_type))

    assert (error.status, error.code, error.retryable) == ("415", "INVALID_MIME_TYPE", False)
    assert target.backend.list(target.bucket) == []


def test_a_key_signed_with_another_secret_is_refused(target: Target) -> None:
    if target.bad_key_backend is None:
        pytest.skip(f"{target.name} takes no key")

    error = _error(lambda: target.bad_key_backend.put(target.bucket, "u/a.png", b"x", "image/png"))

    assert (error.status, error.code, error.retryable) == ("403", "STORAGE_ACCESS_DENIED", False)
    assert target.backend.list(target.bucket) == []


@pytest.mark.parametrize("path", ["", "/u/a.png", "u//a.png", "u/../a.png", "u/./a.png"])
def test_unclean_paths_are_refused_before_any_request(target: Target, path: str) -> None:
    error = _error(lambda: target.backend.put(target.bucket, path, b"x", "image/png"))

    assert (error.status, error.code, error.retryable) == ("400", "INVALID_OBJECT_PATH", False)


# --- listing ----------------------------------------------------------------------------------


def test_list_is_recursive_sorted_and_skips_folders(target: Target) -> None:
    paths = ["b/2/z.png", "a/1.png", "b/1.png", "a/sub/deep/x.webp", "c.png"]
    for index, path in enumerate(paths):
        target.backend.put(target.bucket, path, b"x" * (index + 1), "image/png")

    listed = target.backend.list(target.bucket)
    assert [info.path for info in listed] == sorted(paths)
    assert {info.path: info.size for info in listed} == {p: i + 1 for i, p in enumerate(paths)}
    assert [i.path for i in target.backend.list(target.bucket, "b/")] == ["b/1.png", "b/2/z.png"]
    assert [i.path for i in target.backend.list(target.bucket, "a/s")] == ["a/sub/deep/x.webp"]
    assert target.backend.list(target.bucket, "nothing/") == []


# --- copy and remove --------------------------------------------------------------------------


def test_copy_within_a_bucket_keeps_bytes_and_type_and_overwrites(target: Target) -> None:
    target.backend.put(target.bucket, "u/src.webp", PAYLOAD, "image/webp")
    target.backend.put(target.bucket, "u/dst.webp", b"old", "image/png")

    recorded = target.backend.copy(target.bucket, "u/src.webp", "u/dst.webp")

    # An overwrite goes through the client (the server's copy never overwrites): no row.
    assert recorded is None
    assert target.backend.get(target.bucket, "u/dst.webp") == PAYLOAD
    assert target.content_type("u/dst.webp") == "image/webp"
    assert target.backend.get(target.bucket, "u/src.webp") == PAYLOAD


def test_copy_into_another_bucket(target: Target) -> None:
    target.backend.put(target.bucket, "u/src.mp4", PAYLOAD, "video/mp4")

    recorded = target.backend.copy(target.bucket, "u/src.mp4", "v/dst.mp4", target.other_bucket)

    assert target.backend.get(target.other_bucket, "v/dst.mp4") == PAYLOAD
    assert target.content_type("v/dst.mp4", target.other_bucket) == "video/mp4"
    assert [i.path for i in target.backend.list(target.bucket)] == ["u/src.mp4"]
    # The local folder has no server; both servers copy into another bucket themselves.
    assert target.backend.server_side_copy_across_buckets is (target.name != "local")
    # What the copy reports of its destination is what a listing shows (the real server
    # answers with the new row; the backfill verifies by it instead of listing).
    (listed,) = target.backend.list(target.other_bucket, "v/")
    if target.name == "supabase":
        assert recorded is not None
        assert (recorded.size, recorded.etag) == (len(PAYLOAD), hashlib.md5(PAYLOAD).hexdigest())
    if recorded is not None:
        assert (recorded.path, recorded.size, recorded.content_type, recorded.etag) == (
            listed.path,
            listed.size,
            listed.content_type,
            listed.etag,
        )


def test_copy_of_a_missing_object_is_a_final_404(target: Target) -> None:
    error = _error(lambda: target.backend.copy(target.bucket, "u/none.png", "u/dst.png"))

    assert (error.status, error.code, error.retryable) == ("404", "OBJECT_NOT_FOUND", False)
    assert target.backend.list(target.bucket) == []


def test_remove_deletes_what_exists_and_reports_only_that(target: Target) -> None:
    for path in ("u/a.png", "u/b.png", "u/keep.png"):
        target.backend.put(target.bucket, path, path.encode(), "image/png")

    removed = target.backend.remove(target.bucket, ["u/b.png", "u/missing.png", "u/a.png"])

    assert removed == ["u/b.png", "u/a.png"]
    assert [i.path for i in target.backend.list(target.bucket)] == ["u/keep.png"]
    assert target.backend.get(target.bucket, "u/keep.png") == b"u/keep.png"
    assert target.backend.remove(target.bucket, ["u/a.png"]) == []


# --- signed URLs ------------------------------------------------------------------------------


def test_signed_url_reads_the_object_without_a_key(target: Target) -> None:
    target.backend.put(target.bucket, "u/j/0.png", PAYLOAD, "image/png")
    if not target.signs_urls:
        assert target.backend.signed_url(target.bucket, "u/j/0.png", 60) is None
        return

    url = target.backend.signed_url(target.bucket, "u/j/0.png", 60)
    response = httpx.get(url, timeout=30)

    assert response.status_code == 200
    assert response.content == PAYLOAD
    assert response.headers["content-type"] == "image/png"
    assert hashlib.md5(response.content).hexdigest() == hashlib.md5(PAYLOAD).hexdigest()
    error = _error(lambda: target.backend.signed_url(target.bucket, "u/j/none.png", 60))
    assert (error.status, error.code, error.retryable) == ("404", "OBJECT_NOT_FOUND", False)


# --- local files ------------------------------------------------------------------------------


def test_local_path_is_the_file_holding_the_bytes_or_none(target: Target) -> None:
    target.backend.put(target.bucket, "u/j/0.png", PAYLOAD, "image/png")

    path = target.backend.local_path(target.bucket, "u/j/0.png")

    if target.holds_local_files:
        assert path is not None and path.read_bytes() == PAYLOAD
    else:
        assert path is None
