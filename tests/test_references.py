"""Reference classification and fetching, against a real local HTTP server and a local store."""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from genjobs.errors import ErrorCode, InvalidPayload, ReferenceDownloadError, StorageError
from genjobs.jobs.plan import ReferenceInput, RenderPlan
from genjobs.references import (
    HttpReference,
    ReferenceFetcher,
    StorageReference,
    classify_reference,
    classify_references,
    fetch_all,
    redact_url,
)
from genjobs.storage.local import LocalFolderStorage
from genjobs.storage.supabase import SupabaseStorage

USER = "6f1c2a9e-1111-4222-8333-944455556666"
OTHER = "0a0b0c0d-aaaa-4bbb-8ccc-dddddddddddd"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.SECRET-SIGNED-TOKEN"
SUPABASE = "https://abc.supabase.co"


def png_bytes(
    size: tuple[int, int] = (64, 48), color: tuple[int, ...] = (200, 30, 40), mode: str = "RGB"
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png_bytes()
JPEG_BUFFER = io.BytesIO()
Image.new("RGB", (32, 16), (10, 200, 10)).save(JPEG_BUFFER, format="JPEG")
JPEG = JPEG_BUFFER.getvalue()
TRANSPARENT_PNG = png_bytes((8, 8), (0, 0, 0, 0), mode="RGBA")


class ReferenceServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.stop = threading.Event()
        self.requests: list[tuple[str, str | None]] = []
        self.authorizations: list[str | None] = []
        self.endless_sent: list[int] = []
        self.endless_done = threading.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up on the slow routes are expected; keep the output quiet."""


class Handler(BaseHTTPRequestHandler):
    server: ReferenceServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request log lines."""

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str | None = "image/png",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Host")))
        path = self.path.split("?", 1)[0]
        routes = {
            "/ok.png": lambda: self._send(200, PNG),
            "/ok.jpg": lambda: self._send(200, JPEG, "image/jpeg; charset=binary"),
            "/transparent.png": lambda: self._send(200, TRANSPARENT_PNG),
            "/page.html": lambda: self._send(200, b"<html>hi</html>", "text/html"),
            "/svg": lambda: self._send(200, b"<svg/>", "image/svg+xml"),
            "/no-type": lambda: self._send(200, PNG, None),
            "/fake.png": lambda: self._send(200, b"definitely not a png", "image/png"),
            "/truncated.png": lambda: self._send(200, PNG[: len(PNG) // 2]),
            "/missing.png": lambda: self._send(404, b"not found", "text/plain"),
            "/busy.png": lambda: self._send(503, b"busy", "text/plain"),
            "/redirect-ok": lambda: self._send(302, b"", None, {"Location": "/ok.png"}),
            "/redirect-private": lambda: self._send(
                302, b"", None, {"Location": "http://10.0.0.1/x.png"}
            ),
            "/redirect-metadata": lambda: self._send(
                301, b"", None, {"Location": "http://169.254.169.254/latest/meta-data/"}
            ),
            "/redirect-file": lambda: self._send(
                302, b"", None, {"Location": "file:///etc/passwd"}
            ),
            "/redirect-data": lambda: self._send(
                302, b"", None, {"Location": "data:image/png;base64,iVBORw0KGgo="}
            ),
            "/redirect-fullwidth": lambda: self._raw_redirect(
                "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/x.png"
            ),
            "/redirect-loop": lambda: self._send(302, b"", None, {"Location": "/redirect-loop"}),
            "/redirect-bare": lambda: self._send(302, b"", None),
            "/huge.png": self._huge,
            "/declared-huge.png": self._declared_huge,
            "/slow.png": self._slow,
            "/stall.png": self._stall,
        }
        storage_object = path.removeprefix(f"/storage/v1/object/workspace-temp/{USER}/")
        if storage_object != path:
            self.server.authorizations.append(self.headers.get("Authorization"))
            objects = {
                "ok.png": lambda: self._send(200, PNG),
                "endless.png": self._endless,
                "declared-huge.png": self._declared_then_cut,
                "missing.png": lambda: self._send(
                    400,
                    b'{"statusCode":"404","error":"not_found","message":"Object not found"}',
                    "application/json",
                ),
            }
            objects.get(storage_object, lambda: self._send(404, b"", "text/plain"))()
            return
        if path.startswith("/storage/v1/object/sign/"):
            self._send(200, PNG)
            return
        routes.get(path, lambda: self._send(404, b"", "text/plain"))()

    def _raw_redirect(self, location: str) -> None:
        """A 302 whose Location is sent as UTF-8, which send_header (Latin-1) cannot write."""
        self.send_response(302)
        self._headers_buffer.append(b"Location: " + location.encode() + b"\r\n")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _declared_then_cut(self) -> None:
        """Declares 10**9 bytes, sends 2 MiB and hangs up."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(10**9))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(b"\0" * 2 * 1024 * 1024)

    def _endless(self) -> None:
        """128 MiB without a Content-Length; records how many bytes the client let through."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        sent = 0
        chunk = b"\0" * 65536
        try:
            while sent < 128 * 1024 * 1024 and not self.server.stop.is_set():
                self.wfile.write(chunk)
                sent += len(chunk)
            self.wfile.flush()
        except OSError:
            pass
        self.server.endless_sent.append(sent)
        self.server.endless_done.set()

    def _huge(self) -> None:
        """An endless PNG-typed body with no Content-Length (HTTP/1.0: ends on close)."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self._drip(b"\0" * 65536, pause=0.0)

    def _declared_huge(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(10**9))
        self.end_headers()
        self._drip(b"\0" * 1024, pause=0.05)

    def _slow(self) -> None:
        """Bytes keep coming, slowly: no single read times out, only the total limit can."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self._drip(PNG[:1], pause=0.05)

    def _stall(self) -> None:
        """Headers, then silence."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.flush()
        self.server.stop.wait(30)

    def _drip(self, chunk: bytes, *, pause: float) -> None:
        try:
            while not self.server.stop.is_set():
                self.wfile.write(chunk)
                self.wfile.flush()
                if pause:
                    time.sleep(pause)
        except OSError:
            return


@pytest.fixture(scope="module")
def server() -> Iterator[ReferenceServer]:
    srv = ReferenceServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False) as client:
        yield client


@pytest.fixture
def storage(tmp_path: Path) -> LocalFolderStorage:
    store = LocalFolderStorage(tmp_path / "storage")
    store.put("workspace-temp", f"{USER}/uploads/ref.png", PNG, "image/png")
    store.put("user-library", f"{USER}/lib.jpg", JPEG, "image/jpeg")
    store.put("workspace-temp", f"{OTHER}/theirs.png", PNG, "image/png")
    store.put("workspace-temp", f"{USER}/broken.png", b"not an image", "image/png")
    return store


@pytest.fixture
def fetcher(
    storage: LocalFolderStorage, http: httpx.Client, server: ReferenceServer
) -> ReferenceFetcher:
    """Trusts the local test server, as a deployment would trust a local storage stand-in."""
    return ReferenceFetcher(
        storage, http, allow_hosts=(server.hostport,), timeout_seconds=5.0, max_bytes=256 * 1024
    )


def http_ref(url: str) -> HttpReference:
    """A URL reference as the fetcher receives it; built directly, so the fetcher's own
    address checks are tested even for hosts validation would already refuse."""
    ref = classify_reference(url, USER, role="image", allow_hosts=(httpx.URL(url).host,))
    assert isinstance(ref, HttpReference)
    return ref


def plan_with(*references: ReferenceInput) -> RenderPlan:
    return RenderPlan(
        job_id="11111111-2222-4333-8444-555555555555",
        user_id=USER,
        job_type="video_fast",
        family="wan",
        output="video",
        mode="t2v",
        prompt="a cat",
        negative_prompt=None,
        width=480,
        height=832,
        steps=25,
        guidance_scale=6.5,
        num_images=1,
        base_seed=7,
        seed_source="request",
        seeds=(7,),
        reference_mode="both",
        references=references,
    )


# --- classification (pure) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "bucket", "path"),
    [
        (f"workspace-temp/{USER}/uploads/ref.png", "workspace-temp", f"{USER}/uploads/ref.png"),
        (f"user-library/{USER}/a.jpg", "user-library", f"{USER}/a.jpg"),
        (f"  workspace-temp/{USER}/x y.png  ", "workspace-temp", f"{USER}/x y.png"),
    ],
)
def test_bare_storage_paths_in_the_users_folder_are_storage_references(
    url: str, bucket: str, path: str
) -> None:
    assert classify_reference(url, USER) == StorageReference(bucket=bucket, path=path)


@pytest.mark.parametrize(
    "url",
    [
        f"workspace-temp/{OTHER}/theirs.png",
        f"user-library/{OTHER}/a.jpg",
        f"{SUPABASE}/storage/v1/object/sign/workspace-temp/{OTHER}/x.png?token={TOKEN}",
        f"{SUPABASE}/storage/v1/object/public/user-library/{OTHER}/x.png",
        f"{SUPABASE}/storage/v1/object/authenticated/workspace-temp/{OTHER}/x.png",
    ],
)
def test_another_users_object_is_refused_as_cross_user(url: str) -> None:
    with pytest.raises(InvalidPayload) as caught:
        classify_reference(url, USER, role="first_frame")
    assert caught.value.code == "CROSS_USER_REFERENCE"
    assert caught.value.retryable is False
    assert "Reference image for 'first_frame'" in caught.value.message
    assert "another user's object" in caught.value.message
    assert TOKEN not in caught.value.message


@pytest.mark.parametrize(
    "url",
    [
        f"workspace-temp/{USER}/../{OTHER}/x.png",
        f"workspace-temp/{USER}//x.png",
        f"workspace-temp/{USER}/./x.png",
        f"workspace-temp/{USER}/",
        f"workspace-temp/{USER}",
        f"workspace-temp/{USER}\\..\\x.png",
        "workspace-temp//x.png",
        f"{SUPABASE}/storage/v1/object/sign/workspace-temp/{USER}/%2e%2e/{OTHER}/x.png?token=t",
        f"{SUPABASE}/storage/v1/object/sign/workspace-temp/{USER}%2F..%2F{OTHER}/x.png?token=t",
        f"{SUPABASE}/storage/v1/object/public/workspace-temp/{USER}/a%5Cb.png",
    ],
)
def test_path_tricks_are_refused(url: str) -> None:
    with pytest.raises(InvalidPayload) as caught:
        classify_reference(url, USER, role="image")
    assert caught.value.code in ("INVALID_PAYLOAD", "CROSS_USER_REFERENCE")
    assert "Reference image for 'image'" in caught.value.message


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("file:///etc/passwd", "file"),
        ("ftp://example.com/a.png", "ftp"),
        ("data:image/png;base64,iVBORw0KGgo=", "data"),
        ("javascript:alert(1)", "javascript"),
        ("gopher://example.com:70/_x", "gopher"),
        ("localhost:8080/x.png", "localhost"),
    ],
)
def test_other_schemes_are_refused(url: str, scheme: str) -> None:
    with pytest.raises(InvalidPayload) as caught:
        classify_reference(url, USER, role="last_frame")
    message = caught.value.message
    assert f"scheme {scheme!r} is not supported" in message
    assert "Reference image for 'last_frame'" in message
    assert "iVBOR" not in message and "alert" not in message


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "uploads/ref.png",
        f"{USER}/ref.png",
        "//example.com/x.png",
        "/workspace-temp/x.png",
        "http:///nohost.png",
        "http://user:pw@example.com/x.png",
        "http://example.com:99999/x.png",
        "http://example.com/a\nb.png",
        "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/x.png",
        "http://\uff45xample.com/x.png",
    ],
)
def test_malformed_references_are_refused(url: str) -> None:
    with pytest.raises(InvalidPayload) as caught:
        classify_reference(url, USER, role="image")
    assert caught.value.code == "INVALID_PAYLOAD"
    assert "pw" not in caught.value.message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/a.png", "loopback"),
        ("http://localhost/a.png", "loopback"),
        ("https://[::1]/a.png", "loopback"),
        ("http://10.1.2.3/a.png", "private"),
        ("http://192.168.0.7/a.png", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://0.0.0.0/a.png", "unspecified"),
        ("http://[::ffff:10.0.0.1]/a.png", "private (embedded IPv4 10.0.0.1)"),
        ("http://127.1/a.png", "loopback"),
        ("http://0x7f000001/a.png", "loopback"),
        ("http://2130706433:8080/a.png", "loopback"),
    ],
)
def test_non_public_addresses_are_refused_at_validation(url: str, reason: str) -> None:
    with pytest.raises(InvalidPayload) as caught:
        classify_reference(url, USER, role="first_frame")
    message = caught.value.message
    assert "Reference image for 'first_frame'" in message
    assert f"is a {reason} address" in message
    # An operator's allow-list entry (host, or host:port) lets it through to the fetcher.
    host = httpx.URL(url).host
    allowed = classify_reference(url, USER, role="first_frame", allow_hosts=(host,))
    assert isinstance(allowed, HttpReference) and allowed.url == url


def test_public_addresses_and_names_pass_validation() -> None:
    for url in ("http://93.184.215.14/a.png", "https://cdn.example.com/a.png"):
        assert classify_reference(url, USER) == HttpReference(url=url)


def test_http_urls_are_http_references_and_supabase_urls_name_their_object() -> None:
    plain = classify_reference("https://cdn.example.com/a.png?sig=abc", USER)
    assert plain == HttpReference(url="https://cdn.example.com/a.png?sig=abc")
    signed_url = f"{SUPABASE}/storage/v1/object/sign/workspace-temp/{USER}/my%20ref.png?token=x"
    signed = classify_reference(signed_url, USER)
    assert isinstance(signed, HttpReference)
    assert signed.storage_object == StorageReference("workspace-temp", f"{USER}/my ref.png")
    # Another bucket on a Supabase host is a plain URL: the token alone authorises it.
    other = classify_reference(f"{SUPABASE}/storage/v1/object/sign/avatars/{OTHER}/a.png", USER)
    assert isinstance(other, HttpReference) and other.storage_object is None


def test_redact_url_drops_tokens_credentials_and_fragments() -> None:
    assert redact_url(f"https://u:p@abc.supabase.co/storage/v1/x.png?token={TOKEN}#f") == (
        "https://abc.supabase.co/storage/v1/x.png?[redacted]"
    )
    assert redact_url("http://[::1]:8080/a.png") == "http://[::1]:8080/a.png"
    assert redact_url("data:image/png;base64,AAAA") == "data:[redacted]"
    # Only the scheme is read from another URL: a rest that urlsplit refuses is no error.
    assert redact_url("file://[") == "file:[redacted]"


def test_classify_references_covers_every_role_before_any_download() -> None:
    plan = plan_with(
        ReferenceInput(role="first_frame", url=f"workspace-temp/{USER}/a.png"),
        ReferenceInput(role="last_frame", url="https://cdn.example.com/b.png"),
    )
    assert classify_references(plan) == {
        "first_frame": StorageReference("workspace-temp", f"{USER}/a.png"),
        "last_frame": HttpReference("https://cdn.example.com/b.png"),
    }


# --- storage references ------------------------------------------------------------------------


def test_storage_reference_is_read_with_the_service_backend(fetcher: ReferenceFetcher) -> None:
    image = fetcher.fetch(
        StorageReference("workspace-temp", f"{USER}/uploads/ref.png"), role="image"
    )
    assert image.mode == "RGB" and image.size == (64, 48)
    assert image.getpixel((0, 0)) == (200, 30, 40)
    jpeg = fetcher.fetch(classify_reference(f"user-library/{USER}/lib.jpg", USER), role="image")
    assert jpeg.size == (32, 16)


def test_missing_storage_object_is_a_download_error(fetcher: ReferenceFetcher) -> None:
    with pytest.raises(ReferenceDownloadError) as caught:
        fetcher.fetch(StorageReference("workspace-temp", f"{USER}/nope.png"), role="first_frame")
    assert caught.value.code == "REFERENCE_DOWNLOAD_ERROR"
    assert caught.value.retryable is False
    assert "Reference image for 'first_frame'" in caught.value.message
    assert "status 404" in caught.value.message
    assert caught.value.__cause__ is not None


def test_undecodable_storage_object_is_a_download_error(fetcher: ReferenceFetcher) -> None:
    with pytest.raises(ReferenceDownloadError, match="not a decodable image"):
        fetcher.fetch(StorageReference("workspace-temp", f"{USER}/broken.png"), role="image")


def test_storage_reference_over_the_cap_is_refused_by_its_size(
    storage: LocalFolderStorage, http: httpx.Client
) -> None:
    fetcher = ReferenceFetcher(storage, http, max_bytes=len(PNG) - 1)
    with pytest.raises(ReferenceDownloadError) as caught:
        fetcher.fetch(StorageReference("workspace-temp", f"{USER}/uploads/ref.png"), role="image")
    assert caught.value.message == (
        f"Reference image for 'image' in storage object workspace-temp/{USER}/uploads/ref.png "
        f"is larger than the limit of {len(PNG) - 1} bytes"
    )
    assert caught.value.retryable is False
    exact = ReferenceFetcher(storage, http, max_bytes=len(PNG))
    assert exact.fetch(StorageReference("workspace-temp", f"{USER}/uploads/ref.png"), role="x")


def test_local_storage_limited_read(storage: LocalFolderStorage) -> None:
    path = f"{USER}/uploads/ref.png"
    assert storage.get_limited("workspace-temp", path, len(PNG)) == PNG
    with pytest.raises(StorageError) as caught:
        storage.get_limited("workspace-temp", path, 10)
    assert (caught.value.code, caught.value.status) == (ErrorCode.OBJECT_OVER_READ_LIMIT, "413")
    assert f"is {len(PNG)} bytes, above the read limit of 10 bytes" in caught.value.message
    for missing in (f"{USER}/nope.png", f"{USER}/uploads"):
        with pytest.raises(StorageError) as absent:
            storage.get_limited("workspace-temp", missing, 10)
        assert (absent.value.code, absent.value.status) == ("OBJECT_NOT_FOUND", "404")


def test_supabase_storage_reference_is_streamed_under_the_cap(
    server: ReferenceServer, http: httpx.Client
) -> None:
    cap = 1024 * 1024
    server.endless_done.clear()
    with SupabaseStorage.from_supabase(server.base, "service-key", timeout=5.0) as store:
        fetcher = ReferenceFetcher(store, http, max_bytes=cap)
        image = fetcher.fetch(StorageReference("workspace-temp", f"{USER}/ok.png"), role="image")
        assert image.size == (64, 48)
        refusals = {}
        for name in ("endless.png", "declared-huge.png", "missing.png"):
            with pytest.raises(ReferenceDownloadError) as caught:
                fetcher.fetch(StorageReference("workspace-temp", f"{USER}/{name}"), role="image")
            refusals[name] = caught.value
        with pytest.raises(StorageError) as declared:
            store.get_limited("workspace-temp", f"{USER}/declared-huge.png", cap)
    assert "is 1000000000 bytes, above the read limit" in declared.value.message
    for name in ("endless.png", "declared-huge.png"):
        assert refusals[name].message == (
            f"Reference image for 'image' in storage object workspace-temp/{USER}/{name} is "
            f"larger than the limit of {cap} bytes"
        )
        assert refusals[name].retryable is False
    assert "(status 404)" in refusals["missing.png"].message
    assert server.authorizations[-4:] == ["Bearer service-key"] * 4
    # The 128 MiB body was cut off after the cap (plus what the socket buffers held).
    assert server.endless_done.wait(10)
    assert server.endless_sent[-1] < 32 * 1024 * 1024


def test_fetch_all_refuses_another_users_object_before_reading_anything(
    fetcher: ReferenceFetcher, server: ReferenceServer
) -> None:
    seen = len(server.requests)
    plan = plan_with(
        ReferenceInput(role="first_frame", url=f"{server.base}/ok.png"),
        ReferenceInput(role="last_frame", url=f"workspace-temp/{OTHER}/theirs.png"),
    )
    with pytest.raises(InvalidPayload) as caught:
        fetch_all(plan, fetcher)
    assert caught.value.code == "CROSS_USER_REFERENCE"
    assert "'last_frame'" in caught.value.message
    assert len(server.requests) == seen


def test_fetch_all_returns_images_by_role(
    fetcher: ReferenceFetcher, server: ReferenceServer
) -> None:
    plan = plan_with(
        ReferenceInput(role="first_frame", url=f"workspace-temp/{USER}/uploads/ref.png"),
        ReferenceInput(role="last_frame", url=f"{server.base}/ok.jpg"),
    )
    images = fetch_all(plan, fetcher)
    assert sorted(images) == ["first_frame", "last_frame"]
    assert images["first_frame"].size == (64, 48)
    assert images["last_frame"].size == (32, 16)
    assert all(image.mode == "RGB" for image in images.values())


def test_project_storage_urls_are_read_through_storage_not_http(
    storage: LocalFolderStorage, http: httpx.Client, server: ReferenceServer
) -> None:
    fetcher = ReferenceFetcher(storage, http, storage_url=server.base)
    signed = (
        f"{server.base}/storage/v1/object/sign/workspace-temp/{USER}/uploads/ref.png?token={TOKEN}"
    )
    seen = len(server.requests)
    # No allow-list entry for the (loopback) server: it is never contacted.
    image = fetcher.fetch(classify_reference(signed, USER), role="image")
    assert image.size == (64, 48)
    assert len(server.requests) == seen


def test_foreign_supabase_urls_are_downloaded_over_http(
    fetcher: ReferenceFetcher, server: ReferenceServer
) -> None:
    signed = f"{server.base}/storage/v1/object/sign/workspace-temp/{USER}/a.png?token={TOKEN}"
    image = fetcher.fetch(classify_reference(signed, USER), role="image")
    assert image.size == (64, 48)
    assert server.requests[-1][0] == (
        f"/storage/v1/object/sign/workspace-temp/{USER}/a.png?token={TOKEN}"
    )


# --- HTTP references ---------------------------------------------------------------------------


def test_loopback_server_is_refused_unless_allow_listed(
    storage: LocalFolderStorage, http: httpx.Client, server: ReferenceServer
) -> None:
    seen = len(server.requests)
    strict = ReferenceFetcher(storage, http)
    with pytest.raises(ReferenceDownloadError) as caught:
        strict.fetch(http_ref(f"{server.base}/ok.png"), role="image")
    assert "was refused" in caught.value.message
    assert "loopback address (127.0.0.1)" in caught.value.message
    assert caught.value.retryable is False
    assert len(server.requests) == seen

    wrong_port = ReferenceFetcher(storage, http, allow_hosts=("127.0.0.1:1",))
    with pytest.raises(ReferenceDownloadError, match="was refused"):
        wrong_port.fetch(http_ref(f"{server.base}/ok.png"), role="image")
    any_port = ReferenceFetcher(storage, http, allow_hosts=("127.0.0.1",))
    assert any_port.fetch(http_ref(f"{server.base}/ok.png"), role="image").size == (64, 48)


def test_png_download_sends_host_and_no_client_credentials(
    storage: LocalFolderStorage, server: ReferenceServer
) -> None:
    headers = {"Authorization": "Bearer service-role-key", "apikey": "service-role-key"}
    with httpx.Client(trust_env=False, headers=headers, follow_redirects=True) as client:
        fetcher = ReferenceFetcher(storage, client, allow_hosts=(server.hostport,))
        image = fetcher.fetch(http_ref(f"{server.base}/ok.png?token={TOKEN}"), role="image")
    assert image.mode == "RGB" and image.size == (64, 48)
    assert image.getpixel((10, 10)) == (200, 30, 40)
    assert server.requests[-1] == (f"/ok.png?token={TOKEN}", server.hostport)


def test_transparent_pixels_become_white(
    fetcher: ReferenceFetcher, server: ReferenceServer
) -> None:
    image = fetcher.fetch(http_ref(f"{server.base}/transparent.png"), role="image")
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)


def test_host_is_resolved_once_and_the_vetted_address_is_used(
    monkeypatch: pytest.MonkeyPatch,
    storage: LocalFolderStorage,
    http: httpx.Client,
    server: ReferenceServer,
) -> None:
    """A second resolution would fail: the request must go to the first answer (no rebinding)."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def resolver(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "images.example.test":
            lookups.append(host)
            if len(lookups) > 1:
                raise socket.gaierror(socket.EAI_NONAME, "rebinding attempt")
            return real("127.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    port = server.server_address[1]
    fetcher = ReferenceFetcher(storage, http, allow_hosts=(f"images.example.test:{port}",))
    image = fetcher.fetch(http_ref(f"http://images.example.test:{port}/ok.png"), role="image")
    assert image.size == (64, 48)
    assert lookups == ["images.example.test"]
    assert server.requests[-1] == ("/ok.png", f"images.example.test:{port}")


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        (["10.1.2.3"], "private"),
        (["93.184.216.34", "192.168.1.5"], "private"),
        (["169.254.169.254"], "link-local"),
        (["fd00::5"], "private"),
    ],
)
def test_names_resolving_to_internal_addresses_are_refused(
    monkeypatch: pytest.MonkeyPatch,
    storage: LocalFolderStorage,
    http: httpx.Client,
    answers: list[str],
    reason: str,
) -> None:
    def resolver(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        assert host == "internal.example.test"
        return [
            (
                socket.AF_INET6 if ":" in ip else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (ip, port, 0, 0) if ":" in ip else (ip, port),
            )
            for ip in answers
        ]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    fetcher = ReferenceFetcher(storage, http, timeout_seconds=0.0)
    with pytest.raises(ReferenceDownloadError) as caught:
        fetcher.fetch(http_ref("http://internal.example.test/x.png"), role="image")
    assert f"is a {reason} address" in caught.value.message
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/x.png", "private"),
        ("http://172.16.5.4/x.png", "private"),
        ("http://192.168.0.1/x.png", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://127.0.0.1/x.png", "loopback"),
        ("http://0.0.0.0/x.png", "unspecified"),
        ("http://100.64.0.1/x.png", "non-global"),
        ("http://224.0.0.1/x.png", "multicast"),
        ("http://[::1]/x.png", "loopback"),
        ("http://[::]/x.png", "unspecified"),
        ("http://[fe80::1]/x.png", "link-local"),
        ("http://[fd12:3456::1]/x.png", "private"),
        ("http://[ff02::1]/x.png", "multicast"),
        ("http://[::ffff:127.0.0.1]/x.png", "loopback (embedded IPv4 127.0.0.1)"),
        ("http://[::ffff:169.254.169.254]/", "link-local (embedded IPv4 169.254.169.254)"),
        ("http://[64:ff9b::a00:1]/x.png", "private (embedded IPv4 10.0.0.1)"),
        ("https://[2002:c0a8:1::]/x.png", "private (embedded IPv4 192.168.0.1)"),
    ],
)
def test_internal_literal_addresses_are_refused_before_connecting(
    storage: LocalFolderStorage, http: httpx.Client, url: str, reason: str
) -> None:
    # A zero time limit would turn any connection attempt into a timeout: the refusal comes first.
    fetcher = ReferenceFetcher(storage, http, timeout_seconds=0.0)
    with pytest.raises(ReferenceDownloadError) as caught:
        fetcher.fetch(http_ref(url), role="first_frame")
    message = caught.value.message
    assert f"is a {reason} address" in message
    assert "was refused" in message and "within" not in message
    assert "Reference image for 'first_frame'" in message
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    ("path", "status", "retryable"),
    [("/missing.png", 404, False), ("/busy.png", 503, True)],
)
def test_http_errors_carry_status_and_retryability(
    fetcher: ReferenceFetcher, server: ReferenceServer, path: str, status: int, retryable: bool
) -> None:
    with pytest.raises(ReferenceDownloadError) as caught:
        fetcher.fetch(http_ref(f"{server.base}{path}?token={TOKEN}"), role="last_frame")
    message = caught.value.message
    assert f"HTTP {status}" in message
    assert caught.value.retryable is retryable
    assert "Reference image for 'last_frame'" in message
    assert f"{server.base}{path}?[redacted]" in message
    assert TOKEN not in message and TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/page.html", "content type 'text/html'"),
        ("/svg", "content type 'image/svg+xml'"),
        ("/no-type", "content type 'none'"),
        ("/fake.png", "not a decodable image"),
        ("/truncated.png", "not a decodable image"),
    ],
)
def test_non_images_are_refused(
    fetcher: ReferenceFetcher, server: ReferenceServer, path: str, expected: str
) -> None:
    with pytest.raises(ReferenceDownloadError) as caught:
        fetcher.fetch(http_ref(f"{server.base}{path}?token={TOKEN}"), role="image")
    assert expected in caught.value.message
    assert caught.value.retryable is False
    assert TOKEN not in caught.value.message


