"""A typed async client of ``ragchat.v1.GatewayService``, acting for one user.

Identity travels as metadata: ``x-ragchat-user`` (``AUTH_MODE=none``; a user id that is not
printable ASCII, such as a Korean name, goes as UTF-8 in ``x-ragchat-user-bin``) and, with a token,
``authorization: Bearer <token>`` (``AUTH_MODE=static`` or ``jwt``). Failures raise
:class:`~services.clients.errors.RagchatClientError` with the gRPC status name and message,
including an ``error`` event in the middle of a chat stream.

Example::

    import asyncio
    from services.clients.gateway import GatewayClient

    async def main() -> None:
        async with GatewayClient("127.0.0.1:50051", user="alice") as gateway:
            upload = await gateway.upload_file("paper.pdf")
            async for event in gateway.watch_job(upload.job_id):
                print(event.stage, event.current, event.total)
            answer = await gateway.ask("Which module handles variable-length inputs?")
            print(answer.text)
            for passage in answer.references:
                print(f"[{passage.citation}] {passage.title} p.{passage.page}")
            follow_up = await gateway.ask("And how is it evaluated?", conversation_id=answer.conversation_id)
            print(follow_up.condensed_question, follow_up.text)

    asyncio.run(main())

Stream the tokens yourself with :meth:`GatewayClient.chat`::

    async for event in gateway.chat("What is BM25?", options=chat_options(top_k=3, references=False)):
        if event.WhichOneof("event") == "token":
            print(event.token.text, end="", flush=True)
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from ragchat.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, ingest_pb2, retrieval_pb2

from services.clients.errors import GatewayUnreachable, RagchatClientError, client_error
from services.common.channels import open_channel
from services.common.client_streams import send_stream
from services.common.identity import AUTHORIZATION_KEY, user_metadata

CHUNK_BYTES = 256 * 1024
TERMINAL_STAGES = frozenset({common_pb2.INGEST_STAGE_DONE, common_pb2.INGEST_STAGE_FAILED})


def guess_content_type(path: Path) -> str:
    """The content type of a file by its name (the ingest service sniffs the bytes anyway)."""
    guessed, _ = mimetypes.guess_type(path.name)
    if guessed:
        return guessed
    if path.suffix.lower() in {".md", ".markdown"}:
        return "text/markdown"
    return "application/octet-stream"


def chat_options(
    *,
    rag: bool | None = None,
    references: bool | None = None,
    top_k: int | None = None,
    conversation_mode: bool | None = None,
) -> gateway_pb2.ChatOptions:
    """Chat options with only the given fields set (the others take the server's defaults)."""
    options = gateway_pb2.ChatOptions()
    if rag is not None:
        options.rag = rag
    if references is not None:
        options.references = references
    if top_k is not None:
        options.top_k = top_k
    if conversation_mode is not None:
        options.conversation_mode = conversation_mode
    return options


@dataclass
class Answer:
    """One finished chat turn."""

    conversation_id: str
    request_id: str
    turn_id: str
    condensed_question: str
    text: str
    references: list[common_pb2.Passage] = field(default_factory=list)
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)


def _metadata_value(name: str, value: str) -> str:
    # gRPC metadata values of text keys must be printable ASCII.
    if not value or not all(32 <= ord(ch) < 127 for ch in value):
        raise RagchatClientError("INVALID_ARGUMENT", f"{name} must be non-empty printable ASCII, got {value!r}")
    return value


