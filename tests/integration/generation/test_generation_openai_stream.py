"""The OpenAI-compatible backend against a local server-sent-events server (its real HTTP client)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from services.common.errors import RagchatError, ResourceExhausted, Unauthenticated, Unavailable
from services.generation.backends import DoneEvent, GenerationEvent, GenerationInput, GenerationParams, TokenEvent
from services.generation.backends.llm import LLMGenerator, LLMSettings
from services.generation.backends.openai_compatible import OpenAIChatModel, OpenAISettings
from tests.integration.generation.generation_fakes import Exchange, FakeHttpServer, RawServer, read_request
from tests.integration.generation.generation_fakes import chunk as http_chunk

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return sse(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


def usage(prompt: int, completion: int) -> bytes:
    return sse({"id": "c", "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}})


@pytest.fixture
async def make_generator() -> AsyncIterator[Callable[..., LLMGenerator]]:
    made: list[LLMGenerator] = []

    def make(url: str, **options: Any) -> LLMGenerator:
        settings = OpenAISettings(
            **{"base_url": f"{url}/v1", "model": "llama3", "api_key": "sk-test", "backoff_base": 0.01, **options}
        )
        generator = LLMGenerator(
            OpenAIChatModel(settings), LLMSettings(context_window=8192, default_max_new_tokens=256)
        )
        made.append(generator)
        return generator

    yield make
    for generator in made:
        await generator.close()


INPUT = GenerationInput(question="Why is the sky blue?", system="Be brief.", params=GenerationParams(temperature=0.7))


async def test_streams_tokens_usage_and_finish_reason(make_generator: Callable[..., LLMGenerator]) -> None:
    async def handler(exchange: Exchange) -> None:
        frames = [
            b": keep-alive\n\n",
            chunk(""),
            chunk("Rayleigh"),
            chunk(" scattering"),
            chunk(None, "length"),
            usage(21, 2),
            sse("[DONE]"),
        ]
        await exchange.stream(200, SSE_HEADERS, frames)

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url)
        await generator.start()
        events = [event async for event in generator.generate(INPUT)]

    # The pieces may join tokens that arrived together (test_tokens_that_arrive_together_...).
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == "Rayleigh scattering"
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens, done.model) == (
        "length",
        21,
        2,
        "openai:llama3",
    )
    request = server.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.json() == {
        "model": "llama3",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}],
        "max_tokens": 256,
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_sse_lines_split_across_network_chunks(make_generator: Callable[..., LLMGenerator]) -> None:
    body = chunk("한국어") + chunk(" text", "stop") + sse("[DONE]")
    cut = body.index("국".encode()) + 1  # inside a UTF-8 character

    async def handler(exchange: Exchange) -> None:
        await exchange.stream(200, SSE_HEADERS, [body[:7], body[7:cut], body[cut:]], pause=0.01)

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url, include_usage=False)
        await generator.start()
        events = [event async for event in generator.generate(INPUT)]
    # The second part completes both events: they go on as one piece of two tokens.
    assert [e.text for e in events if isinstance(e, TokenEvent)] == ["한국어 text"]
    assert isinstance(events[-1], DoneEvent) and events[-1].completion_tokens == 2  # counted, no usage sent
    assert "stream_options" not in server.requests[0].json()


async def test_tokens_that_arrive_together_go_on_as_one_piece_and_none_waits(
    make_generator: Callable[..., LLMGenerator],
) -> None:
    """Under load the relay sends what has arrived while it was busy as one piece (one gRPC
    message instead of many); a token that arrives alone goes on at once, never held back."""
    next_token = asyncio.Event()

    async def handler(exchange: Exchange) -> None:
        await exchange.send_head(200, SSE_HEADERS)
        await exchange.send_chunk(chunk("Alone"))
        await next_token.wait()  # sent only once the test has received "Alone"
        await exchange.send_chunk(b"".join(chunk(f" t{i}") for i in range(40)) + b": keep-alive\n\n")
        await exchange.send_chunk(chunk(None, "length") + sse("[DONE]"))
        await exchange.end_chunks()

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url, include_usage=False)
        await generator.start()
        events: list[GenerationEvent] = []
        async for event in generator.generate(INPUT):
            events.append(event)
            if isinstance(event, TokenEvent) and event.text == "Alone":
                next_token.set()
    pieces = [e.text for e in events if isinstance(e, TokenEvent)]
    assert pieces[0] == "Alone" and "".join(pieces[1:]) == "".join(f" t{i}" for i in range(40))
    assert len(pieces) < 10, f"40 tokens that arrived in one write went on in {len(pieces) - 1} pieces"
    done = events[-1]
    assert isinstance(done, DoneEvent) and (done.completion_tokens, done.finish_reason) == (41, "length")


async def test_tokens_read_with_an_error_event_are_handed_on_before_the_error(
    make_generator: Callable[..., LLMGenerator],
) -> None:
    async def handler(exchange: Exchange) -> None:
        await exchange.send_head(200, SSE_HEADERS)
        await exchange.send_chunk(chunk("One") + chunk(" two") + sse({"error": {"message": "worker died"}}))
        await exchange.end_chunks()

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url)
        await generator.start()
        tokens: list[str] = []
        error = await _until_error(generator, tokens)
    assert "".join(tokens) == "One two"
    assert (
        isinstance(error, Unavailable)
        and "reported an error after 2 tokens of the answer: worker died" in error.message
    )


async def test_error_event_mid_stream_after_the_partial_answer(make_generator: Callable[..., LLMGenerator]) -> None:
    async def handler(exchange: Exchange) -> None:
        frames = [chunk("Partial"), sse({"error": {"message": "CUDA error: out of memory", "code": 500}})]
        await exchange.stream(200, SSE_HEADERS, frames)

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url)
        await generator.start()
        tokens: list[str] = []
        error = await _until_error(generator, tokens)
    assert tokens == ["Partial"]
    assert isinstance(error, Unavailable)
    assert "openai:llama3 reported an error after 1 tokens of the answer: CUDA error: out of memory" in error.message
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b"data: not json\n\n", "openai:llama3 streamed an event that is not JSON: 'not json'"),
        (b"data: [1, 2]\n\n", "openai:llama3 streamed an unexpected event: '[1, 2]'"),
        (
            b"event: error\ndata: engine overloaded\n\n",
            "reported an error after 1 tokens of the answer: engine overloaded",
        ),
    ],
)
async def test_events_that_are_not_chunks_end_the_answer_with_their_text(
    make_generator: Callable[..., LLMGenerator], frame: bytes, expected: str
) -> None:
    async def handler(exchange: Exchange) -> None:
        await exchange.stream(200, SSE_HEADERS, [chunk("Partial"), frame])

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url)
        await generator.start()
        tokens: list[str] = []
        error = await _until_error(generator, tokens)
    assert tokens == ["Partial"]
    assert isinstance(error, Unavailable) and expected in error.message


async def test_invalid_utf8_in_an_event_is_replaced_not_fatal(make_generator: Callable[..., LLMGenerator]) -> None:
    async def handler(exchange: Exchange) -> None:
        bad = b'data: {"choices": [{"index": 0, "delta": {"content": "caf\xc3 ok"}, "finish_reason": "stop"}]}\n\n'
        await exchange.stream(200, SSE_HEADERS, [bad, sse("[DONE]")])

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url, include_usage=False)
        await generator.start()
        events = [event async for event in generator.generate(INPUT)]
    assert [e.text for e in events if isinstance(e, TokenEvent)] == ["caf\ufffd ok"]


async def test_connection_dropped_mid_stream(make_generator: Callable[..., LLMGenerator]) -> None:
    async def handler(exchange: Exchange) -> None:
        await exchange.send_head(200, SSE_HEADERS)
        await exchange.send_chunk(chunk("Cut"))
        exchange.writer.transport.abort()

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url)
        await generator.start()
        tokens: list[str] = []
        error = await _until_error(generator, tokens)
    assert tokens == ["Cut"]
    assert isinstance(error, Unavailable) and "broke the stream after 1 tokens" in error.message


async def _until_error(generator: LLMGenerator, tokens: list[str]) -> RagchatError:
    try:
        async for event in generator.generate(INPUT):
            assert isinstance(event, TokenEvent), "the stream ended instead of failing"
            tokens.append(event.text)
    except RagchatError as error:
        return error
    raise AssertionError("the stream did not fail")


async def test_cancelled_slow_stream_closes_the_connection(make_generator: Callable[..., LLMGenerator]) -> None:
    written: list[int] = []

    async def handler(exchange: Exchange) -> None:
        written.append(await exchange.stream(200, SSE_HEADERS, (chunk(" tick") for _ in range(400)), pause=0.05))

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url)
        await generator.start()
        received = 0

        async def consume() -> None:
            nonlocal received
            async for _ in generator.generate(INPUT):
                received += 1

        task = asyncio.create_task(consume())
        while received < 3:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.exchanges[0].closed_by_client.wait(), 2.0)
        assert time.monotonic() - started < 1.0
        while not written:
            await asyncio.sleep(0.01)
    assert written[0] < 20


async def test_rate_limit_at_set_up_is_retried_then_resource_exhausted(
    make_generator: Callable[..., LLMGenerator],
) -> None:
    async def handler(exchange: Exchange) -> None:
        body = json.dumps({"error": {"message": "Rate limit reached"}}).encode()
        await exchange.send_full(429, {"Content-Type": "application/json", "Retry-After": "0"}, body)

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url, max_attempts=3)
        await generator.start()
        with pytest.raises(ResourceExhausted, match=r"rate-limiting \(Rate limit reached\) after 3 attempt"):
            [event async for event in generator.generate(INPUT)]
    assert len(server.requests) == 3


async def test_server_error_then_success_is_retried(make_generator: Callable[..., LLMGenerator]) -> None:
    async def handler(exchange: Exchange) -> None:
        if len(server.requests) < 3:
            await exchange.send_full(503, {"Content-Type": "text/plain"}, b"loading model")
        else:
            await exchange.stream(200, SSE_HEADERS, [chunk("Ready", "stop"), sse("[DONE]")])

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url, max_attempts=3)
        await generator.start()
        events = [event async for event in generator.generate(INPUT)]
    assert [e.text for e in events if isinstance(e, TokenEvent)] == ["Ready"]
    assert len(server.requests) == 3


async def test_persistent_server_error_is_unavailable(make_generator: Callable[..., LLMGenerator]) -> None:
    async def handler(exchange: Exchange) -> None:
        await exchange.send_full(500, {"Content-Type": "text/plain"}, b"engine dead")

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url, max_attempts=2)
        await generator.start()
        with pytest.raises(Unavailable, match=r"HTTP 500 \(engine dead\) after 2 attempt"):
            [event async for event in generator.generate(INPUT)]
    assert len(server.requests) == 2


async def test_bad_key_is_not_retried(make_generator: Callable[..., LLMGenerator]) -> None:
    async def handler(exchange: Exchange) -> None:
        await exchange.send_full(401, {"Content-Type": "application/json"}, b'{"error": {"message": "bad key"}}')

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url, max_attempts=3)
        await generator.start()
        with pytest.raises(Unauthenticated, match="OPENAI_API_KEY"):
            [event async for event in generator.generate(INPUT)]
    assert len(server.requests) == 1


async def test_unreachable_server_is_unavailable(make_generator: Callable[..., LLMGenerator]) -> None:
    async with FakeHttpServer(lambda exchange: asyncio.sleep(0)) as server:
        url = server.url  # a port that nothing listens on once the server is gone
    generator = make_generator(url, max_attempts=2)
    await generator.start()
    with pytest.raises(Unavailable, match=r"cannot be reached .* after 2 attempt"):
        [event async for event in generator.generate(INPUT)]


async def test_answers_share_one_kept_alive_connection(make_generator: Callable[..., LLMGenerator]) -> None:
    """After ``[DONE]`` the end of the body is read, so the next answer reuses the connection."""
    bodies: list[dict[str, Any]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            _, _, body = await read_request(reader)
            bodies.append(json.loads(body))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for frame in (chunk("Hi"), chunk(None, "stop"), sse("[DONE]")):
                writer.write(http_chunk(frame))
                await writer.drain()
                await asyncio.sleep(0.005)  # the end of the body comes in a later segment than [DONE]
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async with RawServer(handler) as server:
        generator = make_generator(server.url(""), include_usage=False)
        await generator.start()
        for _ in range(3):
            events = [event async for event in generator.generate(INPUT)]
            assert [e.text for e in events if isinstance(e, TokenEvent)] == ["Hi"]
            assert isinstance(events[-1], DoneEvent) and events[-1].finish_reason == "stop"
    assert server.connections == 1 and len(bodies) == 3
