"""A streaming reverse proxy that serves the storage server under ``/storage/v1``, with faults.

A Supabase project serves its storage API at ``{SUPABASE_URL}/storage/v1/...`` through a
gateway; the storage server itself serves ``/object/...``, ``/bucket/...`` and
``/upload/resumable``. This proxy strips the prefix, passes request and response bodies through
unchanged as they arrive (Content-Length and chunked framing alike), drops hop-by-hop headers
and adds ``X-Forwarded-Prefix: /storage/v1`` so the server builds resumable-upload URLs under
the prefix. Each request goes to the upstream on a connection of its own.

Faults, set while it runs (tests use them to play a misbehaving gateway):

* :meth:`StorageProxy.stall` holds a matching request's body after N bytes, for S seconds or
  until the fault is cleared or the proxy stops;
* :meth:`StorageProxy.reset` drops the client's connection (TCP reset) after N body bytes;
* :meth:`StorageProxy.fail` answers the next K matching requests (or every Nth) with a status of
  its own;
* :meth:`StorageProxy.drop_answer` passes the next K matching requests on, reads the server's
  whole answer and resets the client's connection instead of passing it back (the request took
  effect, the client never learns it);
* :meth:`StorageProxy.delay` passes matching requests on S seconds late: the round trip to a
  storage server that is not on this machine (benchmarks use it);
* :meth:`StorageProxy.limit_link` carries body bytes at most so fast in each direction, all
  connections sharing one link (uploads towards the server, answers back): a storage server at
  the end of a network link rather than on loopback (benchmarks use it).

Patterns are regular expressions searched in ``"METHOD /path"`` of the client's request (the
path with its ``/storage/v1`` prefix and query), e.g. ``r"^PATCH /storage/v1/upload/"``.

In process: ``StorageProxy(upstream).start()`` runs it on a thread of its own; ``stop()`` ends
it. Standing: ``python3 -m devstack.storage_proxy --upstream http://127.0.0.1:5000 --port 0``
prints ``listening on <url>`` once it accepts connections (``--delay-ms N``: every request
``delay``-ed by N ms; ``--link-mbit N``: ``limit_link`` to N megabits a second each way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

PREFIX = "/storage/v1"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
MAX_HEAD = 64 * 1024
CHUNK = 64 * 1024


class Link:
    """One direction of a network link of ``bytes_per_second``, shared by every connection:
    bytes leave in the order they are offered, each chunk once the link has carried those
    before it. Lives on the proxy's event loop (no locking)."""

    def __init__(self, bytes_per_second: float) -> None:
        if bytes_per_second <= 0:
            raise ValueError(f"a link carries a positive rate, got {bytes_per_second}")
        self.bytes_per_second = bytes_per_second
        self._busy_until = 0.0

    async def carry(self, size: int) -> None:
        """Returns once ``size`` more bytes have crossed the link."""
        loop = asyncio.get_running_loop()
        done = max(loop.time(), self._busy_until) + size / self.bytes_per_second
        self._busy_until = done
        await asyncio.sleep(done - loop.time())


class ProtocolError(Exception):
    """The peer sent something that is not HTTP/1.1 this proxy can pass on."""


@dataclass
class Fault:
    """One injected fault; ``kind`` is ``stall``, ``reset``, ``fail``, ``drop_answer`` or
    ``delay``."""

    kind: str
    pattern: re.Pattern[str]
    after_bytes: int = 0
    seconds: float | None = None
    status: int = 503
    remaining: int | None = None
    hits: int = 0
    every: int = 1
    matched: int = 0

    def matches(self, target: str) -> bool:
        return self.pattern.search(target) is not None


@dataclass(frozen=True)
class Seen:
    """A request the proxy answered or passed on: method, client path, status (0 if none)."""

    method: str
    path: str
    status: int


@dataclass
class _Head:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise ProtocolError("connection closed inside a message head") from exc
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError("message head too large") from exc


