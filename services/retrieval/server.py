"""Wires the retrieval service: the one place that picks and builds its backends."""

from __future__ import annotations

import grpc.aio
from ragchat.v1 import retrieval_pb2, retrieval_pb2_grpc

from services.common.server import ServiceApp
from services.retrieval.backends import SearchIndex
from services.retrieval.config import RetrievalConfig
from services.retrieval.service import RetrievalService

SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name


def _default_index(config: RetrievalConfig) -> SearchIndex:
    if config.backend == "local":
        from services.retrieval.backends.local_index import LocalIndex
        from services.retrieval.embedding import OnnxEmbedder

        embedder = OnnxEmbedder(config.embedding_model_dir, threads=config.embedding_threads) if config.dense else None
        return LocalIndex(
            config.index_path,
            embedder=embedder,
            dense_weight=config.dense_weight,
            ann_threshold=config.ann_threshold,
        )
    if config.backend == "kendra":
        from services.retrieval.backends.kendra import KendraIndex

        assert config.kendra is not None and config.aws is not None
        return KendraIndex(config.kendra, config.aws)
    if config.backend == "bedrock-kb":
        from services.retrieval.backends.bedrock_kb import BedrockKbIndex

        assert config.bedrock_kb is not None and config.aws is not None
        return BedrockKbIndex(config.bedrock_kb, config.aws)
    raise ValueError(f"no retrieval backend named {config.backend!r}")


def build_app(config: RetrievalConfig, *, index: SearchIndex | None = None) -> ServiceApp:
    """The service's app; ``index`` replaces the configured backend (tests pass fakes)."""
    backend = index if index is not None else _default_index(config)
    servicer = RetrievalService(
        backend,
        backend,
        default_top_k=config.default_top_k,
        max_chunks_per_document=config.max_chunks_per_document,
    )

    def register(server: grpc.aio.Server) -> None:
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(servicer, server)

    return ServiceApp(
        name="retrieval",
        service_names=[SERVICE_NAME],
        register=register,
        start=backend.open,
        stop=backend.close,
    )
