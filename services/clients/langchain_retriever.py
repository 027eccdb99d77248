"""A LangChain ``BaseRetriever`` over ragchat's retrieval service.

Each passage becomes a ``Document`` whose ``page_content`` is the passage text and whose
``metadata`` carries ``doc_id``, ``chunk_id``, ``title``, ``source``, ``page``, ``heading``,
``language`` and ``score``. Both ``invoke`` (a blocking gRPC channel) and ``ainvoke`` (an
asyncio channel, built in the calling event loop) work.

Example::

    from services.clients.langchain_retriever import RagchatRetriever

    retriever = RagchatRetriever(target="127.0.0.1:50053", owner="alice", top_k=4)
    for document in retriever.invoke("augmented XY cut"):
        print(document.metadata["title"], document.metadata["page"], document.page_content[:80])

    # In a chain:  {"context": retriever, "question": RunnablePassthrough()} | prompt | model
"""

from __future__ import annotations

from typing import Any

import grpc
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field, PrivateAttr
from ragchat.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc

from services.clients.errors import client_error
from services.clients.retrieval import MODES, RetrievalClient


def to_document(passage: common_pb2.Passage) -> Document:
    return Document(
        page_content=passage.text,
        id=passage.chunk_id or None,
        metadata={
            "doc_id": passage.doc_id,
            "chunk_id": passage.chunk_id,
            "title": passage.title,
            "source": passage.source,
            "page": passage.page,
            "heading": passage.heading,
            "language": passage.language,
            "score": passage.score,
        },
    )


class RagchatRetriever(BaseRetriever):
    """The owner's best passages from the retrieval service, as LangChain documents."""

    target: str = Field(description="host:port of the retrieval service")
    owner: str = Field(description="whose documents to search")
    top_k: int = Field(default=5, ge=1, le=100)
    mode: str = Field(default="default", description="default | keyword | dense | hybrid")
    doc_ids: list[str] = Field(default_factory=list, description="restrict to these documents")
    timeout: float = Field(default=15.0, gt=0)

    _channel: grpc.Channel | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    def _request(self, query: str) -> retrieval_pb2.SearchRequest:
        return retrieval_pb2.SearchRequest(
            owner=self.owner, query=query, top_k=self.top_k, mode=MODES[self.mode], doc_ids=self.doc_ids
        )

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target)
        stub = retrieval_pb2_grpc.RetrievalServiceStub(self._channel)
        try:
            response = stub.Search(self._request(query), timeout=self.timeout)
        except grpc.RpcError as error:
            raise client_error(error) from None
        return [to_document(p) for p in response.passages]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        async with RetrievalClient(self.target, timeout=self.timeout) as client:
            passages = await client.search(
                self.owner, query, top_k=self.top_k, mode=MODES[self.mode], doc_ids=self.doc_ids
            )
        return [to_document(p) for p in passages]

    def close(self) -> None:
        """Close the blocking channel, if one was opened."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