def test_pixel_cap_refuses_decompression_bombs(
    storage: LocalFolderStorage, http: httpx.Client, server: ReferenceServer
) -> None:
    fetcher = ReferenceFetcher(storage, http, allow_hosts=(server.hostport,), max_pixels=1000)
    with pytest.raises(ReferenceDownloadError, match=r"64x48 pixels, more than the limit of 1000"):
        fetcher.fetch(http_ref(f"{server.base}/ok.png"), role="image")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/huge.png", "larger than the limit of 262144 bytes"),
        ("/declared-huge.png", "declares 1000000000 bytes"),
    ],
)
def test_body_size_is_capped(
    fetcher: ReferenceFetcher, server: ReferenceServer, path: str, expected: str
) -> None:
    started = time.monotonic()
    with pytest.raises(ReferenceDownloadError) as caught:
        fetcher.fetch(http_ref(f"{server.base}{path}"), role="image")
    assert expected in caught.value.message
    assert caught.value.retryable is False
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("path", ["/slow.png", "/stall.png"])
def test_total_time_limit_ends_slow_and_silent_downloads(
    storage: LocalFolderStorage, http: httpx.Client, server: ReferenceServer, path: str
) -> None:
    fetcher = ReferenceFetcher(storage, http, allow_hosts=(server.hostport,), timeout_seconds=0.6)
    started = time.monotonic()
    with pytest.raises(ReferenceDownloadError) as caught:
        fetcher.fetch(http_ref(f"{server.base}{path}?token={TOKEN}"), role="image")
    elapsed = time.monotonic() - started
    assert "was not downloaded within 0.6 s" in caught.value.message
    assert caught.value.retryable is True
    assert TOKEN not in caught.value.message
    assert 0.5 < elapsed < 2.5


