"""The streaming HTTP/1.1 client against real sockets: a byte-level server, TLS, and uvicorn.

The byte-level server (:class:`RawServer`) hands each accepted connection to the test, so a
test writes exactly the bytes it means (chunk boundaries inside lines, CRLF split across
writes, interim responses, broken framing) and sees what the client did to the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse as StarletteStreamingResponse
from starlette.routing import Route

from services.generation.backends.http_stream import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    LineTooLong,
    Origin,
    ProtocolError,
    ReadTimeout,
    StreamingHttpClient,
    StreamingResponse,
)
from tests.integration.generation.generation_fakes import RawServer, chunk, read_request

OK_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def lines_of(response: StreamingResponse) -> list[bytes]:
    lines = []
    while (line := await response.readline()) is not None:
        lines.append(line)
    response.close()
    return lines


@pytest.fixture
async def clients() -> AsyncIterator[list[StreamingHttpClient]]:
    made: list[StreamingHttpClient] = []
    yield made
    for client in made:
        await client.aclose()


def make(clients: list[StreamingHttpClient], url: str, **options: object) -> StreamingHttpClient:
    client = StreamingHttpClient(url, headers={"Accept": "text/event-stream"}, **options)  # type: ignore[arg-type]
    clients.append(client)
    return client


async def test_request_bytes_and_chunked_lines_split_anywhere(clients: list[StreamingHttpClient]) -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []
    body = 'data: {"t": "한국어"}\r\n\r\ndata: [DONE]\n\n'.encode()
    cut = body.index("국".encode()) + 1  # inside a UTF-8 character

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        pieces = [OK_CHUNKED[:20], OK_CHUNKED[20:], chunk(body[:5])[:-1], b"\n", chunk(body[5:cut])]
        pieces += [f"{len(body) - cut:x};ext=1\r".encode(), b"\n" + body[cut:] + b"\r\n", b"0\r\nX-Trailer: 1\r\n\r\n"]
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.005)  # separate TCP segments
        await reader.read()

    async with RawServer(handler) as server:
        port = server.port
        client = make(clients, server.url("/v1/"))
        response = await client.post("/chat/completions", b'{"q": 1}')
        assert (response.status, response.headers["content-type"]) == (200, "text/event-stream")
        lines = await lines_of(response)
    assert lines == ['data: {"t": "한국어"}'.encode(), b"", b"data: [DONE]", b""]
    request_line, headers, sent = seen[0]
    assert request_line == "POST /v1/chat/completions HTTP/1.1"
    assert headers["host"] == f"127.0.0.1:{port}"
    assert (headers["content-type"], headers["content-length"], sent) == ("application/json", "8", b'{"q": 1}')
    assert (headers["accept"], headers["accept-encoding"]) == ("text/event-stream", "identity")


async def test_keep_alive_serves_requests_on_one_connection(clients: list[StreamingHttpClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(OK_CHUNKED + chunk(b"data: one\n\n") + b"0\r\n\r\n")
            await writer.drain()

    async with RawServer(handler) as server:
        client = make(clients, server.url())
        for _ in range(3):
            assert await lines_of(await client.post("/x", b"{}")) == [b"data: one", b""]
    assert server.connections == 1


async def test_closing_early_drops_the_connection_so_the_server_stops(clients: list[StreamingHttpClient]) -> None:
    eof_after: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def wait_eof_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK_CHUNKED)
        for sent in range(1000):
            writer.write(chunk(b"data: tick\n\n"))
            await writer.drain()
            try:
                await asyncio.wait_for(reader.read(1), 0.02)
                eof_after.set_result(sent)
                return
            except TimeoutError:
                continue

    async with RawServer(wait_eof_handler) as server:
        client = make(clients, server.url())
        response = await client.post("/x", b"{}")
        assert await response.readline() == b"data: tick"
        started = time.monotonic()
        response.close()
        sent = await asyncio.wait_for(eof_after, 2.0)
        assert time.monotonic() - started < 1.0
        assert sent < 20
        assert client._idle == []  # not kept for reuse


async def test_content_length_and_close_delimited_bodies(clients: list[StreamingHttpClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers, _ = await read_request(reader)
        if headers.get("x-case") == "length":
            body = b'{"error": {"message": "slow down"}}'
            writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 35\r\n\r\n" + body)
            await read_request(reader)  # the connection stays usable
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await reader.read()
        else:  # HTTP/1.0 style: the body ends when the server closes
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nline one\nline two")
            await writer.drain()

    async with RawServer(handler) as server:
        client = StreamingHttpClient(server.url(), headers={"X-Case": "length"})
        clients.append(client)
        response = await client.post("/x", b"{}")
        assert (response.status, response.headers["retry-after"]) == (429, "2")
        assert await response.read(1000) == b'{"error": {"message": "slow down"}}'
        assert response.complete
        response.close()
        empty = await client.post("/x", b"{}")
        assert (empty.status, await empty.readline()) == (204, None)
        empty.close()
        assert server.connections == 1
        other = make(clients, server.url())
        assert await lines_of(await other.post("/x", b"{}")) == [b"line one", b"line two"]
        assert other._idle == []  # a close-delimited body ends its connection


async def test_stale_pooled_connection_is_retried_once_on_a_fresh_one(clients: list[StreamingHttpClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK_CHUNKED + chunk(b"data: hello\n") + b"0\r\n\r\n")
        await writer.drain()
        if server.connections == 1:  # the first connection is closed as the next request arrives
            await read_request(reader)
            writer.transport.abort()

    async with RawServer(handler) as server:
        client = make(clients, server.url())
        assert await lines_of(await client.post("/x", b"{}")) == [b"data: hello"]
        assert await lines_of(await client.post("/x", b"{}")) == [b"data: hello"]
    assert server.connections == 2


async def test_a_fresh_connection_closed_before_the_answer_fails(clients: list[StreamingHttpClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with RawServer(handler) as server:
        client = make(clients, server.url())
        with pytest.raises(ConnectionClosed, match="before the response"):
            await client.post("/x", b"{}")
    assert server.connections == 1


async def test_server_closing_mid_body_fails_after_the_lines_already_sent(clients: list[StreamingHttpClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK_CHUNKED + chunk(b"data: partial\n\n"))
        await writer.drain()

    async with RawServer(handler) as server:
        client = make(clients, server.url())
        response = await client.post("/x", b"{}")
        assert await response.readline() == b"data: partial"
        assert await response.readline() == b""
        with pytest.raises(ConnectionClosed, match="middle of the response body"):
            await response.readline()
        response.close()


async def test_read_timeout_is_silence_not_total_time(clients: list[StreamingHttpClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK_CHUNKED)
        for _ in range(8):  # 0.4 s in all, never silent for 0.2 s
            writer.write(chunk(b"data: x\n"))
            await writer.drain()
            await asyncio.sleep(0.05)
        await asyncio.sleep(10)  # then silent

    async with RawServer(handler) as server:
        client = make(clients, server.url(), read_timeout=0.2)
        response = await client.post("/x", b"{}")
        for _ in range(8):
            assert await response.readline() == b"data: x"
        started = time.monotonic()
        with pytest.raises(ReadTimeout, match=r"no data from the server for 0\.2 s"):
            await response.readline()
        assert 0.15 < time.monotonic() - started < 1.0
        response.close()


async def test_read_timeout_while_waiting_for_the_status(clients: list[StreamingHttpClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async with RawServer(handler) as server:
        client = make(clients, server.url(), read_timeout=0.2)
        with pytest.raises(ReadTimeout):
            await client.post("/x", b"{}")


async def test_unreachable_servers(clients: list[StreamingHttpClient]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = make(clients, f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ConnectError, match="ConnectionRefusedError"):
        await refused.post("/x", b"{}")
    # A listener that never accepts, with its backlog full: the next handshake never completes.
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):  # non-blocking: the handshake goes on alone
                filler.connect(listener.getsockname())
        hanging = make(clients, f"http://127.0.0.1:{listener.getsockname()[1]}/v1", connect_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(ConnectTimeout, match=r"took over 0\.2 s"):
            await hanging.post("/x", b"{}")
        assert time.monotonic() - started < 1.0
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.parametrize(
    ("response", "error", "message"),
    [
        (b"SPDY/3 200 OK\r\n\r\n", ProtocolError, "not an HTTP/1.1 status line"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", ProtocolError, "switched protocols"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n", ProtocolError, "gzip"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", ProtocolError, "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\n bad header\r\n\r\n", ProtocolError, "malformed header"),
        (OK_CHUNKED + b"zz\r\n", ProtocolError, "invalid chunk size"),
        (OK_CHUNKED + b"3\r\nabcXY", ProtocolError, "does not end with CRLF"),
        (OK_CHUNKED + chunk(b"x" * 300), LineTooLong, "longer than 256 bytes"),
    ],
)
async def test_invalid_responses(
    clients: list[StreamingHttpClient], response: bytes, error: type[Exception], message: str
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response)
        await writer.drain()
        await reader.read()

    async with RawServer(handler) as server:
        client = make(clients, server.url(), max_line_bytes=256)
        with pytest.raises(error, match=message):
            await lines_of(await client.post("/x", b"{}"))


async def test_interim_responses_are_skipped(clients: list[StreamingHttpClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi\n")
        await reader.read()

    async with RawServer(handler) as server:
        client = make(clients, server.url())
        response = await client.post("/x", b"{}")
        assert (response.status, await lines_of(response)) == (200, [b"hi"])


async def test_a_reader_that_falls_behind_pauses_the_socket(clients: list[StreamingHttpClient]) -> None:
    line = b"data: " + b"y" * 1000 + b"\n"
    total = 40_000  # 40 MB: far more than the pause threshold plus the kernel's socket buffers
    written = 0
    finished = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        await read_request(reader)
        writer.write(OK_CHUNKED)
        for _ in range(total):
            writer.write(chunk(line))
            await writer.drain()
            written += 1
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        finished.set()
        await reader.read()

    async with RawServer(handler) as server:
        client = make(clients, server.url())
        response = await client.post("/x", b"{}")
        # The reader does not read: the server's writes stall once the buffers are full.
        deadline = time.monotonic() + 10
        before = -1
        while written != before and time.monotonic() < deadline:
            before = written
            await asyncio.sleep(0.25)
        assert written == before < total / 2 and not finished.is_set()
        received = await lines_of(response)
    assert len(received) == total and set(received) == {line[:-1]}


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_tls_verified_against_the_trusted_certificate_only(
    clients: list[StreamingHttpClient], tmp_path: Path
) -> None:
    cert_path, key_path = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK_CHUNKED + chunk(b"data: secret\n") + b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with RawServer(handler, server_context) as server:
        trusted = ssl.create_default_context(cafile=str(cert_path))
        client = make(clients, server.url(), ssl_context=trusted)
        assert await lines_of(await client.post("/x", b"{}")) == [b"data: secret"]
        untrusting = make(clients, server.url())  # the system's CAs do not know this certificate
        with pytest.raises(ConnectError, match="SSLCertVerificationError"):
            await untrusting.post("/x", b"{}")


async def test_against_uvicorn_streaming_server_sent_events(clients: list[StreamingHttpClient]) -> None:
    """uvicorn + Starlette, the stack vLLM serves its OpenAI API with."""
    peers: list[tuple[str, int]] = []

    async def completions(request: Request) -> StarletteStreamingResponse:
        assert request.client is not None
        peers.append((request.client.host, request.client.port))
        body = await request.json()

        async def events() -> AsyncIterator[str]:
            for i in range(body["n"]):
                yield f'data: {{"i": {i}}}\n\n'
                await asyncio.sleep(0)
            yield "data: [DONE]\n\n"

        return StarletteStreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        client = make(clients, f"http://127.0.0.1:{port}/v1")
        for n in (3, 50):
            lines = await lines_of(await client.post("/chat/completions", f'{{"n": {n}}}'.encode()))
            events = [line for line in lines if line]
            assert events == [f'data: {{"i": {i}}}'.encode() for i in range(n)] + [b"data: [DONE]"]
        assert len(peers) == 2 and peers[0] == peers[1]  # the same connection, kept alive
    finally:
        server.should_exit = True
        await serving


def test_runs_on_uvloop() -> None:
    """The service runs on uvloop, whose transports are not asyncio's classes."""

    async def exchange() -> list[bytes]:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader)
                writer.write(OK_CHUNKED + chunk(b"data: uv\n") + b"0\r\n\r\n")
                await writer.drain()

        async with RawServer(handler) as server:
            client = StreamingHttpClient(server.url())
            try:
                first = await lines_of(await client.post("/x", b"{}"))
                second = await lines_of(await client.post("/x", b"{}"))
            finally:
                await client.aclose()
            assert server.connections == 1
            return first + second

    assert uvloop.run(exchange()) == [b"data: uv", b"data: uv"]


def test_origin_and_header_validation() -> None:
    origin = Origin.from_url("https://api.example.com/v1/")
    assert (origin.secure, origin.host, origin.port, origin.base_path, origin.host_header) == (
        True,
        "api.example.com",
        443,
        "/v1",
        "api.example.com",
    )
    assert Origin.from_url("http://[::1]:8000").host_header == "[::1]:8000"
    for bad in ("ftp://x/v1", "http:///v1", "http://x/v1?key=1"):
        with pytest.raises(ValueError, match="URL"):
            Origin.from_url(bad)
    with pytest.raises(ValueError, match="line breaks"):
        StreamingHttpClient("http://x/v1", headers={"Authorization": "Bearer a\r\nX-Injected: 1"})
