"""Reference images: decide where each one may come from, then fetch and decode it safely.

Two stages, so a bad reference is refused before any GPU second is spent:

* :func:`classify_reference` (pure, cheap) turns a payload URL into a :class:`StorageReference`
  (a bare ``workspace-temp/...`` or ``user-library/...`` path, read with the service key) or an
  :class:`HttpReference`. A storage path, or a Supabase storage URL of those buckets, must sit in
  the job user's own folder (contract section 2); anything but http(s) and storage paths is
  refused.
* :class:`ReferenceFetcher` reads the bytes and decodes them into an RGB :class:`PIL.Image.Image`.
  Every failure is a :class:`~genjobs.errors.ReferenceDownloadError`: a job never falls back to
  text-only rendering (contract section 3.1).

HTTP downloads are guarded against server-side request forgery:

* The host is resolved once with :func:`socket.getaddrinfo` and refused when any of its addresses
  is private, loopback, link-local (169.254.169.254 included), multicast, reserved, unspecified
  or otherwise not global, for IPv4 and IPv6 alike (IPv4-mapped, 6to4, Teredo and NAT64
  addresses are judged by the IPv4 address they carry). ``allow_hosts`` lifts the check for
  named hosts (``"host"`` or ``"host:port"``).
* The request is sent to the vetted IP itself, with the original ``Host`` header and, for
  HTTPS, the original name as SNI and certificate hostname. The name is never resolved a second
  time, so a DNS answer that changes between check and connect (DNS rebinding) has no effect.
  The resolution itself is not bounded by the download time limit.
* Redirects are not followed by the client; up to :data:`MAX_REDIRECTS` are followed here, each
  target vetted like the first URL.
* A URL the HTTP client cannot parse (a host in fullwidth digits, say), as the reference or as
  a redirect target (``data:`` URLs included), is refused like any other bad reference.
* The body is streamed under a byte cap, the whole download (every hop) under one time limit
  that also interrupts a read that is blocked on a silent server, the content type must be a
  supported image type, and Pillow must verify and decode the bytes under a pixel cap.

Storage objects are read through the backend's bounded read (``get_limited``), which stops
at the same byte cap instead of loading a larger object whole.

Signed URLs carry their token in the query string, so logs and error messages only ever show
URLs through :func:`redact_url`.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import re
import socket
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from genjobs.errors import ErrorCode, InvalidPayload, ReferenceDownloadError, StorageError
from genjobs.jobs.plan import ReferenceRole, RenderPlan
from genjobs.storage.base import StorageBackend

logger = logging.getLogger(__name__)

STORAGE_BUCKETS = ("workspace-temp", "user-library")
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
MAX_REDIRECTS = 3
ALLOW_HOSTS_HINT = "to fetch from it anyway, list it in GENJOBS_REFERENCE_ALLOW_HOSTS"

# Content types accepted over HTTP, and the Pillow decoders allowed to read any reference.
IMAGE_CONTENT_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/webp", "image/gif"}
)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
# Request headers that could carry a credential of the injected client to a foreign host.
_CREDENTIAL_HEADERS = ("authorization", "apikey", "cookie", "x-api-key")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_RETRYABLE_STATUSES = frozenset({408, 425, 429})
_STORAGE_URL_PATH = re.compile(
    r"^/storage/v1/object/(?:sign|public|authenticated)/"
    r"(?P<bucket>workspace-temp|user-library)/(?P<path>.+)$"
)
# How httpx words the error of a redirect whose Location it cannot parse.
_INVALID_LOCATION = "Invalid URL in location header"
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_MAX_SHOWN_CHARS = 200
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class StorageReference:
    """An object in one of the user buckets, read with the service key."""

    bucket: str
    path: str

    def __str__(self) -> str:
        return f"{self.bucket}/{self.path}"


@dataclass(frozen=True)
class HttpReference:
    """An http(s) URL. ``url`` may hold a signed token: show it only through :attr:`redacted`.

    ``storage_object`` is set when the URL is a Supabase storage URL
    (``/storage/v1/object/{sign|public|authenticated}/...``) of a user bucket; it has already
    been checked to lie in the job user's folder.
    """

    url: str
    storage_object: StorageReference | None = None

    @property
    def redacted(self) -> str:
        return redact_url(self.url)

    def __str__(self) -> str:
        return self.redacted


Reference = StorageReference | HttpReference


def redact_url(url: str) -> str:
    """A URL safe for logs: no credentials, no query string (signed tokens), no fragment.

    A removed query is shown as ``?[redacted]``. Schemes other than http(s) show only the scheme.
    """
    text = url.strip()
    if not text.lower().startswith(("http://", "https://")):
        # The scheme alone: urlsplit would also parse (and may refuse) the rest, e.g. "file://[".
        match = _SCHEME.match(text)
        scheme = match.group(1).lower() if match else ""
        shown = f"{scheme}:[redacted]" if scheme else text.split("?", 1)[0]
        return shown[:_MAX_SHOWN_CHARS]
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "[unparseable URL]"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    shown = f"{parts.scheme.lower()}://{netloc}{parts.path}"
    if len(shown) > _MAX_SHOWN_CHARS:
        shown = shown[:_MAX_SHOWN_CHARS] + "..."
    return shown + ("?[redacted]" if parts.query else "")


def _label(role: str | None) -> str:
    return f"Reference image for {role!r}" if role else "Reference image"


def _refuse(label: str, shown: str, reason: str, *, code: str | None = None) -> InvalidPayload:
    return InvalidPayload(f"{label} is invalid ({shown}): {reason}", code=code)


def _has_control_characters(text: str) -> bool:
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in text)


def _storage_reference(
    bucket: str, path: str, user_id: str, label: str, shown: str
) -> StorageReference:
    segments = path.split("/")
    if "\\" in path or _has_control_characters(path):
        raise _refuse(label, shown, "the object path holds a backslash or a control character")
    if any(segment in ("", ".", "..") for segment in segments):
        raise _refuse(label, shown, "the object path holds an empty, '.' or '..' segment")
    if len(segments) < 2:
        raise _refuse(label, shown, "the path names a folder, not an object in the user folder")
    if segments[0] != user_id:
        raise _refuse(
            label,
            shown,
            f"it is another user's object (the first folder in bucket {bucket!r} must be the "
            "job's user_id)",
            code=ErrorCode.CROSS_USER_REFERENCE,
        )
    return StorageReference(bucket=bucket, path=path)


def classify_reference(
    url: str, user_id: str, *, role: str | None = None, allow_hosts: Sequence[str] = ()
) -> Reference:
    """Decide where a reference image may be read from, without any I/O.

    A host written as an IP address is judged here already: a private, loopback, link-local or
    otherwise non-public one is refused before any render (a host name is judged when the
    fetcher resolves it).

    Args:
        url: The payload value: an http(s) URL or a bare ``workspace-temp/...`` or
            ``user-library/...`` storage path.
        user_id: The job's user; storage objects must lie in this user's folder.
        role: The reference role (``image``, ``first_frame``, ``last_frame``) for messages.
        allow_hosts: ``host`` or ``host:port`` entries exempt from the public-address rule
            (the ``reference_allow_hosts`` setting).

    Returns:
        A :class:`StorageReference` for a bare storage path, else an :class:`HttpReference`.

    Raises:
        InvalidPayload: The URL is empty, malformed, uses another scheme, carries credentials,
            names a non-public IP address, or names another user's object (code
            ``CROSS_USER_REFERENCE``).
    """
    label = _label(role)
    text = url.strip() if isinstance(url, str) else ""
    if not text:
        raise InvalidPayload(f"{label} is missing (empty URL)")
    shown = redact_url(text)
    if "\\" in text or _has_control_characters(text):
        raise _refuse(label, shown, "the URL holds a backslash or a control character")

    bucket = text.split("/", 1)[0]
    if bucket in STORAGE_BUCKETS and "/" in text:
        return _storage_reference(bucket, text[len(bucket) + 1 :], user_id, label, shown)

    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise _refuse(label, shown, f"the URL cannot be parsed ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        if not scheme:
            raise _refuse(
                label,
                shown,
                "it is neither an http(s) URL nor a storage path in "
                + " or ".join(f"{name}/" for name in STORAGE_BUCKETS),
            )
        raise _refuse(label, shown, f"the scheme {scheme!r} is not supported; use http(s)")
    if parts.username is not None or parts.password is not None:
        raise _refuse(label, shown, "credentials in the URL are not accepted")
    if not parts.hostname:
        raise _refuse(label, shown, "the URL has no host")
    if port == 0:
        raise _refuse(label, shown, "the URL has port 0")
    try:
        httpx.URL(text)
    except httpx.InvalidURL as exc:  # e.g. a host in fullwidth digits: no valid IDNA name
        raise _refuse(label, shown, f"the URL cannot be fetched ({exc})") from exc

    storage_object = None
    match = _STORAGE_URL_PATH.match(parts.path)
    if match:
        storage_object = _storage_reference(
            match["bucket"], unquote(match["path"]), user_id, label, shown
        )
    host = parts.hostname.lower()
    allowed = {_parse_allow_entry(entry) for entry in allow_hosts}
    effective_port = port or (443 if scheme == "https" else 80)
    if storage_object is None and not ({(host, effective_port), (host, None)} & allowed):
        reason = _literal_address_refusal(host)
        if reason:
            raise _refuse(
                label,
                shown,
                f"host {host} is a {reason} address; only public addresses are fetched "
                f"({ALLOW_HOSTS_HINT})",
            )
    return HttpReference(url=text, storage_object=storage_object)


def _literal_address_refusal(host: str) -> str | None:
    """Why a host written as an IP address (or ``localhost``) must not be fetched, else None."""
    if host == "localhost" or host.endswith(".localhost"):
        return "loopback"
    try:
        address: IPAddress = ipaddress.ip_address(host)
    except ValueError:
        try:  # the resolver's numeric IPv4 spellings: 127.1, 0x7f000001, 2130706433, 0177.1
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None  # a name: judged when it is resolved
    return refusal_reason(address)


def classify_references(
    plan: RenderPlan, allow_hosts: Sequence[str] = ()
) -> dict[ReferenceRole, Reference]:
    """Classify every reference of a plan, by role: the validation-stage check before a render."""
    return {
        reference.role: classify_reference(
            reference.url, plan.user_id, role=reference.role, allow_hosts=allow_hosts
        )
        for reference in plan.references
    }


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address tunnels to, if any (mapped, 6to4, Teredo, NAT64)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal_reason(ip: IPAddress) -> str | None:
    """Why an address must not be fetched from (``"private"``, ``"loopback"``, ...), or None."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        reason = refusal_reason(embedded)
        if reason:
            return f"{reason} (embedded IPv4 {embedded})"
        if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped is not None or ip in _NAT64):
            return None  # pure translations of a public IPv4 address
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-global", not ip.is_global),
    )
    for reason, hit in checks:
        if hit:
            return reason
    return None


