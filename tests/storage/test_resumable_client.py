"""The resumable (TUS) upload client against a fake TUS server at the network seam.

``httpx.MockTransport`` plays the server: it keeps each upload's bytes, answers as Supabase
Storage's TUS route does, and can fail a request after keeping part of its body (a connection
dropped or a timeout mid-chunk), answer an error status, or forget an upload. The tests assert
on the exact requests sent and on the bytes the fake server ends up holding.
"""

from __future__ import annotations

import base64
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from storage3 import SyncStorageClient

from genjobs.errors import StorageError
from genjobs.storage.limits import WORKSPACE_TEMP_FILE_SIZE_LIMIT
from genjobs.storage.resumable import ResumableUploader, upload_metadata, upload_version
from genjobs.storage.supabase import SupabaseStorage

BASE = "https://project.supabase.test/storage/v1/"
ENDPOINT = BASE + "upload/resumable"
KEY = "service-role-key-for-tests"
HEADERS = {"apiKey": KEY, "Authorization": f"Bearer {KEY}"}
BUCKET = "workspace-temp"
PATH = "9f1c6a52-3d0e-4b7a-8c55-1b2d3e4f5a6b/5d2f9a10-8c3b-4e6f-a1d7-0b9c8e7f6a5d/0.mp4"
CHUNK = 1000
DATA = random.Random(11).randbytes(3500)


@dataclass
class Fault:
    """What the fake server does to one request instead of answering it normally.

    ``keep`` bytes of a PATCH body are stored before ``raise_`` is raised (a dropped connection
    or a timeout mid-chunk); ``status`` answers that status with ``body`` instead.
    """

    method: str
    keep: int = 0
    raise_: type[Exception] | None = None
    status: int | None = None
    body: str = ""
    answer_after_storing: bool = False


@dataclass
class Upload:
    length: int
    metadata: dict[str, str]
    version: str
    data: bytearray = field(default_factory=bytearray)


@dataclass
class FakeTusServer:
    """Supabase Storage's TUS route, in memory, with scripted faults."""

    faults: list[Fault] = field(default_factory=list)
    uploads: dict[str, Upload] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    writes_objects: bool = True
    requests: list[httpx.Request] = field(default_factory=list)
    standard_uploads: list[httpx.Request] = field(default_factory=list)

    def fail_next(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def forget(self) -> None:
        self.uploads.clear()

    def _fault(self, method: str) -> Fault | None:
        for index, fault in enumerate(self.faults):
            if fault.method == method:
                return self.faults.pop(index)
        return None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.startswith("/storage/v1/object/info/"):
            return self._info(request.url.path.removeprefix("/storage/v1/object/info/"))
        if request.url.path.startswith("/storage/v1/object/"):
            self.standard_uploads.append(request)
            return httpx.Response(200, json={"Key": f"{BUCKET}/{PATH}", "Id": "id"})
        fault = self._fault(request.method)
        if fault is not None and fault.status is not None and not fault.answer_after_storing:
            return httpx.Response(fault.status, text=fault.body)
        if request.method == "POST":
            return self._create(request)
        upload_id = request.url.path.rsplit("/", 1)[-1]
        upload = self.uploads.get(upload_id)
        if upload is None:
            return httpx.Response(404, text="The file for this url was not found")
        if request.method == "HEAD":
            headers = {"Upload-Offset": str(len(upload.data)), "Upload-Length": str(upload.length)}
            return httpx.Response(200, headers=headers)
        assert request.method == "PATCH"
        if int(request.headers["Upload-Offset"]) != len(upload.data):
            return httpx.Response(409, text="Upload-Offset conflict")
        body = request.read()
        if fault is not None and fault.raise_ is not None:
            self._store(upload, body[: fault.keep])
            raise fault.raise_("fault injected by the test", request=request)
        self._store(upload, body)
        if fault is not None and fault.status is not None:
            return httpx.Response(fault.status, text=fault.body)
        return httpx.Response(204, headers={"Upload-Offset": str(len(upload.data))})

    def _store(self, upload: Upload, body: bytes) -> None:
        """Keep the bytes; with the last of them the object is written (unless told not to)."""
        upload.data += body
        if len(upload.data) == upload.length and self.writes_objects:
            name = f"{upload.metadata['bucketName']}/{upload.metadata['objectName']}"
            self.versions[name] = upload.version

    def _create(self, request: httpx.Request) -> httpx.Response:
        metadata = {}
        for pair in request.headers["Upload-Metadata"].split(","):
            key, value = pair.split(" ")
            metadata[key] = base64.b64decode(value).decode()
        version = str(uuid.UUID(int=len(self.uploads) + 1))
        name = f"{metadata['bucketName']}/{metadata['objectName']}/{version}"
        upload_id = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
        self.uploads[upload_id] = Upload(int(request.headers["Upload-Length"]), metadata, version)
        return httpx.Response(201, headers={"Location": f"{ENDPOINT}/{upload_id}"})

    def _info(self, target: str) -> httpx.Response:
        version = self.versions.get(target)
        if version is None:
            body = {"statusCode": "404", "error": "not_found", "message": "Object not found"}
            return httpx.Response(400, json=body)
        return httpx.Response(200, json={"name": target, "version": version})

    def only_upload(self) -> Upload:
        assert len(self.uploads) == 1
        return next(iter(self.uploads.values()))

    def sent(self, method: str) -> list[httpx.Request]:
        return [request for request in self.requests if request.method == method]


@pytest.fixture
def server() -> FakeTusServer:
    return FakeTusServer()


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def http(server: FakeTusServer) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.MockTransport(server)) as client:
        yield client


