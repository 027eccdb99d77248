"""The servicer against a fake index that records its effects: validation, defaults, streaming."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc.aio
import pytest
from ragchat.v1 import retrieval_pb2

from services.common.errors import Cancelled, InvalidArgument, RagchatError
from services.retrieval.backends import ChunkRecord, DocumentHeader, Passage, SearchMode
from services.retrieval.service import RetrievalService


class FakeContext:
    """The part of grpc.aio.ServicerContext the servicer uses; ``cancelled`` mimics a cancelled call."""

    def __init__(self, *, cancelled: bool = False) -> None:
        self.cancelled = cancelled
        self.initial_metadata_sent = 0

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        if self.cancelled:
            raise grpc.aio.InternalError("Failed grpc_call_start_batch")
        self.initial_metadata_sent += 1


CONTEXT = cast(grpc.aio.ServicerContext, FakeContext())


@dataclass
class FakeIndex:
    """Implements SearchIndex; records every call, answers searches with ``results``."""

    results: list[Passage] = field(default_factory=list)
    searches: list[tuple[str, str, int, list[str], SearchMode]] = field(default_factory=list)
    indexed: list[tuple[DocumentHeader, list[ChunkRecord]]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    delete_count: int = 0

    @property
    def backend(self) -> str:
        return "fake"

    async def search(
        self, owner: str, query: str, top_k: int, doc_ids: Sequence[str], mode: SearchMode
    ) -> list[Passage]:
        self.searches.append((owner, query, top_k, list(doc_ids), mode))
        return self.results

    async def index_document(self, header: DocumentHeader, chunks: Sequence[ChunkRecord]) -> int:
        self.indexed.append((header, list(chunks)))
        return len(chunks)

    async def delete_document(self, owner: str, doc_id: str) -> int:
        self.deleted.append((owner, doc_id))
        return self.delete_count

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
def index() -> FakeIndex:
    return FakeIndex()


@pytest.fixture
def service(index: FakeIndex) -> RetrievalService:
    return RetrievalService(index, index, default_top_k=5, max_chunks_per_document=4)


def search_request(**fields: Any) -> retrieval_pb2.SearchRequest:
    base: dict[str, Any] = {"owner": "alice", "query": "apples"}
    base.update(fields)
    return retrieval_pb2.SearchRequest(**base)


def header(owner: str = "alice", doc_id: str = "d1") -> retrieval_pb2.IndexDocumentRequest:
    return retrieval_pb2.IndexDocumentRequest(
        header=retrieval_pb2.IndexHeader(owner=owner, doc_id=doc_id, title="T", source="t.txt", language="en")
    )


def batch(*texts: str, start: int = 0) -> retrieval_pb2.IndexDocumentRequest:
    return retrieval_pb2.IndexDocumentRequest(
        batch=retrieval_pb2.ChunkBatch(
            chunks=[
                retrieval_pb2.Chunk(chunk_id=f"c{start + i}", text=text, page=i + 1, heading="H", char_end=len(text))
                for i, text in enumerate(texts)
            ]
        )
    )


async def stream(messages: Iterable[retrieval_pb2.IndexDocumentRequest]) -> AsyncIterator[Any]:
    for message in messages:
        yield message


async def test_search_maps_the_request_and_the_passages(service: RetrievalService, index: FakeIndex) -> None:
    index.results = [
        Passage("c1", "d1", "Title", "f.pdf", 3, "text", 1.5, "Heading", 10, 20, "en"),
    ]
    response = await service.Search(
        search_request(top_k=7, doc_ids=["d1", "d2", "d1"], mode=retrieval_pb2.SEARCH_MODE_KEYWORD), CONTEXT
    )
    assert index.searches == [("alice", "apples", 7, ["d1", "d2"], SearchMode.KEYWORD)]
    assert response.backend == "fake"
    [passage] = response.passages
    assert (passage.chunk_id, passage.doc_id, passage.title, passage.source, passage.page) == (
        "c1",
        "d1",
        "Title",
        "f.pdf",
        3,
    )
    assert (passage.text, passage.score, passage.heading, passage.char_start, passage.char_end) == (
        "text",
        1.5,
        "Heading",
        10,
        20,
    )
    assert passage.language == "en"


async def test_top_k_zero_means_the_configured_default(service: RetrievalService, index: FakeIndex) -> None:
    await service.Search(search_request(), CONTEXT)
    await service.Search(search_request(top_k=100), CONTEXT)
    assert [call[2] for call in index.searches] == [5, 100]


@pytest.mark.parametrize(
    ("proto_mode", "mode"),
    [
        (retrieval_pb2.SEARCH_MODE_UNSPECIFIED, SearchMode.AUTO),
        (retrieval_pb2.SEARCH_MODE_KEYWORD, SearchMode.KEYWORD),
        (retrieval_pb2.SEARCH_MODE_DENSE, SearchMode.DENSE),
        (retrieval_pb2.SEARCH_MODE_HYBRID, SearchMode.HYBRID),
    ],
)
async def test_modes_are_passed_to_the_retriever(
    service: RetrievalService, index: FakeIndex, proto_mode: Any, mode: SearchMode
) -> None:
    await service.Search(search_request(mode=proto_mode), CONTEXT)
    assert index.searches[0][4] is mode


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"owner": ""}, "owner is required"),
        ({"owner": "  "}, "owner is required"),
        ({"query": ""}, "query is empty"),
        ({"query": " \n\t"}, "query is empty"),
        ({"top_k": 101}, "top_k must be between 1 and 100 (0 means the default), got 101"),
        ({"top_k": -1}, "top_k must be between 1 and 100 (0 means the default), got -1"),
        ({"mode": 9}, "unknown search mode 9"),
        ({"doc_ids": ["d1", ""]}, "doc_ids must not contain an empty id"),
    ],
)
async def test_bad_searches_are_invalid_arguments(
    service: RetrievalService, index: FakeIndex, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=f"^{re.escape(message)}$"):
        await service.Search(search_request(**fields), CONTEXT)
    assert index.searches == []


async def test_index_document_collects_every_batch_then_writes_once(
    service: RetrievalService, index: FakeIndex
) -> None:
    response = await service.IndexDocument(stream([header(), batch("one", "two"), batch("three", start=2)]), CONTEXT)
    assert (response.doc_id, response.chunks_indexed) == ("d1", 3)
    [(written_header, written_chunks)] = index.indexed
    assert written_header == DocumentHeader("alice", "d1", "T", "t.txt", "en")
    assert written_chunks == [
        ChunkRecord("c0", "one", 1, "H", 0, 3),
        ChunkRecord("c1", "two", 2, "H", 0, 3),
        ChunkRecord("c2", "three", 1, "H", 0, 5),
    ]


async def test_a_stream_the_client_cancelled_is_not_written(service: RetrievalService, index: FakeIndex) -> None:
    context = cast(grpc.aio.ServicerContext, FakeContext(cancelled=True))
    with pytest.raises(Cancelled, match=r"^the client cancelled the stream of document 'd1'; nothing was indexed$"):
        await service.IndexDocument(stream([header(), batch("one")]), context)
    assert index.indexed == []


async def test_a_header_without_chunks_indexes_an_empty_document(service: RetrievalService, index: FakeIndex) -> None:
    response = await service.IndexDocument(stream([header()]), CONTEXT)
    assert response.chunks_indexed == 0
    assert index.indexed == [(DocumentHeader("alice", "d1", "T", "t.txt", "en"), [])]


async def test_an_aborted_stream_writes_nothing(service: RetrievalService, index: FakeIndex) -> None:
    async def broken() -> AsyncIterator[retrieval_pb2.IndexDocumentRequest]:
        yield header()
        yield batch("one")
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await service.IndexDocument(broken(), CONTEXT)
    assert index.indexed == []


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "the stream carried no header: send the header (owner, doc_id) first"),
        ([batch("x")], "the first message must carry the header (owner, doc_id)"),
        ([header(), batch("x"), header()], "header must be sent once, as the first message"),
        ([header(), header()], "header must be sent once, as the first message"),
        ([header(owner="")], "header.owner is required"),
        ([header(doc_id="")], "header.doc_id is required"),
        ([header(), batch("ok", " ")], "chunk 1 ('c1') has empty text"),
        ([header(), batch("a", "b", "c"), batch("d", "e", start=3)], "document 'd1' has more than 4 chunks"),
        ([header(), retrieval_pb2.IndexDocumentRequest()], "a message carries neither header nor batch"),
    ],
)
async def test_bad_index_streams_are_invalid_arguments(
    service: RetrievalService, index: FakeIndex, messages: list[retrieval_pb2.IndexDocumentRequest], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=f"^{re.escape(message)}"):
        await service.IndexDocument(stream(messages), CONTEXT)
    assert index.indexed == []


async def test_exactly_the_chunk_limit_is_accepted(service: RetrievalService, index: FakeIndex) -> None:
    response = await service.IndexDocument(stream([header(), batch("a", "b"), batch("c", "d", start=2)]), CONTEXT)
    assert response.chunks_indexed == 4


async def test_delete_passes_through_and_returns_the_count(service: RetrievalService, index: FakeIndex) -> None:
    index.delete_count = 3
    response = await service.DeleteDocument(
        retrieval_pb2.DeleteIndexedDocumentRequest(owner="alice", doc_id="d1"), CONTEXT
    )
    assert response.chunks_deleted == 3
    assert index.deleted == [("alice", "d1")]


@pytest.mark.parametrize(
    ("owner", "doc_id", "message"),
    [("", "d1", "owner is required"), ("alice", " ", "doc_id is required")],
)
async def test_bad_deletes_are_invalid_arguments(
    service: RetrievalService, index: FakeIndex, owner: str, doc_id: str, message: str
) -> None:
    with pytest.raises(RagchatError, match=f"^{message}$") as raised:
        await service.DeleteDocument(retrieval_pb2.DeleteIndexedDocumentRequest(owner=owner, doc_id=doc_id), CONTEXT)
    assert raised.value.code == "INVALID_ARGUMENT"
    assert index.deleted == []