def _parse_allow_entry(entry: str) -> tuple[str, int | None]:
    text = entry.strip().lower()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host or (port and not port.isdigit()):
        raise ValueError(f"allow_hosts entry {entry!r} must be 'host' or 'host:port'")
    return host, int(port) if port else None


def _shutdown(sock: socket.socket) -> None:
    # The base-class method works on the descriptor, also under an ssl.SSLSocket, whose own
    # shutdown() would tear down TLS state that the blocked reader is still using.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Deadline:
    """One time limit for a whole download, enforced even while a read is blocked.

    httpx timeouts bound each network operation, not the total. A timer shuts down the socket
    of the connection in use when the limit passes, which ends a blocked read at once. The
    socket is learnt from httpcore's ``trace`` extension as soon as it is connected, so a server
    that never answers is cut off too; requests ask for ``Connection: close`` so that every
    download opens (and so traces) its own connection.
    """

    def __init__(self, seconds: float) -> None:
        self._expires = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self.expired = False
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._timer.cancel()
        self.release()

    def remaining(self) -> float:
        return max(self._expires - time.monotonic(), 0.0)

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore ``trace`` hook: watch the socket once connected (and once TLS is up)."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                self.watch(sock)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socket = sock
            expired = self.expired
        if expired:
            _shutdown(sock)

    def release(self) -> None:
        with self._lock:
            self._socket = None

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sock = self._socket
        if sock is not None:
            _shutdown(sock)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels; transparent areas are composited on white."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_reference_image(
    data: bytes, *, label: str, source: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Verify and decode image bytes (PNG, JPEG, WEBP, GIF first frame) into an RGB image.

    EXIF orientation is applied. More than ``max_pixels`` pixels is refused before decoding.

    Raises:
        ReferenceDownloadError: The bytes are not a supported, intact image within the caps.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
                width, height = probe.size
                if width * height > max_pixels:
                    raise ReferenceDownloadError(
                        f"{label} from {source} is {width}x{height} pixels, more than the "
                        f"limit of {max_pixels} pixels"
                    )
                probe.verify()
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))
    except ReferenceDownloadError:
        raise
    except Exception as exc:  # Pillow raises many types on hostile input; translate them all.
        detail = (
            "not a PNG, JPEG, WEBP or GIF file"
            if isinstance(exc, UnidentifiedImageError)
            else f"{type(exc).__name__}: {exc}"
        )
        raise ReferenceDownloadError(
            f"{label} from {source} is not a decodable image ({detail})"
        ) from exc