@pytest.fixture
def uploader(http: httpx.Client, waits: list[float]) -> ResumableUploader:
    return ResumableUploader(
        http, BASE, HEADERS, chunk_size=CHUNK, chunk_tries=3, restarts=1, sleep=waits.append
    )


@pytest.fixture
def storage(http: httpx.Client, uploader: ResumableUploader) -> SupabaseStorage:
    client = SyncStorageClient(BASE, HEADERS, http_client=http)
    return SupabaseStorage(client, resumable=uploader, resumable_upload_threshold_bytes=CHUNK)


def _storage_error(storage: SupabaseStorage, data: bytes = DATA) -> StorageError:
    with pytest.raises(StorageError) as caught:
        storage.put(BUCKET, PATH, data, "video/mp4")
    return caught.value


def _patch_offsets(server: FakeTusServer) -> list[tuple[int, int]]:
    return [
        (int(request.headers["Upload-Offset"]), len(request.content))
        for request in server.sent("PATCH")
    ]


def test_upload_sends_the_creation_and_chunks_tus_expects(
    server: FakeTusServer, storage: SupabaseStorage
) -> None:
    stored = storage.put(BUCKET, PATH, DATA, "video/mp4")

    assert (stored.path, stored.size, stored.content_type) == (PATH, len(DATA), "video/mp4")
    assert server.standard_uploads == []
    creation = server.sent("POST")[0]
    assert str(creation.url) == ENDPOINT
    assert creation.headers["Authorization"] == f"Bearer {KEY}"
    assert creation.headers["apiKey"] == KEY
    assert creation.headers["Tus-Resumable"] == "1.0.0"
    assert creation.headers["x-upsert"] == "true"
    assert creation.headers["Upload-Length"] == str(len(DATA))
    assert creation.content == b""
    upload = server.only_upload()
    assert upload.metadata == {
        "bucketName": BUCKET,
        "objectName": PATH,
        "contentType": "video/mp4",
        "cacheControl": "3600",
    }
    assert _patch_offsets(server) == [(0, 1000), (1000, 1000), (2000, 1000), (3000, 500)]
    for patch in server.sent("PATCH"):
        assert patch.headers["Content-Type"] == "application/offset+octet-stream"
        assert patch.headers["Tus-Resumable"] == "1.0.0"
        assert patch.headers["x-upsert"] == "true"
        assert patch.headers["Authorization"] == f"Bearer {KEY}"
    assert bytes(upload.data) == DATA


def test_upload_metadata_is_base64_per_value() -> None:
    header = upload_metadata({"objectName": "u/j/0.mp4", "contentType": "video/mp4"})

    assert header == "objectName dS9qLzAubXA0,contentType dmlkZW8vbXA0"


@pytest.mark.parametrize("separator", ["/", "-$v-"])
def test_the_upload_url_names_the_version_it_writes(separator: str) -> None:
    version = "b5b2752b-7ca9-4e3b-afb7-399505919035"
    name = f"{BUCKET}/{PATH}{separator}{version}".encode()
    segment = base64.urlsafe_b64encode(name).decode().rstrip("=")

    assert upload_version(f"{ENDPOINT}/{segment}") == version
    assert upload_version(f"{ENDPOINT}/not-base64!") is None


