"""A small HTTP/1.1 client for streamed responses from one origin (server-sent events).

The OpenAI-compatible adapter reads every token of an answer through it. Why not a library
(measured 2026-11-24 on the shared 2-core machine, load average 0.8-1.1): the generation
service relaying the bench's fake server (64 concurrent streams at 50 tokens/s, 100 tokens
each), with its HTTP client swapped for an adapter over each library, the variants in turn
in one run, 6 rounds: the p50 added to the first token was 1.15 ms with this client, 1.31 ms
with aiohttp 3.14 (+14 %) and 2.61 ms with httpx 0.28 (+127 %); added per token 0.28 /
0.29 / 0.40 ms. Relaying a 20-token answer at 50 tokens/s, the service executes 3.7 M
instructions with this client, 4.4 M with aiohttp (+18 %) and 10.1 M with httpx (valgrind
callgrind, all threads, the same swap; ``python -m bench.bench_generation --instructions``
counts this client's). On Python 3.11 aiohttp also writes a request body from a
separate task, one event-loop turn after the call, which under load delays the request
behind other streams' tokens; this client writes it at once. With a target of ≤ 1 ms added,
neither library fits on the direct path.

What it does: ``POST`` with a small body; keep-alive connections in a pool (a reused idle
connection that turns out to be closed before any byte of the answer is retried once on a
fresh connection); response framing per RFC 9112 §6 (``Transfer-Encoding: chunked``,
``Content-Length``, or until the server closes; 1xx interim responses skipped); the body
as lines as they arrive; TLS for ``https``; a connect timeout and a read timeout (the
longest silence while waiting for the answer); read back-pressure (the socket is paused
while the reader is more than :data:`PAUSE_BYTES` behind).

What it does not: redirects, proxies, compression (it asks for ``identity`` and refuses
anything else), HTTP/2, request bodies large enough to need write flow control.

Proxies: :func:`proxy_for` reads ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` and
``NO_PROXY`` (lower-case names win, as in curl); when a proxy applies, the adapter uses
:class:`ProxiedHttpClient`, the same interface over httpx (plain forwarding for ``http://``,
a CONNECT tunnel for ``https://``, ``http``/``https`` proxy URLs with credentials), and
this client only when no proxy applies. Behind a proxy the extra hop outweighs httpx's cost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import httpx

# Largest status line + headers accepted.
MAX_HEAD_BYTES = 64 * 1024
# Largest chunk-size line (with extensions) or trailer line accepted.
MAX_CHUNK_LINE_BYTES = 4096
# Unread body bytes at which the socket stops being read (until the reader catches up).
PAUSE_BYTES = 256 * 1024

_HEAD, _BODY, _DONE = 0, 1, 2
_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _CHUNK_TRAILER = 0, 1, 2, 3


class HttpStreamError(Exception):
    """Any failure of a request or of its response stream."""


class ConnectError(HttpStreamError):
    """The server cannot be reached (refused, unreachable, TLS handshake failed)."""


class ConnectTimeout(ConnectError):
    """Connecting took longer than the connect timeout."""


class ReadTimeout(HttpStreamError):
    """The server was silent for longer than the read timeout while the answer was awaited."""


class ConnectionClosed(HttpStreamError):
    """The server closed the connection before the end of the response."""


class ProtocolError(HttpStreamError):
    """The response is not valid HTTP/1.1 (or uses what this client does not support)."""


class LineTooLong(ProtocolError):
    """A line of the body is longer than the client's limit."""


