"""Adapters for the gateway's ports over the internal gRPC services."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import fields

import grpc
import grpc.aio
from ragchat.v1 import common_pb2, generation_pb2, generation_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc

from services.common.errors import DeadlineExceeded, RagchatError, Unavailable
from services.gateway.backends import Done, GenerationRequest, Passage, Token


def downstream_error(service: str, error: grpc.aio.AioRpcError, timeout: float | None = None) -> RagchatError:
    """The domain error for a failed call to an internal service, keeping its status and message."""
    code = error.code()
    details = error.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(f"the {service} service is unavailable ({details}); try again shortly")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        limit = f" within {timeout:g} s" if timeout else ""
        return DeadlineExceeded(f"the {service} service did not answer{limit}")
    relayed = RagchatError(details or f"{service} failed with {code.name}")
    relayed.code = code.name
    return relayed


# The domain Passage mirrors the proto message field for field.
_PASSAGE_FIELDS = tuple(f.name for f in fields(Passage))


def passage_from_proto(p: common_pb2.Passage) -> Passage:
    return Passage(**{name: getattr(p, name) for name in _PASSAGE_FIELDS})


def passage_to_proto(p: Passage) -> common_pb2.Passage:
    return common_pb2.Passage(**{name: getattr(p, name) for name in _PASSAGE_FIELDS})


_ROLES = {"user": common_pb2.ROLE_USER, "assistant": common_pb2.ROLE_ASSISTANT, "system": common_pb2.ROLE_SYSTEM}


class RetrievalServiceClient:
    name = "retrieval"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)

    async def search(self, owner: str, query: str, top_k: int, *, timeout: float) -> list[Passage]:
        try:
            response = await self._stub.Search(
                retrieval_pb2.SearchRequest(owner=owner, query=query, top_k=top_k), timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            raise downstream_error("retrieval", error, timeout) from None
        return [passage_from_proto(p) for p in response.passages]

    @property
    def stub(self) -> retrieval_pb2_grpc.RetrievalServiceStub:
        return self._stub


class GenerationServiceClient:
    name = "generation"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = generation_pb2_grpc.GenerationServiceStub(channel)

    async def generate(self, request: GenerationRequest, *, timeout: float) -> AsyncGenerator[Token | Done, None]:
        message = generation_pb2.GenerateRequest(
            system=request.system,
            history=[common_pb2.ChatMessage(role=_ROLES[role], content=content) for role, content in request.history],
            passages=[passage_to_proto(p) for p in request.passages],
            question=request.question,
            user_template=request.user_template,
            passage_template=request.passage_template,
            params=generation_pb2.GenerationParams(max_new_tokens=request.max_new_tokens),
            language=request.language,
        )
        call = self._stub.Generate(message, timeout=timeout)
        try:
            async for response in call:
                if response.HasField("done"):
                    done = response.done
                    yield Done(
                        prompt_tokens=done.usage.prompt_tokens,
                        completion_tokens=done.usage.completion_tokens,
                        finish_reason=done.finish_reason,
                        used_chunk_ids=list(done.used_chunk_ids),
                        model=done.model,
                    )
                else:
                    yield Token(response.token)
        except grpc.aio.AioRpcError as error:
            raise downstream_error("generation", error, timeout) from None
        finally:
            call.cancel()