def test_objects_up_to_the_threshold_take_the_standard_upload(
    server: FakeTusServer, storage: SupabaseStorage
) -> None:
    storage.put(BUCKET, PATH, DATA[:CHUNK], "video/mp4")

    assert [request.method for request in server.requests] == ["POST"]
    assert server.standard_uploads[0].url.path == f"/storage/v1/object/{BUCKET}/{PATH}"
    assert server.uploads == {}


@pytest.mark.parametrize("failure", [httpx.RemoteProtocolError, httpx.WriteTimeout])
def test_a_failure_mid_chunk_resumes_from_the_server_offset(
    server: FakeTusServer,
    storage: SupabaseStorage,
    waits: list[float],
    failure: type[Exception],
) -> None:
    server.fail_next(Fault("PATCH"), Fault("PATCH", keep=400, raise_=failure))

    storage.put(BUCKET, PATH, DATA, "video/mp4")

    assert bytes(server.only_upload().data) == DATA
    assert _patch_offsets(server) == [
        (0, 1000),
        (1000, 1000),
        (1400, 1000),
        (2400, 1000),
        (3400, 100),
    ]
    assert len(server.sent("HEAD")) == 1
    assert len(server.sent("POST")) == 1
    assert waits == [0.5]


def test_transient_statuses_are_tried_again_with_growing_waits(
    server: FakeTusServer, storage: SupabaseStorage, waits: list[float]
) -> None:
    server.fail_next(
        Fault("POST", status=503, body="upstream unavailable"),
        Fault("PATCH", status=429, body="slow down"),
        Fault("PATCH", status=500, body="internal"),
    )

    storage.put(BUCKET, PATH, DATA, "video/mp4")

    assert bytes(server.only_upload().data) == DATA
    assert waits == [0.5, 0.5, 1.0]
    assert sum(length for _, length in _patch_offsets(server)) == len(DATA) + 2 * CHUNK
    assert len(server.sent("HEAD")) == 2


def test_a_stall_that_never_ends_gives_up_retryably(
    server: FakeTusServer, storage: SupabaseStorage, waits: list[float]
) -> None:
    server.fail_next(*(Fault("PATCH", raise_=httpx.ReadTimeout) for _ in range(10)))

    error = _storage_error(storage)

    assert (error.code, error.retryable) == ("STORAGE_UNAVAILABLE", True)
    assert isinstance(error.__cause__, httpx.ReadTimeout)
    assert len(server.sent("PATCH")) == 3
    assert waits == [0.5, 1.0]
    assert server.only_upload().data == bytearray()


def test_progress_resets_the_tries(
    server: FakeTusServer, storage: SupabaseStorage, waits: list[float]
) -> None:
    # Every other PATCH drops after 300 bytes: three failures, as many as the tries, yet each
    # after the server's offset moved, so the upload goes on.
    dropped = Fault("PATCH", keep=300, raise_=httpx.RemoteProtocolError)
    server.fail_next(dropped, Fault("PATCH"), dropped, Fault("PATCH"), dropped)

    storage.put(BUCKET, PATH, DATA, "video/mp4")

    assert bytes(server.only_upload().data) == DATA
    assert _patch_offsets(server) == [
        (0, 1000),
        (300, 1000),
        (1300, 1000),
        (1600, 1000),
        (2600, 900),
        (2900, 600),
    ]
    assert waits == [0.5, 0.5, 0.5]


def test_a_lost_answer_to_the_last_chunk_is_confirmed_by_the_object_version(
    server: FakeTusServer, storage: SupabaseStorage
) -> None:
    server.fail_next(
        Fault("PATCH"),
        Fault("PATCH"),
        Fault("PATCH"),
        Fault("PATCH", keep=500, raise_=httpx.ReadTimeout),
    )

    storage.put(BUCKET, PATH, DATA, "video/mp4")

    assert bytes(server.only_upload().data) == DATA
    assert [request.method for request in server.requests[-2:]] == ["HEAD", "GET"]
    assert server.requests[-1].url.path == f"/storage/v1/object/info/{BUCKET}/{PATH}"
    assert len(server.sent("PATCH")) == 4


