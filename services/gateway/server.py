"""Wiring of the gateway: the one place that picks adapters and builds the servicer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc.aio
from ragchat.v1 import gateway_pb2, gateway_pb2_grpc, ingest_pb2_grpc

from services.common.aws import make_client
from services.common.channels import open_channel
from services.common.server import ServiceApp
from services.gateway.auth import Authenticator, make_authenticator
from services.gateway.backends import CallLog, ConversationStore, Generator, Retriever
from services.gateway.backends.grpc_clients import GenerationServiceClient, RetrievalServiceClient
from services.gateway.chat import ChatEngine
from services.gateway.config import GatewayConfig
from services.gateway.service import GatewayServicer

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


def _history(
    config: GatewayConfig,
) -> tuple[ConversationStore, CallLog, Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """The configured conversation store and call log, with how to open and close them."""
    if config.history_backend == "dynamodb":
        from services.gateway.backends.dynamo_store import DynamoCallLog, DynamoConversationStore

        client = make_client("dynamodb", config.aws)
        dynamo_conversations = DynamoConversationStore(
            client, config.dynamo.conversations_table, calls_table=config.dynamo.calls_table
        )
        dynamo_calls = DynamoCallLog(client, config.dynamo.calls_table)

        async def open_dynamo() -> None:
            # Fails the start (health stays NOT_SERVING) when a table is missing or not allowed.
            await dynamo_conversations.open()
            await dynamo_calls.open()

        async def close_dynamo() -> None:
            client.close()

        return dynamo_conversations, dynamo_calls, open_dynamo, close_dynamo

    from services.gateway.backends.sqlite_store import SqliteCallLog, SqliteConversationStore, SqliteDatabase

    database = SqliteDatabase(config.data_dir / "gateway.db")

    async def open_sqlite() -> None:
        database.open()

    async def close_sqlite() -> None:
        database.close()

    return SqliteConversationStore(database), SqliteCallLog(database), open_sqlite, close_sqlite


def build_app(
    config: GatewayConfig,
    *,
    retriever: Retriever | None = None,
    generator: Generator | None = None,
    conversations: ConversationStore | None = None,
    calls: CallLog | None = None,
    authenticator: Authenticator | None = None,
) -> ServiceApp:
    """The gateway with the configured adapters; tests pass fakes for any of them.

    Raises ConfigError when the authenticator cannot be built (an unreadable tokens file).
    """
    channels: list[grpc.aio.Channel] = [
        open_channel(addr, max_message_bytes=config.server.max_message_bytes)
        for addr in (config.retrieval_addr, config.generation_addr, config.ingest_addr)
    ]
    retrieval_channel, generation_channel, ingest_channel = channels
    retrieval_client = RetrievalServiceClient(retrieval_channel)
    configured_conversations, configured_calls, open_history, close_history = _history(config)
    conversations = conversations or configured_conversations
    calls = calls or configured_calls
    engine = ChatEngine(
        config,
        retriever or retrieval_client,
        generator or GenerationServiceClient(generation_channel),
        conversations,
        calls,
    )
    servicer = GatewayServicer(
        config,
        authenticator or make_authenticator(config),
        engine,
        retrieval_client,
        ingest_pb2_grpc.IngestServiceStub(ingest_channel),
        conversations,
        calls,
    )

    async def stop() -> None:
        for channel in channels:
            await channel.close()
        await close_history()

    return ServiceApp(
        name="gateway",
        service_names=[SERVICE_NAME],
        register=lambda server: gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server),
        start=open_history,
        stop=stop,
    )
