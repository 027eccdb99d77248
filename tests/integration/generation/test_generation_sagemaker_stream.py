"""SageMaker streaming against a local server speaking the AWS event-stream wire format.

boto3 is pointed at :class:`FakeHttpServer` through ``endpoint_url``, so botocore's real
event-stream parser and retry handler run; only the endpoint is fake.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing

import pytest

from services.common.aws import AwsConfig
from services.common.errors import FailedPrecondition, ResourceExhausted, Unavailable
from services.generation.backends import (
    DoneEvent,
    GenerationEvent,
    GenerationInput,
    GenerationParams,
    Passage,
    TokenEvent,
)
from services.generation.backends.llm import LLMGenerator, LLMSettings
from services.generation.backends.sagemaker import SageMakerChatModel, SageMakerSettings
from tests.integration.generation.generation_fakes import (
    EVENTSTREAM_HEADERS,
    Exchange,
    FakeHttpServer,
    aws_error_response,
    exception_event,
    payload_part,
)

pytestmark = pytest.mark.usefixtures("aws_env")


def tgi_line(
    text: str,
    *,
    details: dict[str, object] | None = None,
    special: bool = False,
    generated_text: str | None = None,
) -> bytes:
    """One TGI server-sent event; the last one of a stream carries ``generated_text`` (and ``details``)."""
    event = {"token": {"id": 1, "text": text, "logprob": -0.1, "special": special}, "generated_text": generated_text}
    if details is not None:
        event["details"] = details
    return b"data:" + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"


def tgi_end(
    text: str, answer: str, finish_reason: str = "eos_token", generated_tokens: int = 1, *, special: bool = False
) -> bytes:
    """TGI's final event: the last token, the whole answer and the details asked for."""
    details = {"finish_reason": finish_reason, "generated_tokens": generated_tokens, "seed": None}
    return tgi_line(text, details=details, special=special, generated_text=answer)


def lmi_line(text: str, **last: object) -> bytes:
    """One line of LMI's default ``jsonlines`` stream (no ``data:``); ``last`` adds the final line's fields."""
    return json.dumps({"token": {"id": 1, "text": text, "log_prob": -0.1}, **last}, ensure_ascii=False).encode() + b"\n"


def aws(url: str, attempts: int = 2) -> AwsConfig:
    return AwsConfig(
        region="us-east-1",
        retry_mode="standard",
        max_attempts=attempts,
        connect_timeout=2.0,
        read_timeout=10.0,
        endpoint_url=url,
    )


@pytest.fixture
async def make_generator() -> AsyncIterator[Callable[..., LLMGenerator]]:
    made: list[LLMGenerator] = []

    def make(url: str, *, attempts: int = 2, **settings: object) -> LLMGenerator:
        options: dict[str, object] = {"endpoint_name": "llama-2-7b-chat", "payload_style": "prompt"}
        options.update(settings)
        model = SageMakerChatModel(SageMakerSettings(**options), aws(url, attempts))  # type: ignore[arg-type]
        generator = LLMGenerator(model, LLMSettings(context_window=4096, default_max_new_tokens=256))
        made.append(generator)
        return generator

    yield make
    for generator in made:
        await generator.close()


QUESTION = GenerationInput(
    question="How long is a day on Mars?",
    system="Answer from the passages.",
    passages=(Passage("c1", "d1", "Mars", 1, "A day on Mars lasts 24 hours and 37 minutes."),),
    user_template="{context}\n\nQuestion: {question}",
    params=GenerationParams(max_new_tokens=50),
)


async def collect(events: AsyncGenerator[GenerationEvent, None]) -> tuple[list[str], DoneEvent]:
    tokens: list[str] = []
    async with aclosing(events) as stream:
        async for event in stream:
            if isinstance(event, TokenEvent):
                tokens.append(event.text)
            else:
                return tokens, event
    raise AssertionError("the stream ended without a done event")