def test_an_object_that_never_shows_the_uploaded_version_fails_retryably(
    server: FakeTusServer, storage: SupabaseStorage, waits: list[float]
) -> None:
    # Every byte arrives, the answer is lost, and the server never writes the object.
    server.writes_objects = False
    server.fail_next(*(Fault("PATCH") for _ in range(3)))
    server.fail_next(Fault("PATCH", keep=500, raise_=httpx.ReadTimeout))

    error = _storage_error(storage)

    assert (error.code, error.retryable) == ("STORAGE_UNAVAILABLE", True)
    assert "shows version None" in error.message
    assert len(server.sent("GET")) == 3
    assert waits == [0.5, 0.5, 1.0]


def test_an_offset_conflict_asks_the_server_again(
    server: FakeTusServer, storage: SupabaseStorage
) -> None:
    server.fail_next(Fault("PATCH", status=409, body="Upload-Offset conflict"))

    storage.put(BUCKET, PATH, DATA, "video/mp4")

    assert bytes(server.only_upload().data) == DATA
    assert len(server.sent("HEAD")) == 1


def test_a_gone_upload_starts_a_new_one(server: FakeTusServer, storage: SupabaseStorage) -> None:
    server.fail_next(Fault("PATCH"), Fault("PATCH", status=410, body="expired"))

    storage.put(BUCKET, PATH, DATA, "video/mp4")

    assert len(server.sent("POST")) == 2
    assert [bytes(upload.data) for upload in server.uploads.values()] == [DATA[:CHUNK], DATA]


def test_an_upload_that_keeps_disappearing_gives_up_retryably(
    server: FakeTusServer, storage: SupabaseStorage
) -> None:
    server.fail_next(*(Fault("PATCH", status=404, body="not found") for _ in range(5)))

    error = _storage_error(storage)

    assert (error.code, error.retryable) == ("STORAGE_UNAVAILABLE", True)
    assert len(server.sent("POST")) == 2
    assert "gone 2 times" in error.message


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (415, "mime type video/mp4 is not supported", "INVALID_MIME_TYPE"),
        (404, "Bucket not found", "BUCKET_NOT_FOUND"),
        (
            400,
            '{"statusCode":"403","error":"Unauthorized","message":"invalid signature"}',
            "STORAGE_ACCESS_DENIED",
        ),
        (400, "Upload-Metadata is invalid", "STORAGE_BAD_REQUEST"),
    ],
)
def test_creation_refusals_map_like_standard_uploads(
    server: FakeTusServer,
    storage: SupabaseStorage,
    waits: list[float],
    status: int,
    body: str,
    code: str,
) -> None:
    server.fail_next(Fault("POST", status=status, body=body))

    error = _storage_error(storage)

    assert (error.code, error.retryable) == (code, False)
    assert len(server.requests) == 1
    assert waits == []


def test_a_refused_size_names_the_object_its_size_and_the_limit(
    server: FakeTusServer, storage: SupabaseStorage
) -> None:
    server.fail_next(Fault("POST", status=413, body="Maximum size exceeded"))

    error = _storage_error(storage)

    assert (error.code, error.status, error.retryable) == ("OBJECT_TOO_LARGE", "413", False)
    assert f"{BUCKET}/{PATH} has {len(DATA)} bytes" in error.message
    assert str(WORKSPACE_TEMP_FILE_SIZE_LIMIT) in error.message
    assert "Maximum size exceeded" in error.message


def test_a_refused_chunk_is_not_tried_again(
    server: FakeTusServer, storage: SupabaseStorage, waits: list[float]
) -> None:
    server.fail_next(Fault("PATCH", status=403, body="new row violates row-level security policy"))

    error = _storage_error(storage)

    assert (error.code, error.retryable) == ("STORAGE_ACCESS_DENIED", False)
    assert waits == []


def test_an_unusable_offset_is_a_bad_response(
    server: FakeTusServer, storage: SupabaseStorage
) -> None:
    server.fail_next(Fault("PATCH", status=204, answer_after_storing=True))

    error = _storage_error(storage)

    assert (error.code, error.retryable) == ("STORAGE_BAD_RESPONSE", True)


def test_the_key_never_reaches_logs_or_errors(
    server: FakeTusServer, storage: SupabaseStorage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    server.fail_next(*(Fault("PATCH", raise_=httpx.ReadTimeout) for _ in range(3)))

    error = _storage_error(storage)

    assert KEY not in caplog.text
    assert KEY not in str(error)
    assert KEY not in repr(storage)