@dataclass(frozen=True)
class Origin:
    """Where requests go: ``scheme://host:port`` and the base path that request paths extend."""

    secure: bool
    host: str
    port: int
    base_path: str

    @classmethod
    def from_url(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r} has a query or fragment: give the base URL only")
        secure = parts.scheme == "https"
        return cls(secure, parts.hostname, parts.port or (443 if secure else 80), parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: writes requests, parses one response at a time into lines."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float, max_line: int) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self._max_line = max_line
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self._active = False
        self._state = _HEAD
        self._buffer = bytearray()
        self.got_bytes = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self._framing = ""
        self._remaining = 0
        self._chunk = _CHUNK_SIZE
        self._lines: collections.deque[bytes] = collections.deque()
        self._partial = b""
        self._buffered = 0
        self._paused = False
        self._error: HttpStreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wait_since = 0.0
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self._active:  # bytes on an idle connection: the server is not speaking HTTP/1.1 to us
            self.close()
            return
        self._last_data = self._loop.time()
        self.got_bytes = True
        self._buffer += data
        state = self._state
        try:
            self._parse()
        except HttpStreamError as error:
            self._fail(error)
            return
        if self._waiter is not None and (self._lines or self._state != state):
            self._wake()

    def eof_received(self) -> bool:
        self._end_of_stream()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._end_of_stream()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _end_of_stream(self) -> None:
        if not self._active or self._state == _DONE:
            self.closed = True
            return
        if self._state == _BODY and self._framing == "close":
            self._finish_body()
        else:
            where = "before the response" if self._state == _HEAD else "in the middle of the response body"
            self._error = self._error or ConnectionClosed(f"the server closed the connection {where}")
        self.closed = True
        self._wake()

    # -------------------------------------------------------------- parsing

    def _parse(self) -> None:
        while self._buffer:
            if self._state == _HEAD:
                if not self._parse_head():
                    return
            elif self._state == _BODY:
                if not self._parse_body():
                    return
            else:  # bytes after the end of the response: never reuse this connection
                self.keep_alive = False
                self._buffer.clear()
                return

    def _parse_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise ProtocolError(f"response headers exceed {MAX_HEAD_BYTES} bytes")
            return False
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        lines = head.split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if version not in ("HTTP/1.1", "HTTP/1.0") or not code.isdigit() or rest[3:4] not in ("", " "):
            raise ProtocolError(f"not an HTTP/1.1 status line: {lines[0][:100]!r}")
        status = int(code)
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError("the server switched protocols, which was not asked for")
            return True  # an interim response (100 Continue, 103 Early Hints): the real one follows
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ProtocolError(f"malformed header line: {line[:100]!r}")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.status, self.headers = status, headers
        connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
        self.keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ProtocolError(f"the server sent Content-Encoding: {encoding}, which this client does not decode")
        transfer = [token.strip().lower() for token in headers.get("transfer-encoding", "").split(",") if token.strip()]
        if status in (204, 304):
            self._framing = "none"
        elif transfer:
            if transfer[-1] == "chunked":
                self._framing = "chunked"
                if "content-length" in headers:  # both: chunked wins, and the connection is not trusted again
                    self.keep_alive = False
            else:
                self._framing, self.keep_alive = "close", False
        elif "content-length" in headers:
            lengths = {value.strip() for value in headers["content-length"].split(",")}
            length = lengths.pop() if len(lengths) == 1 else ""
            if not length.isdigit():
                raise ProtocolError(f"invalid Content-Length: {headers['content-length'][:100]!r}")
            self._framing, self._remaining = "length", int(length)
        else:
            self._framing, self.keep_alive = "close", False
        self._state = _BODY
        if self._framing == "none" or (self._framing == "length" and self._remaining == 0):
            self._finish_body()
        return True

    def _parse_body(self) -> bool:
        buffer = self._buffer
        if self._framing == "length":
            take = min(self._remaining, len(buffer))
            self._feed(bytes(buffer[:take]))
            del buffer[:take]
            self._remaining -= take
            if self._remaining == 0:
                self._finish_body()
            return True
        if self._framing == "close":
            self._feed(bytes(buffer))
            buffer.clear()
            return True
        # chunked
        if self._chunk == _CHUNK_DATA:
            take = min(self._remaining, len(buffer))
            self._feed(bytes(buffer[:take]))
            del buffer[:take]
            self._remaining -= take
            if self._remaining == 0:
                self._chunk = _CHUNK_CRLF
            return True
        if self._chunk == _CHUNK_CRLF:
            if len(buffer) < 2:
                return False
            if buffer[:2] != b"\r\n":
                raise ProtocolError("a chunk of the body does not end with CRLF")
            del buffer[:2]
            self._chunk = _CHUNK_SIZE
            return True
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) > MAX_CHUNK_LINE_BYTES:
                raise ProtocolError(f"a chunk-size or trailer line exceeds {MAX_CHUNK_LINE_BYTES} bytes")
            return False
        line = bytes(buffer[:end])
        del buffer[: end + 2]
        if self._chunk == _CHUNK_TRAILER:
            if not line:
                self._finish_body()
            return True
        size = line.split(b";", 1)[0].strip(b" \t")
        if not size or size.strip(b"0123456789abcdefABCDEF"):
            raise ProtocolError(f"invalid chunk size line: {line[:100]!r}")
        remaining = int(size, 16)
        if remaining and buffer[remaining : remaining + 2] == b"\r\n":
            # The whole chunk is here (a token's event, usually): its data and CRLF in one step.
            self._feed(bytes(buffer[:remaining]))
            del buffer[: remaining + 2]
            return True
        self._remaining = remaining
        self._chunk = _CHUNK_DATA if remaining else _CHUNK_TRAILER
        return True

    def _feed(self, data: bytes) -> None:
        if not data:
            return
        if self._partial:
            data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        if len(self._partial) > self._max_line:
            raise LineTooLong(f"a line of the response is longer than {self._max_line} bytes")
        for line in complete:
            if len(line) > self._max_line:
                raise LineTooLong(f"a line of the response is longer than {self._max_line} bytes")
            self._buffered += len(line) + 1
            self._lines.append(line)
        if self._buffered > PAUSE_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _finish_body(self) -> None:
        if self._partial:  # a body that does not end with a line break
            self._buffered += len(self._partial) + 1
            self._lines.append(self._partial)
            self._partial = b""
        self._state = _DONE

    # -------------------------------------------------------------- the reader's side

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self._reset()
        self._active = True
        self._last_data = self._wait_since = self._loop.time()
        self.transport.write(request)

    async def wait_head(self) -> None:
        while self._state == _HEAD:
            if self._error is not None:
                raise self._error
            await self._wait()
        if self._error is not None and self._state == _HEAD:
            raise self._error

    async def readline(self) -> bytes | None:
        lines = self._lines
        while not lines:
            if self._error is not None:
                raise self._error
            if self._state == _DONE:
                return None
            await self._wait()
        line = lines.popleft()
        self._buffered -= len(line) + 1
        if self._paused and self._buffered < PAUSE_BYTES // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return line

    def buffered_line(self) -> bytes | None:
        """The next line if it has already arrived, else None, without waiting (the end of the
        body and errors are left to :meth:`readline`)."""
        if not self._lines:
            return None
        line = self._lines.popleft()
        self._buffered -= len(line) + 1
        if self._paused and self._buffered < PAUSE_BYTES // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return line

    @property
    def body_complete(self) -> bool:
        return self._state == _DONE and not self._lines and self._error is None

    async def _wait(self) -> None:
        waiter = self._loop.create_future()
        self._waiter = waiter
        self._wait_since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._wait_since + self._read_timeout, self._check_silence)
        try:
            await waiter
        finally:
            self._waiter = None

    def _check_silence(self) -> None:
        """The read timeout: one timer per response, re-armed lazily from the last activity."""
        self._timer = None
        if not self._active or self._state == _DONE or self._error is not None:
            return
        now = self._loop.time()
        if self._waiter is None:  # the reader is busy, not waiting: its next wait starts the clock again
            self._timer = self._loop.call_at(now + self._read_timeout, self._check_silence)
            return
        deadline = max(self._last_data, self._wait_since) + self._read_timeout
        if now >= deadline:
            self._fail(ReadTimeout(f"no data from the server for {self._read_timeout:g} s"))
            return
        self._timer = self._loop.call_at(deadline, self._check_silence)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: HttpStreamError) -> None:
        self._error = self._error or error
        self.keep_alive = False
        self.close()
        self._wake()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def finish(self) -> bool:
        """End the exchange; True when the connection can serve another request."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        reusable = (
            self._active
            and not self.closed
            and self.keep_alive
            and self._state == _DONE
            and not self._buffer
            and self._error is None
        )
        self._active = False
        if not reusable:
            self.close()
        return reusable


class StreamingResponse:
    """A response whose status and headers have arrived; its body is read line by line."""

    def __init__(self, client: StreamingHttpClient, connection: _Connection) -> None:
        self._client = client
        self._connection: _Connection | None = connection
        self.status = connection.status
        self.headers: Mapping[str, str] = connection.headers

    async def readline(self) -> bytes | None:
        """The next line of the body (without its line break), or None at the end of the body."""
        if self._connection is None:
            return None
        line = await self._connection.readline()
        if line is not None and line.endswith(b"\r"):
            return line[:-1]
        return line

    def buffered_line(self) -> bytes | None:
        """The next line of the body if it has already arrived, else None, without waiting."""
        if self._connection is None:
            return None
        line = self._connection.buffered_line()
        if line is not None and line.endswith(b"\r"):
            return line[:-1]
        return line

    async def read(self, limit: int) -> bytes:
        """The rest of the body (lines joined by ``\\n``), at most ``limit`` bytes of it."""
        parts: list[bytes] = []
        size = 0
        while size < limit and (line := await self.readline()) is not None:
            parts.append(line)
            size += len(line) + 1
        return b"\n".join(parts)[:limit]

    @property
    def complete(self) -> bool:
        """Whether the whole body has been read."""
        return self._connection is None or self._connection.body_complete

    def close(self) -> None:
        """Release the connection: back to the pool when the body was read to its end, else closed
        (which tells the server to stop)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._client._release(connection)