async def until_error(events: AsyncGenerator[GenerationEvent, None]) -> tuple[list[str], Exception]:
    """The tokens streamed before the stream failed, and its error."""
    tokens: list[str] = []
    try:
        async for event in events:
            assert isinstance(event, TokenEvent), "the stream ended instead of failing"
            tokens.append(event.text)
    except Exception as error:
        return tokens, error
    raise AssertionError("the stream did not fail")


async def test_streams_tokens_rejoining_lines_split_across_payload_parts(
    make_generator: Callable[..., LLMGenerator],
) -> None:
    body = (
        tgi_line("A day")
        + tgi_line(" on Mars lasts")
        + tgi_line(" 24h 37m — 화성")
        + tgi_end("</s>", "A day on Mars lasts 24h 37m — 화성", generated_tokens=5, special=True)
    )
    # Cut the byte stream at awkward places: inside JSON, inside "data:", inside a UTF-8 character.
    hangul = body.index("화".encode()) + 1
    cuts = sorted({3, 20, 41, 42, 77, hangul, len(body) - 5})
    parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]

    async def handler(exchange: Exchange) -> None:
        await exchange.stream(200, EVENTSTREAM_HEADERS, [payload_part(part) for part in parts])

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url, inference_component="llama-ic-1")
        await generator.start()
        tokens, done = await collect(generator.generate(QUESTION))
        await generator.close()

    assert "".join(tokens) == "A day on Mars lasts 24h 37m — 화성"
    assert (done.finish_reason, done.completion_tokens) == ("stop", 5)
    assert done.used_chunk_ids == ("c1",)
    assert done.model == "sagemaker:llama-2-7b-chat"
    assert done.prompt_tokens > 20  # the estimate of the rendered prompt
    request = server.requests[0]
    assert request.path == "/endpoints/llama-2-7b-chat/invocations-response-stream"
    assert request.headers["x-amzn-sagemaker-custom-attributes"] == "accept_eula=true"
    assert request.headers["x-amzn-sagemaker-inference-component"] == "llama-ic-1"
    payload = request.json()
    assert payload["stream"] is True
    assert payload["parameters"]["max_new_tokens"] == 50
    assert payload["inputs"].startswith("<s>[INST] <<SYS>>\nAnswer from the passages.\n<</SYS>>\n\n[1] Mars\n")
    assert payload["inputs"].endswith("Question: How long is a day on Mars? [/INST]")


async def test_dialog_payload_style_sends_the_jumpstart_dialog(make_generator: Callable[..., LLMGenerator]) -> None:
    async def handler(exchange: Exchange) -> None:
        # LMI's jsonlines; a container that leaves out details still ends with generated_text.
        await exchange.stream(200, EVENTSTREAM_HEADERS, [payload_part(lmi_line("ok", generated_text="ok"))])

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url, payload_style="dialog")
        await generator.start()
        inp = GenerationInput(question="Hi", history=(("user", "Earlier"), ("assistant", "Reply")), system="Sys")
        tokens, done = await collect(generator.generate(inp))
    assert tokens == ["ok"]
    assert server.requests[0].json()["inputs"] == [
        [
            {"role": "system", "content": "Sys"},
            {"role": "user", "content": "Earlier"},
            {"role": "assistant", "content": "Reply"},
            {"role": "user", "content": "Hi"},
        ]
    ]
    assert done.finish_reason == "stop"
    assert done.completion_tokens == 1  # counted: no details in the stream


@pytest.mark.parametrize("exception_type", ["ModelStreamError", "InternalStreamFailure"])
async def test_mid_stream_error_comes_after_the_partial_answer(
    make_generator: Callable[..., LLMGenerator], exception_type: str
) -> None:
    async def handler(exchange: Exchange) -> None:
        frames = [
            payload_part(tgi_line("Partial")),
            payload_part(tgi_line(" answer")),
            exception_event(exception_type, "CUDA out of memory", ErrorCode="500"),
        ]
        await exchange.stream(200, EVENTSTREAM_HEADERS, frames)

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url)
        await generator.start()
        tokens, error = await until_error(generator.generate(QUESTION))
    assert "".join(tokens) == "Partial answer"
    assert isinstance(error, Unavailable)
    message = error.message
    assert "sagemaker:llama-2-7b-chat failed after 2 tokens" in message
    assert exception_type in message and "CUDA out of memory" in message
    assert len(server.requests) == 1  # never retried once tokens were sent