def test_relative_redirect_is_followed_and_vetted(
    fetcher: ReferenceFetcher, server: ReferenceServer
) -> None:
    image = fetcher.fetch(http_ref(f"{server.base}/redirect-ok"), role="image")
    assert image.size == (64, 48)
    assert [path for path, _ in server.requests[-2:]] == ["/redirect-ok", "/ok.png"]


def test_client_redirect_setting_is_overridden(
    storage: LocalFolderStorage, server: ReferenceServer
) -> None:
    with httpx.Client(trust_env=False, follow_redirects=True) as client:
        fetcher = ReferenceFetcher(
            storage, client, allow_hosts=(server.hostport,), timeout_seconds=0.5
        )
        with pytest.raises(ReferenceDownloadError, match="private address"):
            fetcher.fetch(http_ref(f"{server.base}/redirect-private"), role="image")


def test_an_unparseable_url_is_a_download_refusal(fetcher: ReferenceFetcher) -> None:
    ref = HttpReference("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/x.png?token=" + TOKEN)
    with pytest.raises(ReferenceDownloadError) as caught:
        fetcher.fetch(ref, role="last_frame")
    assert caught.value.message.startswith(
        "Reference image for 'last_frame' from http://"
    ) and caught.value.message.endswith(
        "?[redacted] was refused: the URL cannot be fetched "
        "(Invalid IDNA hostname: '\uff11\uff12\uff17.\uff10.\uff10.\uff11')"
    )
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/redirect-private", "is a private address (10.0.0.1)"),
        ("/redirect-metadata", "is a link-local address (169.254.169.254)"),
        ("/redirect-file", "only http(s) URLs are fetched"),
        ("/redirect-data", "redirects to an invalid URL"),
        ("/redirect-fullwidth", "redirects to an invalid URL"),
        ("/redirect-loop", "redirected more than 3 times"),
        ("/redirect-bare", "HTTP 302 without a Location"),
    ],
)
def test_bad_redirects_are_refused(
    fetcher: ReferenceFetcher, server: ReferenceServer, path: str, expected: str
) -> None:
    before = len(server.requests)
    with pytest.raises(ReferenceDownloadError) as caught:
        fetcher.fetch(http_ref(f"{server.base}{path}"), role="image")
    assert expected in caught.value.message
    assert caught.value.retryable is False
    hops = [p for p, _ in server.requests[before:]]
    assert len(hops) == (4 if path == "/redirect-loop" else 1)