class GatewayClient:
    """Async client of the gateway for one user (the CLI, the web UI, evaluation and tests use it).

    The channel opens at the first call, inside the running event loop. Failures raise
    :class:`RagchatClientError`; :class:`GatewayUnreachable` when no connection could be made.
    """

    def __init__(
        self,
        target: str,
        *,
        user: str | None = None,
        token: str | None = None,
        timeout: float = 60.0,
        chat_timeout: float = 600.0,
    ) -> None:
        metadata: list[tuple[str, str | bytes]] = []
        if user is not None:
            if not user.strip():
                raise RagchatClientError("INVALID_ARGUMENT", "the user id is empty")
            metadata.append(user_metadata(user))
        if token:
            metadata.append((AUTHORIZATION_KEY, "Bearer " + _metadata_value("token", token)))
        self.target = target
        self.user = user
        self._metadata = tuple(metadata)
        self._timeout = timeout
        self._chat_timeout = chat_timeout
        # Opened at the first call, inside the running event loop (the client may be made outside one).
        self._channel: grpc.aio.Channel | None = None
        self._gateway: Any = None

    def _stub(self) -> Any:
        if self._gateway is None:
            self._channel = open_channel(self.target)
            self._gateway = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        return self._gateway

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._gateway = self._channel, None, None
            await channel.close()

    def _error(self, error: grpc.aio.AioRpcError) -> RagchatClientError:
        """The client error of a failed call: :class:`GatewayUnreachable` when no connection was made."""
        if error.code() == grpc.StatusCode.UNAVAILABLE and not self._connected():
            return GatewayUnreachable(self.target, error.details() or "")
        return client_error(error)

    def _connected(self) -> bool:
        if self._channel is None:
            return False
        return bool(self._channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY)

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- chat and search ------------------------------------------------------------------

    async def chat(
        self, question: str, *, conversation_id: str | None = "", options: gateway_pb2.ChatOptions | None = None
    ) -> AsyncIterator[gateway_pb2.ChatEvent]:
        """The events of one turn: started, condensed, token..., references, done.

        An ``error`` event is raised as :class:`RagchatClientError` after the events before it.
        """
        request = gateway_pb2.ChatRequest(question=question, conversation_id=conversation_id or "", options=options)
        call = self._stub().Chat(request, metadata=self._metadata, timeout=self._chat_timeout)
        try:
            async for event in call:
                if event.WhichOneof("event") == "error":
                    raise RagchatClientError(event.error.code or "UNKNOWN", event.error.message)
                yield event
        except grpc.aio.AioRpcError as error:
            raise self._error(error) from None
        finally:
            call.cancel()

    async def ask(
        self, question: str, *, conversation_id: str = "", options: gateway_pb2.ChatOptions | None = None
    ) -> Answer:
        """One whole turn, collected."""
        answer = Answer(conversation_id="", request_id="", turn_id="", condensed_question="", text="")
        pieces: list[str] = []
        async for event in self.chat(question, conversation_id=conversation_id, options=options):
            match event.WhichOneof("event"):
                case "started":
                    answer.conversation_id = event.started.conversation_id
                    answer.request_id = event.started.request_id
                    answer.turn_id = event.started.turn_id
                case "condensed":
                    answer.condensed_question = event.condensed.question
                case "token":
                    pieces.append(event.token.text)
                case "references":
                    answer.references = list(event.references.passages)
                case "done":
                    answer.finish_reason = event.done.finish_reason
                    answer.prompt_tokens = event.done.usage.prompt_tokens
                    answer.completion_tokens = event.done.usage.completion_tokens
                    answer.latency_ms = dict(event.done.latency_ms)
        answer.text = "".join(pieces)
        return answer

    async def search(
        self,
        query: str,
        *,
        top_k: int = 0,
        mode: retrieval_pb2.SearchMode.ValueType = retrieval_pb2.SEARCH_MODE_UNSPECIFIED,
        doc_ids: Sequence[str] = (),
    ) -> list[common_pb2.Passage]:
        """The user's best passages for ``query``, best first."""
        request = gateway_pb2.GatewaySearchRequest(query=query, top_k=top_k, mode=mode, doc_ids=list(doc_ids))
        try:
            response = await self._stub().Search(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise self._error(error) from None
        return list(response.passages)

    # -- documents ------------------------------------------------------------------------

    async def upload(
        self, filename: str, data: bytes, *, content_type: str = "", title: str = ""
    ) -> ingest_pb2.UploadResponse:
        """Upload bytes; returns once they are stored and a job is queued (or a duplicate found)."""

        async def parts() -> AsyncIterator[gateway_pb2.UploadDocumentRequest]:
            header = gateway_pb2.UploadDocumentHeader(
                filename=filename, content_type=content_type, size_bytes=len(data), title=title
            )
            yield gateway_pb2.UploadDocumentRequest(header=header)
            for start in range(0, len(data), CHUNK_BYTES):
                yield gateway_pb2.UploadDocumentRequest(data=data[start : start + CHUNK_BYTES])

        return await self._send_upload(parts())

    async def _send_upload(self, parts: AsyncIterator[gateway_pb2.UploadDocumentRequest]) -> ingest_pb2.UploadResponse:
        try:
            # send_stream writes the parts itself: when the gateway refuses the file while it is still
            # being sent, the error is the gateway's reason, not gRPC's INTERNAL (grpc/grpc#36066).
            # No deadline: the transfer takes as long as the file needs.
            call = self._stub().UploadDocument(metadata=self._metadata)
            response: ingest_pb2.UploadResponse = await send_stream(call, parts)
        except grpc.aio.AioRpcError as error:
            raise self._error(error) from None
        return response

    async def upload_file(
        self, path: str | Path, *, title: str = "", content_type: str | None = None
    ) -> ingest_pb2.UploadResponse:
        """Stream a file from disk (a header, then 256 KiB pieces: memory stays flat whatever its size).
        Returns once it is queued. An unreadable file fails here, as an OSError."""
        file = Path(path)
        size = (await asyncio.to_thread(file.stat)).st_size
        header = gateway_pb2.UploadDocumentHeader(
            filename=file.name,
            content_type=content_type or guess_content_type(file),
            size_bytes=size,
            title=title,
        )
        handle = await asyncio.to_thread(file.open, "rb")

        async def parts() -> AsyncIterator[gateway_pb2.UploadDocumentRequest]:
            yield gateway_pb2.UploadDocumentRequest(header=header)
            while piece := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                yield gateway_pb2.UploadDocumentRequest(data=piece)

        try:
            return await self._send_upload(parts())
        finally:
            handle.close()

    async def create_upload(self, header: gateway_pb2.UploadDocumentHeader) -> ingest_pb2.CreateUploadResponse:
        """A presigned URL to PUT the file to (FAILED_PRECONDITION when the store takes no direct uploads)."""
        created: ingest_pb2.CreateUploadResponse = await self._unary(
            self._stub().CreateDocumentUpload, gateway_pb2.CreateDocumentUploadRequest(header=header)
        )
        return created

    async def commit_upload(self, upload_id: str) -> ingest_pb2.UploadResponse:
        """After the PUT: the gateway checks the stored object and queues its ingest job."""
        committed: ingest_pb2.UploadResponse = await self._unary(
            self._stub().CommitDocumentUpload, gateway_pb2.CommitDocumentUploadRequest(upload_id=upload_id)
        )
        return committed

    async def watch_job(self, job_id: str) -> AsyncIterator[common_pb2.IngestEvent]:
        """Every event of an ingest job so far, then live ones, until DONE or FAILED."""
        call = self._stub().WatchIngestJob(gateway_pb2.WatchIngestJobRequest(job_id=job_id), metadata=self._metadata)
        try:
            async for event in call:
                yield event
                if event.stage in TERMINAL_STAGES:
                    return
        except grpc.aio.AioRpcError as error:
            raise self._error(error) from None
        finally:
            call.cancel()

    async def list_documents(self) -> list[common_pb2.Document]:
        response = await self._unary(self._stub().ListDocuments, gateway_pb2.ListUserDocumentsRequest())
        return list(response.documents)

    async def get_document(self, doc_id: str) -> common_pb2.Document:
        document: common_pb2.Document = await self._unary(
            self._stub().GetDocument, gateway_pb2.DocumentRef(doc_id=doc_id)
        )
        return document

    async def delete_document(self, doc_id: str) -> str:
        """Delete the document; returns its id."""
        response: ingest_pb2.DeleteDocumentResponse = await self._unary(
            self._stub().DeleteDocument, gateway_pb2.DocumentRef(doc_id=doc_id)
        )
        return response.doc_id or doc_id

    # -- conversations --------------------------------------------------------------------

    async def list_conversations(self, limit: int = 0) -> list[gateway_pb2.Conversation]:
        response = await self._unary(self._stub().ListConversations, gateway_pb2.ListConversationsRequest(limit=limit))
        return list(response.conversations)

    async def get_conversation(self, conversation_id: str) -> gateway_pb2.Conversation:
        conversation: gateway_pb2.Conversation = await self._unary(
            self._stub().GetConversation, gateway_pb2.ConversationRef(conversation_id=conversation_id)
        )
        return conversation

    async def rename_conversation(self, conversation_id: str, title: str) -> gateway_pb2.Conversation:
        conversation: gateway_pb2.Conversation = await self._unary(
            self._stub().RenameConversation,
            gateway_pb2.RenameConversationRequest(conversation_id=conversation_id, title=title),
        )
        return conversation

    async def delete_conversation(self, conversation_id: str) -> str:
        """Delete the conversation; returns its id."""
        response: gateway_pb2.DeleteConversationResponse = await self._unary(
            self._stub().DeleteConversation, gateway_pb2.ConversationRef(conversation_id=conversation_id)
        )
        return response.conversation_id or conversation_id

    async def _unary(self, method: grpc.aio.UnaryUnaryMultiCallable, request: object) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise self._error(error) from None