class StreamingHttpClient:
    """Requests to one origin over a pool of keep-alive connections."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        max_line_bytes: int = 1024 * 1024,
        max_idle: int = 128,
        idle_seconds: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.origin = Origin.from_url(base_url)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_line = max_line_bytes
        self._max_idle = max_idle
        self._idle_seconds = idle_seconds
        fixed = {"Host": self.origin.host_header, "Accept-Encoding": "identity", **(headers or {})}
        for name, value in fixed.items():
            if not name or any(c in name for c in ":\r\n ") or "\r" in value or "\n" in value:
                raise ValueError(f"invalid HTTP header {name!r}: names need no ':' or spaces, values no line breaks")
        self._head_lines = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._ssl = (ssl_context or ssl.create_default_context()) if self.origin.secure else None
        self._idle: list[_Connection] = []
        self._closed = False

    async def post(self, path: str, body: bytes, content_type: str = "application/json") -> StreamingResponse:
        """Send ``body`` to ``base path + path``; returns once the status and headers have arrived."""
        if self._closed:
            raise ConnectError("the client is closed")
        request = (
            f"POST {self.origin.base_path}{path} HTTP/1.1\r\n{self._head_lines}"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        connection = self._pooled()
        if connection is not None:
            connection.send(request)
            try:
                await connection.wait_head()
            except ConnectionClosed:
                connection.finish()
                if connection.got_bytes:
                    raise
                # The server had closed this idle connection: try once more on a fresh one.
            except BaseException:
                connection.finish()
                raise
            else:
                return StreamingResponse(self, connection)
        connection = await self._connect()
        connection.send(request)
        try:
            await connection.wait_head()
        except BaseException:
            connection.finish()
            raise
        return StreamingResponse(self, connection)

    def _pooled(self) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self._idle_seconds:
                return connection
            connection.finish()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(loop, self._read_timeout, self._max_line),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if origin.secure else None,
                )
        except TimeoutError:
            raise ConnectTimeout(
                f"connecting to {origin.host}:{origin.port} took over {self._connect_timeout:g} s"
            ) from None
        except OSError as error:  # refused, unreachable, name not resolved, TLS handshake failed
            raise ConnectError(f"{type(error).__name__}: {error}") from error
        return protocol

    def _release(self, connection: _Connection) -> None:
        if connection.finish():
            if self._closed or len(self._idle) >= self._max_idle:
                connection.close()
            else:
                connection.idle_since = asyncio.get_running_loop().time()
                self._idle.append(connection)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


# ---------------------------------------------------------------- proxies


class HttpStream(Protocol):
    """A response whose status and headers have arrived; its body is read line by line."""

    status: int
    headers: Mapping[str, str]

    async def readline(self) -> bytes | None: ...

    def buffered_line(self) -> bytes | None:
        """The next line if it has already arrived, else None: never waits, never raises."""
        ...

    async def read(self, limit: int) -> bytes: ...

    @property
    def complete(self) -> bool: ...

    def close(self) -> None: ...


class HttpStreamClient(Protocol):
    """Requests to one origin: :class:`StreamingHttpClient` or :class:`ProxiedHttpClient`."""

    origin: Origin

    async def post(self, path: str, body: bytes, content_type: str = "application/json") -> HttpStream: ...

    async def aclose(self) -> None: ...


def _env(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name.lower())
    if value is None:
        value = environ.get(name.upper(), "")
    return value.strip()


def _bypassed(origin: Origin, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` exempts ``origin``: ``*``; a host or domain (``example.com`` also
    covers its subdomains; a leading ``.`` or ``*.`` is the same), optionally with ``:port``;
    an IP address or CIDR block."""
    import ipaddress  # only when a proxy variable is set

    host = origin.host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.replace(" ", ",").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, port = entry, ""
        if entry.startswith("["):  # [v6]:port
            name, _, rest = entry[1:].partition("]")
            port = rest.removeprefix(":")
        elif entry.count(":") == 1:
            name, port = entry.split(":")
        if port and port != str(origin.port):
            continue
        if address is not None:
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            continue
        name = name.removeprefix("*").lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


