"""Protocol-level fakes of the model servers: a local HTTP server speaking the real wire formats.

* :func:`event_frame` encodes one message of the AWS event-stream binary format
  (``application/vnd.amazon.eventstream``): prelude (total length, headers length, CRC32 of
  both), headers (name, type 7 = string, value), payload, CRC32 of everything before it.
  botocore has a decoder but no encoder; boto3 pointed at :class:`FakeHttpServer` through
  ``endpoint_url`` parses these frames with its real parser.
* :class:`FakeHttpServer` runs on the test's event loop (boto3 calls block in relay threads,
  not on the loop), records each request, and hands the connection to a per-test handler
  that writes the response: chunked bodies, pauses, and a record of when the client closed
  the connection.
* :class:`RawServer` hands each whole connection (keep-alive: any number of requests) to the
  test, which writes exactly the bytes it means.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return struct.pack("!B", len(raw_name)) + raw_name + b"\x07" + struct.pack("!H", len(raw_value)) + raw_value


def event_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with correct prelude and message CRCs."""
    encoded = b"".join(_header(name, value) for name, value in headers.items())
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack("!I", binascii.crc32(message) & 0xFFFFFFFF)


def event(event_type: str, payload: bytes, content_type: str = "application/octet-stream") -> bytes:
    return event_frame({":message-type": "event", ":event-type": event_type, ":content-type": content_type}, payload)


def json_event(event_type: str, body: dict[str, Any]) -> bytes:
    return event(event_type, json.dumps(body).encode(), "application/json")


def exception_event(exception_type: str, message: str, **extra: str) -> bytes:
    payload = json.dumps({"Message": message, "message": message, **extra}).encode()
    return event_frame(
        {":message-type": "exception", ":exception-type": exception_type, ":content-type": "application/json"},
        payload,
    )


def payload_part(data: bytes) -> bytes:
    """A SageMaker ``PayloadPart`` event."""
    return event("PayloadPart", data)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Exchange:
    """One request on one connection, handed to the test's handler."""

    request: Request
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)

    async def send_head(self, status: int, headers: dict[str, str], *, chunked: bool = True) -> None:
        reason = {200: "OK", 400: "Bad Request", 429: "Too Many Requests", 500: "Internal Server Error"}.get(
            status, "Status"
        )
        lines = [f"HTTP/1.1 {status} {reason}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def send_chunk(self, data: bytes) -> None:
        if data:
            self.writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await self.writer.drain()

    async def end_chunks(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def send_full(self, status: int, headers: dict[str, str], body: bytes) -> None:
        await self.send_head(status, {**headers, "Content-Length": str(len(body))}, chunked=False)
        self.writer.write(body)
        await self.writer.drain()

    async def stream(self, status: int, headers: dict[str, str], chunks: Iterable[bytes], pause: float = 0.0) -> int:
        """Send ``chunks`` one HTTP chunk each, ``pause`` s apart; stops when the client goes.

        Returns the number of chunks written before the client closed (all of them if it did not).
        """
        await self.send_head(status, headers)
        written = 0
        try:
            for chunk in chunks:
                if self.closed_by_client.is_set():
                    return written
                await self.send_chunk(chunk)
                written += 1
                if pause:
                    try:
                        await asyncio.wait_for(self.closed_by_client.wait(), pause)
                        return written
                    except TimeoutError:
                        pass
            await self.end_chunks()
        except (ConnectionError, RuntimeError):
            self.closed_by_client.set()
        return written


Handler = Callable[[Exchange], Awaitable[None]]


class FakeHttpServer:
    """A tiny HTTP/1.1 server; ``handler`` answers each request (one request per connection)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.exchanges: list[Exchange] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> FakeHttpServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            request = Request(method, path, headers, body)
            self.requests.append(request)
            exchange = Exchange(request, reader, writer)
            self.exchanges.append(exchange)
            watcher = asyncio.create_task(self._watch(exchange))
            try:
                await self.handler(exchange)
            finally:
                watcher.cancel()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _watch(exchange: Exchange) -> None:
        """Set ``closed_by_client`` when the client closes its side (EOF or reset)."""
        try:
            while await exchange.reader.read(1024):
                pass
        except ConnectionError:
            pass
        exchange.closed_by_client.set()


ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server that gives each connection to ``handler``; counts connections and EOFs."""

    def __init__(self, handler: ConnectionHandler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.connections = 0
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, path: str = "/v1") -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over (__aexit__ cancels what still runs)
        finally:
            writer.close()
            self._tasks.discard(task)


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0], headers, body


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def aws_error_response(code: str, message: str) -> tuple[dict[str, str], bytes]:
    """Headers and body of an AWS JSON-protocol error (the code in ``x-amzn-ErrorType``)."""
    return (
        {"Content-Type": "application/json", "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/"},
        json.dumps({"message": message, "Message": message}).encode(),
    )


EVENTSTREAM_HEADERS = {"Content-Type": "application/vnd.amazon.eventstream"}
