"""The internal clients against the real services: retrieval client and the LangChain retriever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from services.clients.errors import RagchatClientError
from services.clients.gateway import GatewayClient, chat_options
from services.clients.langchain_retriever import RagchatRetriever
from services.clients.retrieval import RetrievalClient
from tests.integration.gateway.suite import Suite, start_suite

NOTES = (
    b"# Reactor notes\n\nThe zorblax reactor produces 42 megawatts of power.\n\n"
    b"The quibble turbine spins at 3000 revolutions per minute.\n"
)


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[tuple[Suite, str]]:
    running = await start_suite(tmp_path)
    async with GatewayClient(running.gateway, user="alice") as gateway:
        upload = await gateway.upload("notes.md", NOTES)
        async for _ in gateway.watch_job(upload.job_id):
            pass
        yield running, upload.doc_id
    await running.stop()


async def test_retrieval_client_searches_one_owners_passages(suite: tuple[Suite, str]) -> None:
    running, doc_id = suite
    async with RetrievalClient(running.retrieval) as retrieval:
        passages = await retrieval.search("alice", "quibble turbine revolutions", top_k=1)
        assert [p.doc_id for p in passages] == [doc_id] and "3000 revolutions" in passages[0].text
        assert await retrieval.search("bob", "quibble turbine revolutions") == []
        with pytest.raises(RagchatClientError) as caught:
            await retrieval.search("alice", "x", top_k=1000)
        assert caught.value.code == "INVALID_ARGUMENT"


async def test_langchain_retriever_sync_and_async(suite: tuple[Suite, str]) -> None:
    running, doc_id = suite
    retriever = RagchatRetriever(target=running.retrieval, owner="alice", top_k=2)
    assert isinstance(retriever, BaseRetriever)
    try:
        # invoke() blocks: run it off the loop that serves the services.
        documents = await asyncio.to_thread(retriever.invoke, "zorblax reactor megawatts")
        adocuments = await retriever.ainvoke("zorblax reactor megawatts")
    finally:
        retriever.close()
    for found in (documents, adocuments):
        assert found and all(isinstance(d, Document) for d in found)
        assert "42 megawatts" in found[0].page_content
        assert found[0].metadata["doc_id"] == doc_id and found[0].metadata["title"] == "Reactor notes"
        assert found[0].metadata["score"] > 0
    other = RagchatRetriever(target=running.retrieval, owner="bob")
    assert await other.ainvoke("zorblax reactor megawatts") == []
    with pytest.raises(ValueError, match="mode"):
        RagchatRetriever(target=running.retrieval, owner="alice", mode="semantic")


async def test_gateway_client_streams_and_collects_a_turn(suite: tuple[Suite, str]) -> None:
    running, doc_id = suite
    async with GatewayClient(running.gateway, user="alice") as gateway:
        kinds = [e.WhichOneof("event") async for e in gateway.chat("How fast does the quibble turbine spin?")]
        assert kinds[:2] == ["started", "condensed"] and kinds[-2:] == ["references", "done"]
        answer = await gateway.ask("How fast does the quibble turbine spin?", options=chat_options(top_k=1))
        assert "3000" in answer.text and [p.doc_id for p in answer.references] == [doc_id]
        follow = await gateway.ask("And the zorblax reactor?", conversation_id=answer.conversation_id)
        assert follow.conversation_id == answer.conversation_id and follow.condensed_question.startswith(
            "And the zorblax reactor?"
        )
        renamed = await gateway.rename_conversation(answer.conversation_id, "Turbines")
        assert renamed.title == "Turbines"
        assert (await gateway.get_conversation(answer.conversation_id)).turn_count == 2
        await gateway.delete_conversation(answer.conversation_id)
        with pytest.raises(RagchatClientError, match="NOT_FOUND"):
            await gateway.get_conversation(answer.conversation_id)
