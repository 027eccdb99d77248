"""The gateway when a downstream service is down, and its reflection (what grpcurl uses)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.clients.errors import RagchatClientError
from services.clients.gateway import GatewayClient
from services.gateway.backends.sqlite_store import SqliteCallLog, SqliteDatabase
from services.gateway.prompts import ENGLISH, KOREAN
from tests.integration.gateway.suite import Suite, start_suite

DOC = b"# Zorblax\n\nThe zorblax reactor produces 42 megawatts of power.\n"


async def uploaded(suite: Suite) -> GatewayClient:
    client = GatewayClient(suite.gateway, user="alice")
    upload = await client.upload("zorblax.md", DOC)
    async for _ in client.watch_job(upload.job_id):
        pass
    return client


async def calls_of(suite: Suite) -> SqliteCallLog:
    db = SqliteDatabase(suite.gateway_config.data_dir / "gateway.db")
    db.open()
    return SqliteCallLog(db)


@pytest.mark.parametrize(("question", "prompts"), [("How much power?", ENGLISH), ("출력은 얼마인가요?", KOREAN)])
async def test_retrieval_down_gives_a_notice_and_an_answer_without_documents(
    tmp_path: Path, question: str, prompts: object
) -> None:
    suite = await start_suite(tmp_path, RETRIEVAL_TIMEOUT_SECONDS="2")
    client = await uploaded(suite)
    try:
        await suite.servers[0].stop(0)  # retrieval
        tokens: list[str] = []
        async for event in client.chat(question):
            if event.WhichOneof("event") == "token":
                tokens.append(event.token.text)
            if event.WhichOneof("event") == "references":
                assert list(event.references.passages) == []
        assert tokens and tokens[0] == prompts.retrieval_unavailable  # type: ignore[attr-defined]
    finally:
        await client.close()
        await suite.stop()


async def test_retrieval_down_is_unavailable_when_configured_to_fail(tmp_path: Path) -> None:
    suite = await start_suite(tmp_path, RETRIEVAL_UNAVAILABLE="fail", RETRIEVAL_TIMEOUT_SECONDS="2")
    client = await uploaded(suite)
    try:
        await suite.servers[0].stop(0)
        with pytest.raises(RagchatClientError) as caught:
            await client.ask("How much power?")
        assert caught.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        assert "retrieval service" in caught.value.message
    finally:
        await client.close()
        await suite.stop()


async def test_generation_down_is_unavailable_with_a_message_and_logged_once(tmp_path: Path) -> None:
    suite = await start_suite(tmp_path)
    client = await uploaded(suite)
    try:
        await suite.servers[1].stop(0)  # generation
        with pytest.raises(RagchatClientError) as caught:
            await client.ask("How much power does the zorblax reactor produce?")
        assert caught.value.code == "UNAVAILABLE"
        assert "generation service is unavailable" in caught.value.message
        assert await client.list_conversations() == [], "no half-written turn"
    finally:
        await client.close()
        await suite.stop()
    calls = await calls_of(suite)
    chats = [r for r in await calls.for_owner("alice", 100) if r.kind == "chat"]
    assert [(r.status, r.kind) for r in chats] == [("UNAVAILABLE", "chat")]


def _reflected_methods(target: str) -> dict[str, list[str]]:
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        pool = DescriptorPool(database)
        gateway = pool.FindServiceByName("ragchat.v1.GatewayService")
        chat = pool.FindMethodByName("ragchat.v1.GatewayService.Chat")
        assert chat.output_type.full_name == "ragchat.v1.ChatEvent"
        token = chat.output_type.fields_by_name["token"].message_type
        assert token is not None and token.full_name == "ragchat.v1.TokenDelta"
        return {"services": services, "methods": [m.name for m in gateway.methods]}


async def test_reflection_lists_and_resolves_the_gateway_methods(tmp_path: Path) -> None:
    suite = await start_suite(tmp_path)
    try:
        found = await asyncio.to_thread(_reflected_methods, suite.gateway)
    finally:
        await suite.stop()
    assert "ragchat.v1.GatewayService" in found["services"]
    assert "grpc.health.v1.Health" in found["services"]
    assert set(found["methods"]) == {
        "Chat",
        "Search",
        "UploadDocument",
        "CreateDocumentUpload",
        "CommitDocumentUpload",
        "WatchIngestJob",
        "ListDocuments",
        "GetDocument",
        "DeleteDocument",
        "ListConversations",
        "GetConversation",
        "RenameConversation",
        "DeleteConversation",
    }