async def test_lmi_jsonlines_with_details_end_the_answer(make_generator: Callable[..., LLMGenerator]) -> None:
    lines = [
        lmi_line("Deep"),
        lmi_line(
            " learning", generated_text="Deep learning", details={"finish_reason": "length", "generated_tokens": 2}
        ),
    ]

    async def handler(exchange: Exchange) -> None:
        await exchange.stream(200, EVENTSTREAM_HEADERS, [payload_part(line) for line in lines])

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url)
        await generator.start()
        tokens, done = await collect(generator.generate(QUESTION))
    assert "".join(tokens) == "Deep learning"
    assert (done.finish_reason, done.completion_tokens) == ("length", 2)


@pytest.mark.parametrize(
    "ending",
    [
        pytest.param("cut", id="a frame cut off, then the connection closed"),
        pytest.param("clean", id="whole frames, the HTTP stream ended, no final line"),
    ],
)
async def test_a_stream_without_its_final_line_fails_after_the_partial_answer(
    make_generator: Callable[..., LLMGenerator], ending: str
) -> None:
    frames = [payload_part(tgi_line("A day")), payload_part(tgi_line(" on Mars")), payload_part(tgi_end(".", "x"))]

    async def handler(exchange: Exchange) -> None:
        if ending == "cut":
            body = b"".join(frames)
            await exchange.send_head(200, {**EVENTSTREAM_HEADERS, "Content-Length": str(len(body))}, chunked=False)
            exchange.writer.write(body[: len(frames[0]) + len(frames[1]) + 20])
            await exchange.writer.drain()
        else:
            await exchange.stream(200, EVENTSTREAM_HEADERS, frames[:2])

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url)
        await generator.start()
        tokens, error = await until_error(generator.generate(QUESTION))
    assert "".join(tokens) == "A day on Mars"
    assert isinstance(error, Unavailable)
    assert error.message == (
        "sagemaker:llama-2-7b-chat: the model's response stream ended early, without its final line "
        "(generated_text / details); the answer is incomplete, ask again (after 2 tokens of the answer)"
    )
    assert len(server.requests) == 1  # never retried: the caller has part of the answer


async def test_an_error_finish_reason_is_an_error_not_an_answer(make_generator: Callable[..., LLMGenerator]) -> None:
    # LMI's way of reporting a failure during generation, after the status line said 200.
    error_line = lmi_line("", generated_text="", details={"finish_reason": "error", "generated_tokens": None})

    async def handler(exchange: Exchange) -> None:
        await exchange.stream(200, EVENTSTREAM_HEADERS, [payload_part(lmi_line("One")), payload_part(error_line)])

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url)
        await generator.start()
        tokens, error = await until_error(generator.generate(QUESTION))
    assert tokens == ["One"]
    assert isinstance(error, Unavailable)
    assert "reported an error mid-stream (details) (after 1 tokens of the answer)" in error.message


async def test_a_non_streamed_answer_cut_off_is_unavailable_not_an_answer(
    make_generator: Callable[..., LLMGenerator],
) -> None:
    body = json.dumps([{"generated_text": "A day on Mars lasts 24 hours and 37 minutes."}]).encode()

    async def handler(exchange: Exchange) -> None:
        await exchange.send_head(
            200, {"Content-Type": "application/json", "Content-Length": str(len(body))}, chunked=False
        )
        exchange.writer.write(body[:20])  # then the connection closes
        await exchange.writer.drain()

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url, streaming=False)
        await generator.start()
        with pytest.raises(Unavailable) as caught:
            await collect(generator.generate(QUESTION))
    # InvokeEndpoint's Body is a stream that botocore checks against its length as it is read.
    assert caught.value.message.startswith("sagemaker:llama-2-7b-chat's answer was cut off in transit (")
    assert "IncompleteRead(20 bytes read, 48 more expected)" in caught.value.message
    assert len(server.requests) == 1  # read after the call returned: botocore does not retry it


