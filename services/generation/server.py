"""Wiring: the one place that picks the generator backend and builds the service."""

from __future__ import annotations

import grpc.aio
from ragchat.v1 import generation_pb2, generation_pb2_grpc

from services.common.server import ServiceApp
from services.generation.backends import Generator
from services.generation.backends.bedrock import BedrockChatModel
from services.generation.backends.extractive import ExtractiveGenerator, ExtractiveSettings
from services.generation.backends.llm import ChatModel, LLMGenerator
from services.generation.backends.openai_compatible import OpenAIChatModel
from services.generation.backends.sagemaker import SageMakerChatModel
from services.generation.config import GenerationConfig
from services.generation.service import GenerationServicer

SERVICE_NAME = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name


def make_generator(config: GenerationConfig) -> Generator:
    """The backend named by GENERATION_BACKEND (the config has already validated the name)."""
    if config.backend == "extractive":
        return ExtractiveGenerator(
            ExtractiveSettings(
                max_sentences=config.extractive_max_sentences,
                default_max_words=config.extractive_max_words,
                summary_sentences=config.summary_sentences,
                max_candidate_sentences=config.summary_max_candidates,
            )
        )
    if config.llm is None:
        raise ValueError(f"no language-model settings for GENERATION_BACKEND={config.backend!r}")
    model: ChatModel
    if config.backend == "sagemaker" and config.sagemaker is not None and config.aws is not None:
        model = SageMakerChatModel(config.sagemaker, config.aws)
    elif config.backend == "bedrock" and config.bedrock is not None and config.aws is not None:
        model = BedrockChatModel(config.bedrock, config.aws)
    elif config.backend == "openai" and config.openai is not None:
        model = OpenAIChatModel(config.openai)
    else:
        raise ValueError(f"no generator backend named {config.backend!r}")
    return LLMGenerator(model, config.llm)


def build_app(config: GenerationConfig, *, generator: Generator | None = None) -> ServiceApp:
    backend = generator if generator is not None else make_generator(config)
    servicer = GenerationServicer(
        backend, max_new_tokens_limit=config.max_new_tokens_limit, max_passages=config.max_passages
    )

    def register(server: grpc.aio.Server) -> None:
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(servicer, server)

    return ServiceApp(
        name="generation",
        service_names=[SERVICE_NAME],
        register=register,
        start=backend.start,
        stop=backend.close,
    )