def _parse_headers(lines: list[str]) -> list[tuple[str, str]]:
    headers = []
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"malformed header line {line!r}")
        headers.append((name.strip(), value.strip()))
    return headers


def _connection_tokens(headers: list[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(token.strip().lower() for token in value.split(","))
    return tokens


def _end_to_end(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    dropped = HOP_BY_HOP | _connection_tokens(headers)
    return [(name, value) for name, value in headers if name.lower() not in dropped]


def _is_chunked(headers: list[tuple[str, str]]) -> bool:
    return any(
        name.lower() == "transfer-encoding" and "chunked" in value.lower()
        for name, value in headers
    )


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            try:
                return int(value)
            except ValueError as exc:
                raise ProtocolError(f"bad Content-Length {value!r}") from exc
    return None


def _serialize(first_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [first_line, *(f"{name}: {value}" for name, value in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


class _Sink(Protocol):
    """Where a body goes: a stream writer, or :class:`_Discard`."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class _Discard:
    """A writer that drops what it is given (an answer the proxy swallows)."""

    def write(self, data: bytes) -> None:
        return None

    async def drain(self) -> None:
        return None


class _KeepingReader(asyncio.StreamReader):
    """A reader for the server's side that keeps what it received when the connection is reset.

    A server that refuses an upload answers and closes before it has read the whole body; the
    body bytes still in flight then make its kernel reset the connection. A plain StreamReader
    turns that reset into an error on every later read, losing an answer already received; this
    one ends the stream there instead, so the answer is read and passed back.
    """

    def set_exception(self, exc: BaseException) -> None:
        self.feed_eof()


async def _open_upstream(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = _KeepingReader(limit=MAX_HEAD, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class _Reset(Exception):
    """An injected reset: drop the client connection now."""


class _BodyPump:
    """Copies one message body from a reader to a writer, calling a hook per forwarded count."""

    def __init__(self, reader: asyncio.StreamReader, writer: _Sink | None, hook):
        self.reader = reader
        self.writer = writer
        self.hook = hook
        self.sent = 0

    async def _forward(self, data: bytes, counted: int) -> None:
        await self.hook(self.sent, counted, data, self.writer)
        self.sent += counted

    async def _copy(self, length: int, short: str) -> None:
        left = length
        while left > 0:
            data = await self.reader.read(min(CHUNK, left))
            if not data:
                raise ProtocolError(short)
            left -= len(data)
            await self._forward(data, len(data))

    async def fixed(self, length: int) -> None:
        await self._copy(length, "body ended before its Content-Length")

    async def chunked(self) -> None:
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise ProtocolError(f"bad chunk size line {size_line!r}") from exc
            await self._forward(size_line, 0)
            if size == 0:
                # Trailers (usually none) up to the empty line end the body.
                while True:
                    line = await self.reader.readuntil(b"\r\n")
                    await self._forward(line, 0)
                    if line == b"\r\n":
                        return
            await self._copy(size, "body ended inside a chunk")
            await self._forward(await self.reader.readexactly(2), 0)

    async def to_eof(self) -> None:
        while data := await self.reader.read(CHUNK):
            await self._forward(data, len(data))


class StorageProxy:
    """The proxy. Construct, :meth:`start`, read :attr:`url`, set faults, :meth:`stop`."""

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.host = host
        self.port = port
        self._faults: list[Fault] = []
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._release: asyncio.Event | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._uplink: Link | None = None
        self._downlink: Link | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """What a client treats as SUPABASE_URL (the storage API is under ``/storage/v1``)."""
        return f"http://{self.host}:{self.port}"

    async def serve(self) -> None:
        """Starts listening on the running loop (binds the port; :attr:`port` becomes real)."""
        self._loop = asyncio.get_running_loop()
        self._release = asyncio.Event()
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=MAX_HEAD
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info(
            "Storage proxy listening on %s, upstream %s:%s.",
            self.url,
            self.upstream_host,
            self.upstream_port,
        )

    def start(self) -> StorageProxy:
        """Runs the proxy on a background thread; returns once it accepts connections."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self.serve())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="storage-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    async def _shutdown(self) -> None:
        if self._release is not None:
            self._release.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._clients):
            writer.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Stops listening, drops open connections and ends the thread."""
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> StorageProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- faults --------------------------------------------------------------------------------
    def _add(self, fault: Fault) -> Fault:
        if fault.every < 1:
            raise ValueError(f"every must be at least 1, got {fault.every}")
        with self._lock:
            self._faults.append(fault)
        return fault

    # Every fault takes ``every`` N: it meets only the 1st, (N+1)th, 2N+1th ... matching request.

    def stall(
        self,
        pattern: str,
        *,
        after_bytes: int,
        seconds: float | None = None,
        times: int | None = None,
        every: int = 1,
    ) -> Fault:
        """Holds the body of the next ``times`` matching requests (None: all) after
        ``after_bytes`` bytes for ``seconds`` (None: until :meth:`release`, :meth:`clear_faults` or
        :meth:`stop`)."""
        return self._add(
            Fault("stall", re.compile(pattern), after_bytes, seconds, remaining=times, every=every)
        )

    def reset(
        self, pattern: str, *, after_bytes: int = 0, times: int | None = 1, every: int = 1
    ) -> Fault:
        """Resets the client connection of the next ``times`` matching requests (None: all)
        after ``after_bytes`` bytes of their body have gone upstream."""
        return self._add(
            Fault("reset", re.compile(pattern), after_bytes, remaining=times, every=every)
        )

    def fail(
        self, pattern: str, *, status: int = 503, times: int | None = 1, every: int = 1
    ) -> Fault:
        """Answers the next ``times`` matching requests (None: all) with ``status`` without
        passing them on."""
        return self._add(
            Fault("fail", re.compile(pattern), status=status, remaining=times, every=every)
        )

    def drop_answer(self, pattern: str, *, times: int | None = 1, every: int = 1) -> Fault:
        """Swallows the server's answer to the next ``times`` matching requests (None: all) and
        resets the client's connection."""
        return self._add(Fault("drop_answer", re.compile(pattern), remaining=times, every=every))

    def delay(self, pattern: str, *, seconds: float, times: int | None = None) -> Fault:
        """Passes the next ``times`` matching requests (None: all) on ``seconds`` late, each on
        its own (requests in flight together wait together)."""
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, got {seconds}")
        return self._add(Fault("delay", re.compile(pattern), seconds=seconds, remaining=times))

    def limit_link(self, up_bytes_per_second: float, down_bytes_per_second: float) -> None:
        """Carry request bodies towards the server at most ``up_bytes_per_second`` and answers'
        bodies back at most ``down_bytes_per_second``, over all connections together. Set
        before traffic flows; it stays until the proxy stops."""
        self._uplink = Link(up_bytes_per_second)
        self._downlink = Link(down_bytes_per_second)

    def clear_faults(self) -> None:
        """Removes every fault and releases requests held by a stall."""
        with self._lock:
            self._faults.clear()
        self.release()

    def release(self) -> None:
        """Releases the requests held by a stall now; the faults set stay as they are (a held
        request that also matched :meth:`reset` is then reset)."""
        if self._loop is not None and self._release is not None:
            release = self._release

            def reset_event() -> None:
                release.set()
                self._release = asyncio.Event()

            self._loop.call_soon_threadsafe(reset_event)

    def seen(self) -> list[Seen]:
        """The requests handled so far, oldest first."""
        with self._lock:
            return list(self._seen)

    def _take(self, kind: str, target: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind != kind or not fault.matches(target):
                    continue
                fault.matched += 1
                if (fault.matched - 1) % fault.every:
                    continue
                if fault.remaining is not None:
                    if fault.remaining <= 0:
                        continue
                    fault.remaining -= 1
                fault.hits += 1
                return fault
        return None

    def _record(self, head: _Head, status: int) -> None:
        with self._lock:
            self._seen.append(Seen(head.method, head.target, status))

    # -- serving -------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while True:
                raw = await _read_head(reader)
                if raw is None:
                    break
                lines = raw.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    raise ProtocolError(f"bad request line {lines[0]!r}")
                head = _Head(parts[0], parts[1], parts[2], _parse_headers(lines[1:]))
                keep = await self._exchange(head, reader, writer)
                if not keep:
                    break
        except _Reset:
            with contextlib.suppress(OSError):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        except asyncio.CancelledError:
            # The proxy is stopping: drop the connection without finishing the exchange.
            writer.transport.abort()
            return
        except (ProtocolError, ConnectionError, asyncio.IncompleteReadError) as exc:
            logger.info("Storage proxy dropped a connection: %s.", exc)
        finally:
            self._clients.discard(writer)
        with contextlib.suppress(OSError, ConnectionError):
            writer.close()
            await writer.wait_closed()

    async def _answer(
        self, writer: asyncio.StreamWriter, status: int, message: str, *, keep: bool
    ) -> None:
        body = f'{{"statusCode":"{status}","error":"Proxy","message":"{message}"}}'.encode()
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "keep-alive" if keep else "close"),
        ]
        writer.write(_serialize(f"HTTP/1.1 {status} Proxy", headers) + body)
        await writer.drain()

    async def _discard_body(self, head: _Head, reader: asyncio.StreamReader) -> None:
        async def drop(_sent: int, _counted: int, _data: bytes, _w: asyncio.StreamWriter) -> None:
            return None

        pump = _BodyPump(reader, None, drop)
        if _is_chunked(head.headers):
            await pump.chunked()
        else:
            await pump.fixed(_content_length(head.headers) or 0)

    async def _exchange(
        self, head: _Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        client_close = "close" in _connection_tokens(head.headers) or head.version == "HTTP/1.0"
        target = f"{head.method} {head.target}"
        if not (
            head.target == PREFIX
            or head.target.startswith(PREFIX + "/")
            or head.target.startswith(PREFIX + "?")
        ):
            await self._discard_body(head, reader)
            self._record(head, 404)
            await self._answer(writer, 404, "not under /storage/v1", keep=not client_close)
            return not client_close
        failure = self._take("fail", target)
        if failure is not None:
            await self._discard_body(head, reader)
            self._record(head, failure.status)
            await self._answer(writer, failure.status, "injected failure", keep=not client_close)
            return not client_close
        delay = self._take("delay", target)
        if delay is not None and delay.seconds:
            await asyncio.sleep(delay.seconds)
        stall = self._take("stall", target)
        reset = self._take("reset", target)
        drop_answer = self._take("drop_answer", target)
        has_body = _is_chunked(head.headers) or bool(_content_length(head.headers))
        if reset is not None and not has_body:
            logger.info("Storage proxy resets %s before passing it on.", target)
            self._record(head, 0)
            raise _Reset

        upstream_reader, upstream_writer = await _open_upstream(
            self.upstream_host, self.upstream_port
        )
        try:
            path = head.target[len(PREFIX) :] or "/"
            if not path.startswith("/"):
                path = "/" + path
            headers = _end_to_end(head.headers)
            chunked = _is_chunked(head.headers)
            if chunked:
                headers.append(("Transfer-Encoding", "chunked"))
            # No "Connection: close": a server that answers before it has read the whole body
            # and then closes resets the connection, which can drop its own answer; on a
            # kept-alive connection it reads the rest of the body instead. The proxy closes
            # this connection itself once the answer is through.
            headers += [("X-Forwarded-Prefix", PREFIX), ("X-Forwarded-Proto", "http")]
            upstream_writer.write(_serialize(f"{head.method} {path} HTTP/1.1", headers))
            await upstream_writer.drain()

            release = self._release
            uplink = self._uplink

            upstream_gone = False

            async def send(out: asyncio.StreamWriter, data: bytes) -> None:
                # A server may answer (a refusal) and close before the body is all sent; the
                # rest of the body is then read and dropped, and its answer passed back.
                nonlocal upstream_gone
                if upstream_gone:
                    return
                if uplink is not None and data:
                    await uplink.carry(len(data))
                try:
                    out.write(data)
                    await out.drain()
                except (ConnectionError, OSError):
                    upstream_gone = True

            async def hook(sent: int, counted: int, data: bytes, out: asyncio.StreamWriter) -> None:
                for fault in (stall, reset):
                    if fault is None or counted == 0:
                        continue
                    if sent <= fault.after_bytes < sent + counted or (
                        fault.after_bytes == 0 and sent == 0
                    ):
                        split = fault.after_bytes - sent
                        await send(out, data[:split])
                        data = data[split:]
                        sent += split
                        if fault.kind == "reset":
                            logger.info("Storage proxy resets %s after %d bytes.", target, sent)
                            self._record(head, 0)
                            raise _Reset
                        logger.info("Storage proxy stalls %s after %d bytes.", target, sent)
                        assert release is not None
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(release.wait(), fault.seconds)
                await send(out, data)

            pump = _BodyPump(reader, upstream_writer, hook)
            if chunked:
                await pump.chunked()
            else:
                await pump.fixed(_content_length(head.headers) or 0)
            if drop_answer is not None:
                await self._relay_response(head, upstream_reader, None, client_close)
                logger.info("Storage proxy drops the answer to %s.", target)
                raise _Reset
            return await self._relay_response(head, upstream_reader, writer, client_close)

        finally:
            upstream_writer.transport.abort()

    async def _relay_response(
        self,
        head: _Head,
        upstream: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None,
        client_close: bool,
    ) -> bool:
        """Passes the server's answer to ``writer`` (None: reads and discards it)."""
        sink = writer if writer is not None else _Discard()
        while True:
            raw = await _read_head(upstream)
            if raw is None:
                raise ProtocolError("upstream closed before answering")
            lines = raw.decode("latin-1").split("\r\n")
            status_line = lines[0]
            status = int(status_line.split(" ", 2)[1])
            headers = _parse_headers(lines[1:])
            if 100 <= status < 200 and status != 101:
                sink.write(raw)
                await sink.drain()
                continue
            break
        self._record(head, status)
        out_headers = _end_to_end(headers)
        no_body = head.method == "HEAD" or status in (204, 304)
        chunked = _is_chunked(headers)
        length = _content_length(headers)
        keep = not client_close
        if chunked and not no_body:
            out_headers.append(("Transfer-Encoding", "chunked"))
        elif length is None and not no_body:
            keep = False
        out_headers.append(("Connection", "keep-alive" if keep else "close"))
        version = "HTTP/1.1"
        sink.write(_serialize(f"{version} {status_line.split(' ', 1)[1]}", out_headers))

        downlink = self._downlink

        async def hook(_sent: int, _counted: int, data: bytes, out: asyncio.StreamWriter) -> None:
            if downlink is not None and data:
                await downlink.carry(len(data))
            out.write(data)
            await out.drain()

        pump = _BodyPump(upstream, sink, hook)
        if not no_body:
            if chunked:
                await pump.chunked()
            elif length is not None:
                await pump.fixed(length)
            else:
                await pump.to_eof()
        await sink.drain()
        return keep


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a standing proxy until interrupted."""
    parser = argparse.ArgumentParser(description="Serve a storage server under /storage/v1.")
    parser.add_argument("--upstream", required=True, help="the storage server, http://host:port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="pass every request on this much later"
    )
    parser.add_argument(
        "--link-mbit",
        type=float,
        default=0.0,
        help="carry bodies at most this many megabits a second each way (0: no limit)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def run() -> None:
        proxy = StorageProxy(args.upstream, host=args.host, port=args.port)
        if args.delay_ms:
            proxy.delay("", seconds=args.delay_ms / 1000)
        if args.link_mbit:
            rate = args.link_mbit * 1e6 / 8
            proxy.limit_link(rate, rate)
        await proxy.serve()
        logger.info("listening on %s", proxy.url)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
