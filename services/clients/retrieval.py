"""A typed async client of the internal ``ragchat.v1.RetrievalService``.

The retrieval service trusts its caller to name the owner (it is internal: only the gateway
and ingest reach it), so this client is for trusted tools: evaluation, notebooks, batch jobs.

Example::

    import asyncio
    from services.clients.retrieval import RetrievalClient

    async def main() -> None:
        async with RetrievalClient("127.0.0.1:50053") as retrieval:
            for passage in await retrieval.search("alice", "augmented XY cut", top_k=3):
                print(f"{passage.score:.2f} {passage.title} p.{passage.page}: {passage.text[:80]}")

    asyncio.run(main())
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TypeAlias

import grpc.aio
from ragchat.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc

from services.clients.errors import client_error
from services.common.channels import open_channel

SearchMode: TypeAlias = retrieval_pb2.SearchMode.ValueType

MODES: dict[str, SearchMode] = {
    "default": retrieval_pb2.SEARCH_MODE_UNSPECIFIED,
    "keyword": retrieval_pb2.SEARCH_MODE_KEYWORD,
    "dense": retrieval_pb2.SEARCH_MODE_DENSE,
    "hybrid": retrieval_pb2.SEARCH_MODE_HYBRID,
}


class RetrievalClient:
    """Async client of the retrieval service. Build it inside the running event loop."""

    def __init__(self, target: str, *, timeout: float = 15.0) -> None:
        self.target = target
        self._timeout = timeout
        self._channel = open_channel(target)
        self._stub = retrieval_pb2_grpc.RetrievalServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> RetrievalClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def search(
        self,
        owner: str,
        query: str,
        *,
        top_k: int = 0,
        mode: SearchMode = retrieval_pb2.SEARCH_MODE_UNSPECIFIED,
        doc_ids: Sequence[str] = (),
    ) -> list[common_pb2.Passage]:
        """``owner``'s best passages for ``query``, best first (``top_k`` 0: the service default)."""
        request = retrieval_pb2.SearchRequest(owner=owner, query=query, top_k=top_k, mode=mode, doc_ids=list(doc_ids))
        try:
            response = await self._stub.Search(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise client_error(error) from None
        return list(response.passages)
