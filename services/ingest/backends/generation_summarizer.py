"""Summarizer adapter: the generation service's ``Summarize`` stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc.aio
from ragchat.v1 import generation_pb2, generation_pb2_grpc

from services.common.channels import open_channel
from services.common.errors import Unavailable
from services.ingest.backends.grpc_errors import peer_error


class GenerationServiceSummarizer:
    """Relays each ``token`` of ``GenerationService.Summarize`` and ends at ``done``."""

    def __init__(self, address: str, *, timeout_seconds: float = 600.0, connect_timeout_seconds: float = 30.0) -> None:
        self._address = address
        self._timeout = timeout_seconds
        self._connect_timeout = connect_timeout_seconds
        self._channel: grpc.aio.Channel | None = None

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def summarize(self, title: str, sections: Sequence[str], language: str) -> AsyncIterator[str]:
        if self._channel is None:
            self._channel = open_channel(self._address)
        try:
            await asyncio.wait_for(self._channel.channel_ready(), self._connect_timeout)
        except TimeoutError:
            raise Unavailable(
                f"the generation service at {self._address} is not reachable "
                f"(waited {self._connect_timeout:g} s); is it running? (GENERATION_ADDR)"
            ) from None
        stub = generation_pb2_grpc.GenerationServiceStub(self._channel)
        request = generation_pb2.SummarizeRequest(title=title, sections=list(sections), language=language)
        call = stub.Summarize(request, timeout=self._timeout)
        try:
            async for response in call:
                kind = response.WhichOneof("event")
                if kind == "token":
                    yield response.token
                elif kind == "done":
                    if response.done.finish_reason == "error":
                        raise Unavailable(f"the generation service at {self._address} could not summarise")
                    return
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "generation", self._address) from None
        finally:
            call.cancel()