PROXY_VARIABLES = tuple(
    name for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") for name in (base, base.upper())
)


def proxy_for(url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy URL that the environment names for requests to ``url``, or None.

    ``HTTP_PROXY`` for ``http://`` URLs, ``HTTPS_PROXY`` for ``https://`` ones, ``ALL_PROXY``
    for both when the specific one is unset; none when ``NO_PROXY`` exempts the host. Raises
    ValueError (naming the variable) for a proxy URL that is not ``http://`` or ``https://``.
    """
    origin = Origin.from_url(url)
    name = "https_proxy" if origin.secure else "http_proxy"
    proxy = _env(environ, name)
    if not proxy:
        name, proxy = "all_proxy", _env(environ, "all_proxy")
    if not proxy or _bypassed(origin, _env(environ, "no_proxy")):
        return None
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{name.upper()}={proxy!r} is not an http:// or https:// proxy URL (SOCKS is not supported): "
            "fix it, or exempt the model server's host with NO_PROXY"
        )
    return parts.geturl()


class _ProxiedResponse:
    """:class:`HttpStream` over an httpx streaming response."""

    def __init__(self, client: ProxiedHttpClient, response: httpx.Response, max_line: int) -> None:
        self._client = client
        self._response: httpx.Response | None = response
        self._chunks: AsyncIterator[bytes] = response.aiter_bytes()
        self._max_line = max_line
        self._lines: collections.deque[bytes] = collections.deque()
        self._partial = b""
        self._ended = False
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def readline(self) -> bytes | None:
        import httpx  # imported with the client: only when a proxy is configured

        while not self._lines:
            if self._ended or self._response is None:
                return None
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._ended = True
                if self._partial:
                    self._lines.append(self._partial)
                    self._partial = b""
                continue
            except httpx.ReadTimeout as error:
                raise ReadTimeout(f"no data from the server for {self._client.read_timeout:g} s") from error
            except httpx.TransportError as error:
                raise ConnectionClosed(f"the stream broke ({type(error).__name__}: {error})") from error
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            if len(self._partial) > self._max_line or any(len(line) > self._max_line for line in complete):
                raise LineTooLong(f"a line of the response is longer than {self._max_line} bytes")
            self._lines.extend(complete)
        line = self._lines.popleft()
        return line[:-1] if line.endswith(b"\r") else line

    def buffered_line(self) -> bytes | None:
        if not self._lines:
            return None
        line = self._lines.popleft()
        return line[:-1] if line.endswith(b"\r") else line

    async def read(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while size < limit and (line := await self.readline()) is not None:
            parts.append(line)
            size += len(line) + 1
        return b"\n".join(parts)[:limit]

    @property
    def complete(self) -> bool:
        return self._response is None or (self._ended and not self._lines)

    def close(self) -> None:
        """Release the response: its connection back to httpx's pool when read to the end, else closed."""
        response, self._response = self._response, None
        if response is not None:
            self._client._close_later(response)


class ProxiedHttpClient:
    """:class:`HttpStreamClient` through a proxy, over httpx (used only when a proxy applies)."""

    def __init__(
        self,
        base_url: str,
        proxy: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        max_line_bytes: int = 1024 * 1024,
        max_idle: int = 128,
        idle_seconds: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        import httpx  # only when a proxy is configured: the direct path does without it

        self.origin = Origin.from_url(base_url)
        self.read_timeout = read_timeout
        self._base = base_url.rstrip("/")
        self._max_line = max_line_bytes
        self._client = httpx.AsyncClient(
            proxy=proxy,
            headers={**(headers or {})},
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=max_idle, keepalive_expiry=idle_seconds
            ),
            verify=ssl_context if ssl_context is not None else True,
            trust_env=False,  # the proxy is the one given: one reading of the environment, at start
        )
        self._closing: set[asyncio.Task[None]] = set()

    async def post(self, path: str, body: bytes, content_type: str = "application/json") -> HttpStream:
        import httpx

        request = self._client.build_request(
            "POST", self._base + path, content=body, headers={"Content-Type": content_type}
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.ConnectTimeout as error:
            raise ConnectTimeout(f"connecting through the proxy timed out ({error})") from error
        except httpx.ReadTimeout as error:
            raise ReadTimeout(f"no answer from the server for {self.read_timeout:g} s") from error
        except (httpx.ConnectError, httpx.ProxyError) as error:
            raise ConnectError(f"through the proxy: {type(error).__name__}: {error}") from error
        except httpx.TransportError as error:
            raise ConnectionClosed(f"through the proxy: {type(error).__name__}: {error}") from error
        return _ProxiedResponse(self, response, self._max_line)

    def _close_later(self, response: httpx.Response) -> None:
        task = asyncio.get_running_loop().create_task(response.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self._client.aclose()