def test_connection_refused_is_a_retryable_download_error(
    storage: LocalFolderStorage, http: httpx.Client
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        fetcher = ReferenceFetcher(storage, http, allow_hosts=(f"127.0.0.1:{port}",))
        with pytest.raises(ReferenceDownloadError) as caught:
            fetcher.fetch(http_ref(f"http://127.0.0.1:{port}/x.png?token={TOKEN}"), role="image")
    assert "network error (ConnectError)" in caught.value.message
    assert caught.value.retryable is True
    assert TOKEN not in caught.value.message


def test_allow_hosts_entries_are_validated(storage: LocalFolderStorage, http: httpx.Client) -> None:
    with pytest.raises(ValueError, match="host:port"):
        ReferenceFetcher(storage, http, allow_hosts=("127.0.0.1:http",))
    ReferenceFetcher(storage, http, allow_hosts=("[::1]:8080", "::1", "Example.COM"))


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` (and its key), written as PEM files."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.mark.parametrize(
    ("cert_name", "succeeds"), [("images.example.test", True), ("other.example.test", False)]
)
def test_https_to_the_vetted_address_verifies_the_certificate_for_the_url_host(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    storage: LocalFolderStorage,
    cert_name: str,
    succeeds: bool,
) -> None:
    cert_file, key_file = _self_signed(tmp_path, cert_name)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    tls = ReferenceServer()
    tls.socket = server_context.wrap_socket(tls.socket, server_side=True)
    thread = threading.Thread(target=tls.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    real = socket.getaddrinfo

    def resolver(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "images.example.test" else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    port = tls.server_address[1]
    client_context = ssl.create_default_context(cafile=str(cert_file))
    try:
        with httpx.Client(trust_env=False, verify=client_context) as client:
            fetcher = ReferenceFetcher(
                storage, client, allow_hosts=(f"images.example.test:{port}",), timeout_seconds=5
            )
            ref = http_ref(f"https://images.example.test:{port}/ok.png?token={TOKEN}")
            if succeeds:
                assert fetcher.fetch(ref, role="image").size == (64, 48)
                assert tls.requests == [(f"/ok.png?token={TOKEN}", f"images.example.test:{port}")]
            else:
                with pytest.raises(ReferenceDownloadError) as caught:
                    fetcher.fetch(ref, role="image")
                assert "network error (ConnectError)" in caught.value.message
                assert isinstance(caught.value.__cause__, httpx.ConnectError)
                assert "certificate" in str(caught.value.__cause__).lower()
                assert tls.requests == []
    finally:
        tls.shutdown()
        tls.server_close()