class ReferenceFetcher:
    """Reads reference images from storage or over HTTP and decodes them.

    Args:
        storage: Backend for storage references (service key: no row-level security).
        http: Client for HTTP references. Redirects, timeouts and credential headers of the
            client are overridden per request; no credential of it reaches a reference host.
        timeout_seconds: Time limit for one HTTP download, redirects included.
        max_bytes: Largest accepted body (decoded) or storage object.
        allow_hosts: ``"host"`` or ``"host:port"`` entries exempt from the address check
            (for a local storage stand-in or a trusted internal server).
        max_pixels: Largest accepted image, in pixels (decompression-bomb guard).
        storage_url: The Supabase project URL (``SUPABASE_URL``). Storage URLs on this origin
            are read through ``storage`` instead of over HTTP: signed URLs expire after an hour
            and ``authenticated`` URLs need a user session, while the job may run later.
    """

    def __init__(
        self,
        storage: StorageBackend,
        http: httpx.Client,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        allow_hosts: tuple[str, ...] = (),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        storage_url: str | None = None,
    ) -> None:
        self.storage = storage
        self.http = http
        self.timeout_seconds = timeout_seconds
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.allow_hosts = tuple(allow_hosts)
        self._allowed = frozenset(_parse_allow_entry(entry) for entry in allow_hosts)
        self._storage_origin = _origin(httpx.URL(storage_url)) if storage_url else None

    def fetch(self, ref: Reference, *, role: str) -> Image.Image:
        """Read and decode one reference into an RGB image.

        ``ref`` must come from :func:`classify_reference`, which holds the user-folder check;
        :func:`fetch_all` does both.

        Raises:
            ReferenceDownloadError: It could not be read, was refused, or is not an image.
                ``retryable`` is True for timeouts, network errors, 5xx and retryable storage
                errors.
        """
        label = _label(role)
        if isinstance(ref, HttpReference) and self._reads_through_storage(ref):
            assert ref.storage_object is not None
            logger.info(
                "%s is a storage URL of this project; reading %s with the service key.",
                label,
                ref.storage_object,
            )
            ref = ref.storage_object
        if isinstance(ref, StorageReference):
            data = self._read_storage(ref, label)
            source = f"storage object {ref}"
        else:
            data = self._download(ref, label)
            source = ref.redacted
        image = decode_reference_image(data, label=label, source=source, max_pixels=self.max_pixels)
        logger.info("%s read from %s: %d bytes, %dx%d.", label, source, len(data), *image.size)
        return image

    def _reads_through_storage(self, ref: HttpReference) -> bool:
        return (
            ref.storage_object is not None
            and self._storage_origin is not None
            and _origin(httpx.URL(ref.url)) == self._storage_origin
        )

    def _read_storage(self, ref: StorageReference, label: str) -> bytes:
        logger.info("Reading %s from storage object %s.", label.lower(), ref)
        try:
            return self.storage.get_limited(ref.bucket, ref.path, self.max_bytes)
        except StorageError as exc:
            if exc.code == ErrorCode.OBJECT_OVER_READ_LIMIT:
                raise ReferenceDownloadError(
                    f"{label} in storage object {ref} is larger than the limit of "
                    f"{self.max_bytes} bytes"
                ) from exc
            status = f" (status {exc.status})" if exc.status else ""
            raise ReferenceDownloadError(
                f"{label} could not be read from storage object {ref}{status}: {exc.message}",
                retryable=exc.retryable,
            ) from exc

    def _download(self, ref: HttpReference, label: str) -> bytes:
        try:
            url = httpx.URL(ref.url)
        except httpx.InvalidURL as exc:
            raise ReferenceDownloadError(
                f"{label} from {ref.redacted} was refused: the URL cannot be fetched ({exc})"
            ) from exc
        logger.info("Downloading %s from %s.", label.lower(), ref.redacted)
        # Every target is vetted before the clock starts: a refused address never connects.
        ip = self._vet(url, label)
        with _Deadline(self.timeout_seconds) as deadline:
            for hop in range(MAX_REDIRECTS + 1):
                location = self._fetch_once(url, ip, label, deadline)
                if isinstance(location, bytes):
                    return location
                if hop == MAX_REDIRECTS:
                    break
                logger.info(
                    "%s: %s redirects to %s.",
                    label,
                    redact_url(str(url)),
                    redact_url(str(location)),
                )
                url = location
                ip = self._vet(url, label)
        raise ReferenceDownloadError(
            f"{label} from {ref.redacted} redirected more than {MAX_REDIRECTS} times"
        )

    def _vet(self, url: httpx.URL, label: str) -> str:
        """Resolve the host once and return the address to connect to, or refuse the URL."""
        shown = redact_url(str(url))
        if url.scheme not in ("http", "https"):
            raise ReferenceDownloadError(
                f"{label} from {shown} was refused: only http(s) URLs are fetched"
            )
        if url.userinfo:
            raise ReferenceDownloadError(
                f"{label} from {shown} was refused: credentials in the URL are not accepted"
            )
        host = url.host.lower()
        port = url.port or (443 if url.scheme == "https" else 80)
        if not host:
            raise ReferenceDownloadError(f"{label} from {shown} was refused: no host")
        addresses = self._resolve(url, port, label, shown)
        if (host, port) not in self._allowed and (host, None) not in self._allowed:
            for ip in addresses:
                reason = refusal_reason(ip)
                if reason:
                    raise ReferenceDownloadError(
                        f"{label} from {shown} was refused: host {host} is a {reason} address "
                        f"({ip}); only public addresses are fetched ({ALLOW_HOSTS_HINT})"
                    )
        return str(addresses[0])

    @staticmethod
    def _resolve(url: httpx.URL, port: int, label: str, shown: str) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(url.host)]
        except ValueError:
            pass
        name = url.raw_host.decode("ascii")
        try:
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ReferenceDownloadError(
                f"{label} from {shown} was not downloaded: host {url.host} does not resolve "
                f"({exc})",
                retryable=getattr(exc, "errno", None) == socket.EAI_AGAIN,
            ) from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        if not addresses:
            raise ReferenceDownloadError(
                f"{label} from {shown} was not downloaded: host {url.host} has no address"
            )
        return addresses

    def _fetch_once(
        self, url: httpx.URL, ip: str, label: str, deadline: _Deadline
    ) -> bytes | httpx.URL:
        """One request to the vetted address: the body, or the next URL of a redirect."""
        shown = redact_url(str(url))
        remaining = deadline.remaining()
        if remaining <= 0 or deadline.expired:
            raise self._timed_out(label, shown)
        extensions: dict[str, Any] = {"trace": deadline.trace}
        if url.scheme == "https":
            extensions["sni_hostname"] = url.raw_host.decode("ascii")
        request = self.http.build_request(
            "GET",
            url.copy_with(host=ip),
            headers={
                "Host": url.netloc.decode("ascii"),
                "Connection": "close",
                "Accept": ", ".join(sorted(IMAGE_CONTENT_TYPES)),
            },
            timeout=httpx.Timeout(remaining),
            extensions=extensions,
        )
        for name in _CREDENTIAL_HEADERS:
            request.headers.pop(name, None)
        try:
            response = self.http.send(request, stream=True, follow_redirects=False, auth=None)
            try:
                stream = response.extensions.get("network_stream")
                sock = stream.get_extra_info("socket") if stream is not None else None
                if isinstance(sock, socket.socket):
                    deadline.watch(sock)
                return self._read_response(response, url, label, deadline)
            finally:
                deadline.release()
                response.close()
        except httpx.InvalidURL as exc:
            # The client reads a redirect's Location itself (also when it does not follow
            # it); it raises this for one it cannot rebuild, e.g. ``data:`` URLs.
            raise self._invalid_redirect(label, shown) from exc
        except httpx.HTTPError as exc:
            if isinstance(exc, httpx.RemoteProtocolError) and str(exc).startswith(
                _INVALID_LOCATION
            ):
                raise self._invalid_redirect(label, shown) from exc
            if deadline.expired or isinstance(exc, httpx.TimeoutException):
                raise self._timed_out(label, shown) from exc
            raise ReferenceDownloadError(
                f"{label} from {shown} was not downloaded: network error ({type(exc).__name__})",
                retryable=True,
            ) from exc

    def _read_response(
        self, response: httpx.Response, url: httpx.URL, label: str, deadline: _Deadline
    ) -> bytes | httpx.URL:
        shown = redact_url(str(url))
        status = response.status_code
        if status in _REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                raise ReferenceDownloadError(
                    f"{label} from {shown} answered HTTP {status} without a Location"
                )
            try:
                return url.join(location)
            except httpx.InvalidURL as exc:
                raise self._invalid_redirect(label, shown) from exc
        if not 200 <= status < 300:
            raise ReferenceDownloadError(
                f"{label} from {shown} was not downloaded: HTTP {status}",
                retryable=status >= 500 or status in _RETRYABLE_STATUSES,
            )
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type not in IMAGE_CONTENT_TYPES:
            raise ReferenceDownloadError(
                f"{label} from {shown} has content type {content_type or 'none'!r}, not a "
                "supported image type (png, jpeg, webp, gif)"
            )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise ReferenceDownloadError(
                f"{label} from {shown} declares {declared} bytes, more than the limit of "
                f"{self.max_bytes} bytes"
            )
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > self.max_bytes:
                raise ReferenceDownloadError(
                    f"{label} from {shown} is larger than the limit of {self.max_bytes} bytes"
                )
            if deadline.expired:
                raise self._timed_out(label, shown)
            chunks.append(chunk)
        if deadline.expired:  # a body delimited by the close looks complete once cut off
            raise self._timed_out(label, shown)
        return b"".join(chunks)

    @staticmethod
    def _invalid_redirect(label: str, shown: str) -> ReferenceDownloadError:
        return ReferenceDownloadError(f"{label} from {shown} redirects to an invalid URL")

    def _timed_out(self, label: str, shown: str) -> ReferenceDownloadError:
        return ReferenceDownloadError(
            f"{label} from {shown} was not downloaded within {self.timeout_seconds:g} s",
            retryable=True,
        )


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.scheme, url.host.lower(), port


def fetch_all(plan: RenderPlan, fetcher: ReferenceFetcher) -> dict[ReferenceRole, Image.Image]:
    """Fetch every reference of a plan, by role. All are classified before any is downloaded.

    Raises:
        InvalidPayload: A reference is malformed or another user's object.
        ReferenceDownloadError: A reference could not be read; the job must fail.
    """
    references = classify_references(plan, fetcher.allow_hosts)
    return {role: fetcher.fetch(ref, role=role) for role, ref in references.items()}
