"""The shared server bootstrap: health lifecycle, request ids, error mapping, graceful drain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ragchat.v1 import common_pb2, generation_pb2, generation_pb2_grpc

from services.common.channels import open_channel
from services.common.config import Env, ServerConfig
from services.common.errors import InvalidArgument
from services.common.logging import request_id_var
from services.common.server import GrpcServer, ServiceApp

SERVICE = "ragchat.v1.GenerationService"


class SlowGeneration(generation_pb2_grpc.GenerationServiceServicer):
    """Streams the request id, then ten tokens 50 ms apart; rejects an empty question."""

    def __init__(self) -> None:
        self.finished = 0

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        if not request.question:
            raise InvalidArgument("question is empty")
        if request.question == "crash":
            raise RuntimeError("boom")
        yield generation_pb2.GenerateResponse(token=request_id_var.get())
        for i in range(10):
            await asyncio.sleep(0.05)
            yield generation_pb2.GenerateResponse(token=str(i))
        self.finished += 1
        yield generation_pb2.GenerateResponse(done=generation_pb2.GenerateDone(usage=common_pb2.Usage()))

    async def Summarize(
        self, request: generation_pb2.SummarizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        raise InvalidArgument("not used here")
        yield generation_pb2.GenerateResponse()


def make_server(servicer: SlowGeneration, ready: asyncio.Event | None = None) -> GrpcServer:
    async def start() -> None:
        if ready is not None:
            await ready.wait()

    app = ServiceApp(
        name="test",
        service_names=[SERVICE],
        register=lambda server: generation_pb2_grpc.add_GenerationServiceServicer_to_server(servicer, server),
        start=start,
    )
    return GrpcServer(app, ServerConfig.from_env(Env({"PORT": "0", "SHUTDOWN_GRACE_SECONDS": "5"}), 0))


async def health(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return int(response.status)


async def test_health_is_not_serving_until_the_backend_is_ready() -> None:
    ready = asyncio.Event()
    server = make_server(SlowGeneration(), ready)
    starting = asyncio.create_task(server.start())
    while server.port == 0:
        await asyncio.sleep(0.01)
    channel = open_channel(f"127.0.0.1:{server.port}")
    assert await health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await health(channel, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    ready.set()
    await starting
    assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
    assert await health(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    await channel.close()
    await server.stop(0)


async def test_request_id_and_error_mapping() -> None:
    server = make_server(SlowGeneration())
    port = await server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    stub = generation_pb2_grpc.GenerationServiceStub(channel)

    call = stub.Generate(generation_pb2.GenerateRequest(question="q"), metadata=(("x-request-id", "req-42"),))
    first = await call.read()
    assert first.token == "req-42"
    call.cancel()

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        async for _ in stub.Generate(generation_pb2.GenerateRequest(question="")):
            pass
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.value.details() == "question is empty"

    with pytest.raises(grpc.aio.AioRpcError) as crashed:
        async for _ in stub.Generate(
            generation_pb2.GenerateRequest(question="crash"), metadata=(("x-request-id", "r7"),)
        ):
            pass
    assert crashed.value.code() == grpc.StatusCode.INTERNAL
    assert "request id r7" in (crashed.value.details() or "")
    assert await health(channel) == health_pb2.HealthCheckResponse.SERVING, "still healthy after errors"
    await channel.close()
    await server.stop(0)


async def test_graceful_stop_drains_in_flight_streams_and_refuses_new_calls() -> None:
    servicer = SlowGeneration()
    server = make_server(servicer)
    port = await server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    stub = generation_pb2_grpc.GenerationServiceStub(channel)

    async def collect() -> list[str]:
        return [r.token async for r in stub.Generate(generation_pb2.GenerateRequest(question="q")) if r.token]

    in_flight = asyncio.create_task(collect())
    await asyncio.sleep(0.1)
    stopping = asyncio.create_task(server.stop())
    tokens = await in_flight
    await stopping
    assert tokens[1:] == [str(i) for i in range(10)], "the stream in flight was completed, not cut"
    assert servicer.finished == 1

    fresh = open_channel(f"127.0.0.1:{port}")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health(fresh)
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    await fresh.close()
    await channel.close()
