"""The OpenAI-compatible backend through a forward proxy (plain HTTP forwarding and CONNECT tunnels)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from services.common.errors import Unavailable
from services.generation.backends import DoneEvent, GenerationInput, TokenEvent
from services.generation.backends.http_stream import ProxiedHttpClient
from services.generation.backends.llm import LLMGenerator, LLMSettings
from services.generation.backends.openai_compatible import OpenAIChatModel, OpenAISettings
from tests.integration.generation.generation_fakes import Exchange, FakeHttpServer, RawServer, read_request
from tests.integration.generation.generation_fakes import chunk as http_chunk
from tests.integration.generation.test_generation_http_stream import self_signed
from tests.integration.generation.test_generation_openai_stream import SSE_HEADERS, chunk, sse


class ForwardProxy:
    """An HTTP forward proxy: absolute-form requests are forwarded, CONNECT opens a tunnel.

    Records each request line and its Proxy-Authorization header; closing either side closes
    the other (so a client that goes away reaches the server).
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://user:secret@{host}:{port}"

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:  # ends the pipes, and so the connections' tasks
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            method, target, version = request_line.split(" ")
            headers = [line for line in header_lines if line]
            auth = next(
                (h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("proxy-authorization")), None
            )
            self.requests.append((request_line, auth))
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, upstream = await asyncio.open_connection(host, int(port))
                self._writers.append(upstream)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                parts = urlsplit(target)
                assert parts.hostname is not None and parts.port is not None
                up_reader, upstream = await asyncio.open_connection(parts.hostname, parts.port)
                self._writers.append(upstream)
                kept = [h for h in headers if not h.lower().startswith("proxy-")]
                upstream.write(
                    f"{method} {parts.path} {version}\r\n{''.join(h + chr(13) + chr(10) for h in kept)}\r\n".encode()
                )
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if upstream is not None:
                upstream.close()
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    async with ForwardProxy() as running:
        yield running


def generator(base_url: str, proxy_url: str) -> LLMGenerator:
    settings = OpenAISettings(base_url=base_url, model="llama3", proxy=proxy_url, backoff_base=0.01, max_attempts=2)
    return LLMGenerator(OpenAIChatModel(settings), LLMSettings(context_window=4096, default_max_new_tokens=64))


INPUT = GenerationInput(question="Why is the sky blue?")


async def test_streams_through_an_http_proxy_with_its_credentials(proxy: ForwardProxy) -> None:
    async def handler(exchange: Exchange) -> None:
        await exchange.stream(200, SSE_HEADERS, [chunk("Rayleigh"), chunk(" scattering", "stop"), sse("[DONE]")])

    async with FakeHttpServer(handler) as server:
        url = server.url
        model = generator(f"{url}/v1", proxy.url)
        await model.start()
        try:
            events = [event async for event in model.generate(INPUT)]
        finally:
            await model.close()
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == "Rayleigh scattering"
    assert isinstance(events[-1], DoneEvent) and events[-1].finish_reason == "stop"
    assert events[-1].completion_tokens == 2
    assert server.requests[0].path == "/v1/chat/completions" and server.requests[0].json()["stream"] is True
    line, auth = proxy.requests[0]
    assert line == f"POST {url}/v1/chat/completions HTTP/1.1"
    assert auth == "Basic dXNlcjpzZWNyZXQ="  # user:secret, from the proxy URL


async def test_closing_early_through_the_proxy_reaches_the_server(proxy: ForwardProxy) -> None:
    async def handler(exchange: Exchange) -> None:
        await exchange.stream(200, SSE_HEADERS, (chunk(f"t{i} ") for i in range(1000)), pause=0.02)

    async with FakeHttpServer(handler) as server:
        model = generator(f"{server.url}/v1", proxy.url)
        await model.start()
        try:
            stream = model.generate(INPUT)
            first = await anext(stream)
            await stream.aclose()
            await asyncio.wait_for(server.exchanges[0].closed_by_client.wait(), 5)
        finally:
            await model.close()
    assert isinstance(first, TokenEvent) and first.text == "t0 "


async def test_https_through_a_connect_tunnel_verifies_the_server(proxy: ForwardProxy, tmp_path: Path) -> None:
    cert_path, key_path = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = http_chunk(b"data: secret\n") + b"0\r\n\r\n"
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        await writer.drain()
        await reader.read()

    async with RawServer(handler, server_context) as server:
        port = server.port
        trusted = ssl.create_default_context(cafile=str(cert_path))
        client = ProxiedHttpClient(server.url(), proxy.url, ssl_context=trusted)
        try:
            response = await client.post("/x", b"{}")
            assert response.status == 200
            assert [await response.readline(), await response.readline()] == [b"data: secret", None]
            assert response.complete
            response.close()
        finally:
            await client.aclose()
    line, auth = proxy.requests[0]
    assert line == f"CONNECT 127.0.0.1:{port} HTTP/1.1" and auth is not None


async def test_an_unreachable_proxy_is_unavailable_with_a_clear_message() -> None:
    model = generator("http://vllm.invalid:8000/v1", "http://127.0.0.1:9")
    await model.start()
    try:
        with pytest.raises(Unavailable, match=r"cannot be reached .*through the proxy.* after 2 attempt"):
            [event async for event in model.generate(INPUT)]
    finally:
        await model.close()
