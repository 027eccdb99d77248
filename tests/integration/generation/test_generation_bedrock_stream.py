"""Bedrock ConverseStream against a local server speaking the AWS event-stream wire format,
directly and through the generation service over real gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import grpc
import grpc.aio
import pytest
from ragchat.v1 import common_pb2, generation_pb2, generation_pb2_grpc

from services.common.aws import AwsConfig
from services.common.channels import open_channel
from services.common.config import Env
from services.common.errors import ResourceExhausted, Unavailable
from services.common.server import GrpcServer
from services.generation.backends import GenerationInput, GenerationParams, TokenEvent
from services.generation.backends.bedrock import BedrockChatModel, BedrockSettings
from services.generation.backends.llm import LLMGenerator, LLMSettings
from services.generation.config import GenerationConfig
from services.generation.server import build_app
from tests.integration.generation.generation_fakes import (
    EVENTSTREAM_HEADERS,
    Exchange,
    FakeHttpServer,
    Handler,
    aws_error_response,
    exception_event,
    json_event,
)

pytestmark = pytest.mark.usefixtures("aws_env")

MODEL_ID = "meta.llama3-8b-instruct-v1:0"


def delta(text: str) -> bytes:
    return json_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}})


def converse_frames(texts: list[str], stop: str = "end_turn", usage: tuple[int, int] = (31, 4)) -> list[bytes]:
    return [
        json_event("messageStart", {"role": "assistant"}),
        *(delta(text) for text in texts),
        json_event("contentBlockStop", {"contentBlockIndex": 0}),
        json_event("messageStop", {"stopReason": stop}),
        json_event(
            "metadata",
            {
                "usage": {"inputTokens": usage[0], "outputTokens": usage[1], "totalTokens": sum(usage)},
                "metrics": {"latencyMs": 12},
            },
        ),
    ]


def generator_for(url: str, attempts: int = 2) -> LLMGenerator:
    aws = AwsConfig("us-east-1", "standard", attempts, 2.0, 10.0, None)
    model = BedrockChatModel(BedrockSettings(MODEL_ID, endpoint_url=url), aws)
    return LLMGenerator(model, LLMSettings(context_window=8192, default_max_new_tokens=300))


async def test_converse_stream_request_tokens_usage_and_stop_reason() -> None:
    async def handler(exchange: Exchange) -> None:
        await exchange.stream(200, EVENTSTREAM_HEADERS, converse_frames(["Two", " moons", "."], stop="max_tokens"))

    async with FakeHttpServer(handler) as server:
        generator = generator_for(server.url)
        await generator.start()
        inp = GenerationInput(
            question="How many moons has Mars?",
            system="Be brief.",
            history=(("user", "Hello"), ("user", "Anyone?"), ("assistant", "Hi!")),
            params=GenerationParams(max_new_tokens=40, temperature=0.2, top_p=0.9, stop=("\n\n",)),
        )
        events = [event async for event in generator.generate(inp)]
        await generator.close()

    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == "Two moons."
    done = events[-1]
    assert not isinstance(done, TokenEvent)
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("length", 31, 4)
    assert done.model == f"bedrock:{MODEL_ID}"
    request = server.requests[0]
    assert request.path == "/model/meta.llama3-8b-instruct-v1%3A0/converse-stream"
    assert request.json() == {
        "system": [{"text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"text": "Hello\n\nAnyone?"}]},
            {"role": "assistant", "content": [{"text": "Hi!"}]},
            {"role": "user", "content": [{"text": "How many moons has Mars?"}]},
        ],
        "inferenceConfig": {"maxTokens": 40, "temperature": 0.2, "topP": 0.9, "stopSequences": ["\n\n"]},
    }


async def test_throttling_at_set_up_is_retried_then_resource_exhausted() -> None:
    headers, body = aws_error_response("ThrottlingException", "Too many tokens per minute")

    async def handler(exchange: Exchange) -> None:
        await exchange.send_full(429, headers, body)

    async with FakeHttpServer(handler) as server:
        generator = generator_for(server.url, attempts=2)
        await generator.start()
        with pytest.raises(ResourceExhausted, match="Too many tokens per minute"):
            [event async for event in generator.generate(GenerationInput(question="q"))]
        await generator.close()
    assert len(server.requests) == 2


async def test_mid_stream_model_error_after_the_partial_answer() -> None:
    async def handler(exchange: Exchange) -> None:
        frames = [
            delta("Half"),
            exception_event("modelStreamErrorException", "model crashed", originalMessage="boom"),
        ]
        await exchange.stream(200, EVENTSTREAM_HEADERS, frames)

    async with FakeHttpServer(handler) as server:
        generator = generator_for(server.url)
        await generator.start()
        tokens: list[str] = []

        async def consume() -> None:
            async for event in generator.generate(GenerationInput(question="q")):
                assert isinstance(event, TokenEvent)
                tokens.append(event.text)

        with pytest.raises(Unavailable, match=f"bedrock:{MODEL_ID} failed after 1 tokens.*model crashed"):
            await consume()
        await generator.close()
    assert tokens == ["Half"]


@pytest.mark.parametrize(
    ("kept", "missing"),
    [
        pytest.param(3, "messageStop", id="ended before messageStop"),
        pytest.param(5, "its metadata", id="ended after messageStop, before metadata"),
    ],
)
async def test_a_stream_that_ends_early_fails_after_the_partial_answer(kept: int, missing: str) -> None:
    """Bedrock always ends with messageStop then metadata: a stream that stops short is not an answer."""
    frames = converse_frames(["Two", " moons"])[:kept]  # messageStart, 2 deltas, contentBlockStop, messageStop

    async def handler(exchange: Exchange) -> None:
        await exchange.stream(200, EVENTSTREAM_HEADERS, frames)

    async with FakeHttpServer(handler) as server:
        generator = generator_for(server.url)
        await generator.start()
        tokens: list[str] = []

        async def consume() -> None:
            async for event in generator.generate(GenerationInput(question="q")):
                assert isinstance(event, TokenEvent), "the stream ended as if complete"
                tokens.append(event.text)

        with pytest.raises(Unavailable) as caught:
            await consume()
        await generator.close()
    assert "".join(tokens) == "Two moons"
    assert caught.value.message == (
        f"bedrock:{MODEL_ID}: the model's response stream ended early, before {missing}; the answer is incomplete, "
        "ask again (after 2 tokens of the answer)"
    )
    assert len(server.requests) == 1  # never retried: the caller has part of the answer


# ---------------------------------------------------------------- through the gRPC service


@asynccontextmanager
async def serve(
    handler: Handler,
) -> AsyncIterator[tuple[generation_pb2_grpc.GenerationServiceAsyncStub, FakeHttpServer]]:
    async with FakeHttpServer(handler) as fake:
        config = GenerationConfig.from_env(Env({"PORT": "0"}))
        server = GrpcServer(build_app(config, generator=generator_for(fake.url)), config.server)
        port = await server.start()
        channel = open_channel(f"127.0.0.1:{port}")
        try:
            stub = cast(
                "generation_pb2_grpc.GenerationServiceAsyncStub", generation_pb2_grpc.GenerationServiceStub(channel)
            )
            yield stub, fake
        finally:
            await channel.close()
            await server.stop(0)


REQUEST = generation_pb2.GenerateRequest(
    question="What is a lighthouse?",
    passages=[common_pb2.Passage(chunk_id="c1", title="Lights", text="A lighthouse guides ships.")],
    user_template="{context}\n\n{question}",
)


async def test_grpc_tokens_then_an_unavailable_status_naming_the_backend() -> None:
    async def handler(exchange: Exchange) -> None:
        frames = [delta("A"), delta(" tower"), exception_event("internalServerException", "dependency failed")]
        await exchange.stream(200, EVENTSTREAM_HEADERS, frames)

    async with serve(handler) as (stub, _):
        tokens: list[str] = []

        async def consume() -> None:
            async for response in stub.Generate(REQUEST):
                tokens.append(response.token)

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await consume()
        assert "".join(tokens) == "A tower"
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"bedrock:{MODEL_ID} failed after 2 tokens" in str(raised.value.details())


async def test_grpc_done_carries_usage_and_kept_passages() -> None:
    async def handler(exchange: Exchange) -> None:
        await exchange.stream(200, EVENTSTREAM_HEADERS, converse_frames(["It guides", " ships [1]."], usage=(50, 2)))

    async with serve(handler) as (stub, fake):
        responses = [response async for response in stub.Generate(REQUEST)]
        assert "".join(r.token for r in responses[:-1]) == "It guides ships [1]."
        done = responses[-1].done
        assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.finish_reason) == (50, 2, "stop")
        assert list(done.used_chunk_ids) == ["c1"]
        assert "[1] Lights\nA lighthouse guides ships." in fake.requests[0].json()["messages"][0]["content"][0]["text"]


async def test_grpc_cancel_and_deadline_close_the_bedrock_stream() -> None:
    async def handler(exchange: Exchange) -> None:
        await exchange.stream(200, EVENTSTREAM_HEADERS, (delta(" tick") for _ in range(400)), pause=0.05)

    async with serve(handler) as (stub, fake):
        call = stub.Generate(REQUEST)
        received = 0
        async for _ in call:
            received += 1
            if received == 3:
                break
        started = time.monotonic()
        call.cancel()
        await asyncio.wait_for(fake.exchanges[0].closed_by_client.wait(), 2.0)
        assert time.monotonic() - started < 1.0

        # A deadline passing mid-stream closes the model's stream too.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stub.Generate(REQUEST, timeout=0.4):
                pass
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(fake.exchanges[1].closed_by_client.wait(), 2.0)
