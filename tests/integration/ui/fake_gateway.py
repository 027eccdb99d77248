"""A fake GatewayService on a real gRPC server, recording what it was sent.

It runs on its own event loop in a thread, so synchronous tests can drive ``ragchat`` through
``main([...])`` (which calls ``asyncio.run``) while it serves.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc.aio
from ragchat.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, ingest_pb2, retrieval_pb2

from services.common.config import ServerConfig
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from services.common.interceptors import metadata_value
from services.common.server import GrpcServer, ServiceApp

SERVICE = "ragchat.v1.GatewayService"

PASSAGES = [
    common_pb2.Passage(
        chunk_id="c1",
        doc_id="doc-a",
        title="Alpaca Handbook",
        source="alpaca.pdf",
        page=3,
        text="Alpacas are kept in herds. " * 30,
        score=0.91,
    ),
    common_pb2.Passage(
        chunk_id="c2", doc_id="doc-b", title="Llama Notes", source="llama.md", page=0, text="Llamas hum.", score=0.42
    ),
]
ANSWER_TOKENS = ["Alpacas ", "live ", "in ", "herds [1]."]


@dataclass
class Call:
    method: str
    user: str | None
    authorization: str | None


@dataclass
class Upload:
    filename: str
    content_type: str
    size_bytes: int
    title: str
    data: bytes
    chunks: int


@dataclass
class FakeGateway(gateway_pb2_grpc.GatewayServiceServicer):
    """Behaviour keyed on inputs: ``*.bad`` files fail to ingest, ``huge*`` files are refused,
    the same bytes twice are a duplicate; the question ``fail`` breaks mid-answer; the query
    ``backend down`` is UNAVAILABLE from the gateway itself."""

    calls: list[Call] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    chat_requests: list[gateway_pb2.ChatRequest] = field(default_factory=list)
    search_requests: list[gateway_pb2.GatewaySearchRequest] = field(default_factory=list)
    documents: dict[str, dict[str, common_pb2.Document]] = field(default_factory=dict)
    jobs: dict[str, list[common_pb2.IngestEvent]] = field(default_factory=dict)
    hashes: dict[tuple[str, str], str] = field(default_factory=dict)

    def _record(self, method: str, context: grpc.aio.ServicerContext) -> str:
        metadata = context.invocation_metadata()
        user = metadata_value(metadata, "x-ragchat-user")
        self.calls.append(Call(method, user, metadata_value(metadata, "authorization")))
        return user or ""

    def users(self, method: str) -> list[str | None]:
        return [call.user for call in self.calls if call.method == method]

    async def UploadDocument(
        self, request_iterator: AsyncIterator[gateway_pb2.UploadDocumentRequest], context: grpc.aio.ServicerContext
    ) -> ingest_pb2.UploadResponse:
        user = self._record("UploadDocument", context)
        header: gateway_pb2.UploadDocumentHeader | None = None
        data = bytearray()
        chunks = 0
        async for part in request_iterator:
            if part.WhichOneof("part") == "header":
                header = part.header
            else:
                data += part.data
                chunks += 1
        if header is None:
            raise InvalidArgument("the first message must carry the header")
        if header.filename.startswith("huge"):
            raise ResourceExhausted(f"{header.filename} is larger than the 1 MiB upload limit")
        self.uploads.append(
            Upload(header.filename, header.content_type, header.size_bytes, header.title, bytes(data), chunks)
        )
        digest = hashlib.sha256(data).hexdigest()
        existing = self.hashes.get((user, digest))
        if existing is not None:
            return ingest_pb2.UploadResponse(
                job_id="", doc_id=existing, duplicate=True, document=self.documents[user][existing]
            )
        n = len(self.uploads)
        doc_id, job_id = f"doc-{n}", f"job-{n}"
        title = header.title or header.filename.rsplit(".", 1)[0].title()
        if header.filename.endswith(".bad"):
            self.jobs[job_id] = [
                common_pb2.IngestEvent(job_id=job_id, doc_id=doc_id, stage=common_pb2.INGEST_STAGE_QUEUED),
                common_pb2.IngestEvent(
                    job_id=job_id,
                    doc_id=doc_id,
                    stage=common_pb2.INGEST_STAGE_FAILED,
                    message="unsupported file type: .bad",
                    error_code="INVALID_ARGUMENT",
                ),
            ]
            return ingest_pb2.UploadResponse(job_id=job_id, doc_id=doc_id)
        document = common_pb2.Document(
            doc_id=doc_id,
            title=title,
            source=header.filename,
            pages=2,
            chunks=3,
            status=common_pb2.DOCUMENT_STATUS_READY,
            summary=f"A summary of {title}.",
            size_bytes=len(data),
        )
        self.documents.setdefault(user, {})[doc_id] = document
        self.hashes[(user, digest)] = doc_id
        stages = [
            (common_pb2.INGEST_STAGE_QUEUED, 0, 0),
            (common_pb2.INGEST_STAGE_STORED, 0, 0),
            (common_pb2.INGEST_STAGE_EXTRACTING, 1, 2),
            (common_pb2.INGEST_STAGE_EXTRACTING, 2, 2),
            (common_pb2.INGEST_STAGE_EMBEDDING, 3, 3),
            (common_pb2.INGEST_STAGE_SUMMARISING, 0, 0),
        ]
        events = [
            common_pb2.IngestEvent(job_id=job_id, doc_id=doc_id, stage=stage, current=current, total=total)
            for stage, current, total in stages
        ]
        events.append(
            common_pb2.IngestEvent(job_id=job_id, doc_id=doc_id, stage=common_pb2.INGEST_STAGE_DONE, document=document)
        )
        self.jobs[job_id] = events
        return ingest_pb2.UploadResponse(job_id=job_id, doc_id=doc_id, document=document)

    async def WatchIngestJob(
        self, request: gateway_pb2.WatchIngestJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.IngestEvent]:
        self._record("WatchIngestJob", context)
        if request.job_id not in self.jobs:
            raise NotFound(f"no job {request.job_id}")
        for event in self.jobs[request.job_id]:
            await asyncio.sleep(0)
            yield event

    async def Search(
        self, request: gateway_pb2.GatewaySearchRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.SearchResponse:
        self._record("Search", context)
        self.search_requests.append(request)
        if request.query == "backend down":
            raise Unavailable("the retrieval service is unavailable; try again shortly")
        passages = PASSAGES[: request.top_k] if request.top_k else PASSAGES
        return retrieval_pb2.SearchResponse(passages=passages, backend="fake")

    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.ChatEvent]:
        self._record("Chat", context)
        self.chat_requests.append(request)
        if not request.question.strip():
            raise InvalidArgument("the question is empty")
        conversation_id = request.conversation_id or "conv-1"
        condensed = f"{request.question} (about alpacas)" if request.conversation_id else request.question
        yield gateway_pb2.ChatEvent(started=gateway_pb2.ChatStarted(conversation_id=conversation_id, turn_id="t1"))
        yield gateway_pb2.ChatEvent(condensed=gateway_pb2.CondensedQuestion(question=condensed))
        for text in ANSWER_TOKENS:
            yield gateway_pb2.ChatEvent(token=gateway_pb2.TokenDelta(text=text))
            if request.question == "fail":
                yield gateway_pb2.ChatEvent(
                    error=gateway_pb2.ChatError(code="UNAVAILABLE", message="the model endpoint stopped answering")
                )
                return
        if not request.options.HasField("references") or request.options.references:
            yield gateway_pb2.ChatEvent(references=gateway_pb2.References(passages=PASSAGES))
        yield gateway_pb2.ChatEvent(done=gateway_pb2.ChatDone(answer="".join(ANSWER_TOKENS), finish_reason="stop"))

    async def ListDocuments(
        self, request: gateway_pb2.ListUserDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ListDocumentsResponse:
        user = self._record("ListDocuments", context)
        return ingest_pb2.ListDocumentsResponse(documents=list(self.documents.get(user, {}).values()))

    async def DeleteDocument(
        self, request: gateway_pb2.DocumentRef, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.DeleteDocumentResponse:
        user = self._record("DeleteDocument", context)
        if self.documents.get(user, {}).pop(request.doc_id, None) is None:
            raise NotFound(f"no document {request.doc_id}")
        return ingest_pb2.DeleteDocumentResponse(doc_id=request.doc_id)

    async def ListConversations(
        self, request: gateway_pb2.ListConversationsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListConversationsResponse:
        self._record("ListConversations", context)
        conversation = gateway_pb2.Conversation(conversation_id="conv-1", title="About alpacas", turn_count=2)
        conversation.updated_at.FromSeconds(1_700_000_000)
        return gateway_pb2.ListConversationsResponse(conversations=[conversation])

    async def GetDocument(
        self, request: gateway_pb2.DocumentRef, context: grpc.aio.ServicerContext
    ) -> common_pb2.Document:
        user = self._record("GetDocument", context)
        document = self.documents.get(user, {}).get(request.doc_id)
        if document is None:
            raise NotFound(f"no document {request.doc_id}")
        return document

    async def CreateDocumentUpload(
        self, request: gateway_pb2.CreateDocumentUploadRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.CreateUploadResponse:
        raise FailedPrecondition("direct uploads need the S3 blob store")

    async def CommitDocumentUpload(
        self, request: gateway_pb2.CommitDocumentUploadRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.UploadResponse:
        raise FailedPrecondition("direct uploads need the S3 blob store")

    async def GetConversation(
        self, request: gateway_pb2.ConversationRef, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.Conversation:
        raise NotFound(f"no conversation {request.conversation_id}")

    async def RenameConversation(
        self, request: gateway_pb2.RenameConversationRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.Conversation:
        raise NotFound(f"no conversation {request.conversation_id}")

    async def DeleteConversation(
        self, request: gateway_pb2.ConversationRef, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.DeleteConversationResponse:
        raise NotFound(f"no conversation {request.conversation_id}")


@dataclass
class RunningGateway:
    fake: FakeGateway
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def fake_gateway_server() -> Iterator[RunningGateway]:
    """Serve a :class:`FakeGateway` on 127.0.0.1:<free port> from a thread with its own loop."""
    fake = FakeGateway()
    app = ServiceApp(
        name="fake-gateway",
        service_names=[SERVICE],
        register=lambda server: gateway_pb2_grpc.add_GatewayServiceServicer_to_server(fake, server),
    )
    config = ServerConfig(host="127.0.0.1", port=0, grace_seconds=0.0, log_level="info", max_message_bytes=4 << 20)
    server = GrpcServer(app, config)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    thread = threading.Thread(target=loop.run_forever, name="fake-gateway", daemon=True)
    thread.start()
    try:
        port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=10)
        started.set()
        yield RunningGateway(fake, port)
    finally:
        if started.is_set():
            asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