async def test_container_error_line_mid_stream(make_generator: Callable[..., LLMGenerator]) -> None:
    async def handler(exchange: Exchange) -> None:
        lines = [tgi_line("One"), b'data:{"error":"Request failed during generation","error_type":"generation"}\n\n']
        await exchange.stream(200, EVENTSTREAM_HEADERS, [payload_part(line) for line in lines])

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url)
        await generator.start()
        with pytest.raises(Unavailable, match=r"Request failed during generation \(after 1 tokens"):
            await collect(generator.generate(QUESTION))


async def test_cancelled_slow_stream_closes_the_connection(make_generator: Callable[..., LLMGenerator]) -> None:
    written: list[int] = []

    async def handler(exchange: Exchange) -> None:
        written.append(
            await exchange.stream(
                200, EVENTSTREAM_HEADERS, (payload_part(tgi_line(" tick")) for _ in range(400)), pause=0.05
            )
        )

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url)
        await generator.start()
        received = 0

        async def consume() -> None:
            nonlocal received
            async for event in generator.generate(QUESTION):
                if isinstance(event, TokenEvent):
                    received += 1

        task = asyncio.create_task(consume())
        while received < 3:
            await asyncio.sleep(0.01)
        cancelled_at = time.monotonic()
        task.cancel()  # what gRPC does when the caller cancels or its deadline passes
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.exchanges[0].closed_by_client.wait()
        # At once: not when the read timeout (10 s here) finally wakes the blocked reader thread.
        assert time.monotonic() - cancelled_at < 1.0
        while not written:
            await asyncio.sleep(0.01)
    assert written[0] < 20, "the server kept streaming after the caller cancelled"


async def test_throttling_at_set_up_is_retried_then_resource_exhausted(
    make_generator: Callable[..., LLMGenerator],
) -> None:
    headers, body = aws_error_response("ThrottlingException", "Rate exceeded")

    async def handler(exchange: Exchange) -> None:
        await exchange.send_full(429, headers, body)

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url, attempts=2)
        await generator.start()
        with pytest.raises(ResourceExhausted, match=r"throttling requests .*ThrottlingException: Rate exceeded"):
            await collect(generator.generate(QUESTION))
    assert len(server.requests) == 2


async def test_server_error_at_set_up_is_retried_then_unavailable(
    make_generator: Callable[..., LLMGenerator],
) -> None:
    headers, body = aws_error_response("ServiceUnavailable", "try later")
    calls = 0

    async def handler(exchange: Exchange) -> None:
        nonlocal calls
        calls += 1
        await exchange.send_full(503, headers, body)

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url, attempts=2)
        await generator.start()
        with pytest.raises(Unavailable, match=r"unavailable .*after retries"):
            await collect(generator.generate(QUESTION))
    assert calls == 2


async def test_a_transient_failure_then_success_is_invisible(make_generator: Callable[..., LLMGenerator]) -> None:
    headers, body = aws_error_response("ServiceUnavailable", "warming up")

    async def handler(exchange: Exchange) -> None:
        if len(server.requests) == 1:
            await exchange.send_full(503, headers, body)
        else:
            await exchange.stream(200, EVENTSTREAM_HEADERS, [payload_part(tgi_end("Fine", "Fine"))])

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url, attempts=3)
        await generator.start()
        tokens, _ = await collect(generator.generate(QUESTION))
    assert tokens == ["Fine"]
    assert len(server.requests) == 2


async def test_missing_endpoint_is_a_failed_precondition_naming_the_setting(
    make_generator: Callable[..., LLMGenerator],
) -> None:
    headers, body = aws_error_response("ValidationError", "Endpoint llama-2-7b-chat of account 1 not found.")

    async def handler(exchange: Exchange) -> None:
        await exchange.send_full(400, headers, body)

    async with FakeHttpServer(handler) as server:
        generator = make_generator(server.url)
        await generator.start()
        with pytest.raises(FailedPrecondition, match=r"not found.*SAGEMAKER_ENDPOINT_NAME"):
            await collect(generator.generate(QUESTION))
    assert len(server.requests) == 1  # a client error is not retried
