"""Wiring of the gateway: the one place that picks adapters and builds the servicer."""

from __future__ import annotations

import grpc.aio
from ragchat.v1 import gateway_pb2, gateway_pb2_grpc, ingest_pb2_grpc

from services.common.channels import open_channel
from services.common.server import ServiceApp
from services.gateway.auth import Authenticator
from services.gateway.backends import CallLog, ConversationStore, Generator, Retriever
from services.gateway.backends.grpc_clients import GenerationServiceClient, RetrievalServiceClient
from services.gateway.backends.sqlite_store import SqliteCallLog, SqliteConversationStore, SqliteDatabase
from services.gateway.chat import ChatEngine
from services.gateway.config import GatewayConfig
from services.gateway.service import GatewayServicer

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


def build_app(
    config: GatewayConfig,
    *,
    retriever: Retriever | None = None,
    generator: Generator | None = None,
    conversations: ConversationStore | None = None,
    calls: CallLog | None = None,
) -> ServiceApp:
    channels: list[grpc.aio.Channel] = [
        open_channel(addr, max_message_bytes=config.server.max_message_bytes)
        for addr in (config.retrieval_addr, config.generation_addr, config.ingest_addr)
    ]
    retrieval_channel, generation_channel, ingest_channel = channels
    retrieval_client = RetrievalServiceClient(retrieval_channel)
    database = SqliteDatabase(config.data_dir / "gateway.db")
    conversations = conversations or SqliteConversationStore(database)
    calls = calls or SqliteCallLog(database)
    engine = ChatEngine(
        config,
        retriever or retrieval_client,
        generator or GenerationServiceClient(generation_channel),
        conversations,
        calls,
    )
    servicer = GatewayServicer(
        config,
        Authenticator(config.auth_mode),
        engine,
        retrieval_client,
        ingest_pb2_grpc.IngestServiceStub(ingest_channel),
        conversations,
        calls,
    )

    async def start() -> None:
        database.open()

    async def stop() -> None:
        for channel in channels:
            await channel.close()
        database.close()

    return ServiceApp(
        name="gateway",
        service_names=[SERVICE_NAME],
        register=lambda server: gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server),
        start=start,
        stop=stop,
    )
