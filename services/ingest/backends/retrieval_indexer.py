"""Indexer adapter: the retrieval service's ``IndexDocument`` / ``DeleteDocument``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc.aio
from ragchat.v1 import retrieval_pb2, retrieval_pb2_grpc

from services.common.channels import open_channel
from services.common.errors import Unavailable
from services.ingest.backends import Chunk, ProgressCallback
from services.ingest.backends.grpc_errors import peer_error

BATCH_SIZE = 256


class RetrievalServiceIndexer:
    """Streams a document to ``RetrievalService.IndexDocument``: the header, then batches of ≤256 chunks.

    The retrieval service makes the document visible only when the stream completes, so a
    failed or cancelled call leaves nothing half-indexed.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_seconds: float = 1800.0,
        connect_timeout_seconds: float = 30.0,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self._address = address
        self._timeout = timeout_seconds
        self._connect_timeout = connect_timeout_seconds
        self._batch_size = max(1, min(batch_size, BATCH_SIZE))
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> retrieval_pb2_grpc.RetrievalServiceStub:
        if self._channel is None:
            self._channel = open_channel(self._address)
        return retrieval_pb2_grpc.RetrievalServiceStub(self._channel)

    async def _ready(self) -> None:
        """Wait (bounded) for the peer, so a job started while it boots does not fail at once."""
        assert self._channel is not None
        try:
            await asyncio.wait_for(self._channel.channel_ready(), self._connect_timeout)
        except TimeoutError:
            raise Unavailable(
                f"the retrieval service at {self._address} is not reachable "
                f"(waited {self._connect_timeout:g} s); is it running? (RETRIEVAL_ADDR)"
            ) from None

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def index(
        self,
        owner: str,
        doc_id: str,
        title: str,
        source: str,
        language: str,
        chunks: Sequence[Chunk],
        *,
        on_progress: ProgressCallback | None = None,
        content_type: str = "",
        source_uri: str = "",
    ) -> int:
        stub = self._stub()
        await self._ready()

        async def requests() -> AsyncIterator[retrieval_pb2.IndexDocumentRequest]:
            yield retrieval_pb2.IndexDocumentRequest(
                header=retrieval_pb2.IndexHeader(
                    owner=owner,
                    doc_id=doc_id,
                    title=title,
                    source=source,
                    language=language,
                    s3_uri=source_uri,
                    content_type=content_type,
                )
            )
            for first in range(0, len(chunks), self._batch_size):
                batch = chunks[first : first + self._batch_size]
                yield retrieval_pb2.IndexDocumentRequest(
                    batch=retrieval_pb2.ChunkBatch(
                        chunks=[
                            retrieval_pb2.Chunk(
                                chunk_id=chunk.chunk_id,
                                text=chunk.text,
                                page=chunk.page,
                                heading=chunk.heading,
                                char_start=chunk.char_start,
                                char_end=chunk.char_end,
                            )
                            for chunk in batch
                        ]
                    )
                )
                if on_progress is not None:
                    await on_progress(first + len(batch))

        try:
            response = await stub.IndexDocument(requests(), timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "retrieval", self._address) from None
        return int(response.chunks_indexed)

    async def delete(self, owner: str, doc_id: str) -> int:
        stub = self._stub()
        await self._ready()
        try:
            response = await stub.DeleteDocument(
                retrieval_pb2.DeleteIndexedDocumentRequest(owner=owner, doc_id=doc_id), timeout=60
            )
        except grpc.aio.AioRpcError as error:
            raise peer_error(error, "retrieval", self._address) from None
        return int(response.chunks_deleted)
