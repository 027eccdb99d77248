"""The gRPC servicer of ``ragchat.v1.IngestService``: proto ⇄ domain, nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp
from ragchat.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc

from services.common.errors import Cancelled, InvalidArgument
from services.common.streams import client_cancelled
from services.ingest.backends import Document, DocumentStatus, Job, JobEvent, Stage
from services.ingest.core import Ingest, UploadHeader, UploadResult

_STATUS = {
    DocumentStatus.PENDING: common_pb2.DOCUMENT_STATUS_PENDING,
    DocumentStatus.PROCESSING: common_pb2.DOCUMENT_STATUS_PROCESSING,
    DocumentStatus.READY: common_pb2.DOCUMENT_STATUS_READY,
    DocumentStatus.FAILED: common_pb2.DOCUMENT_STATUS_FAILED,
    DocumentStatus.DELETING: common_pb2.DOCUMENT_STATUS_UNSPECIFIED,
}
_STAGE = {
    Stage.QUEUED: common_pb2.INGEST_STAGE_QUEUED,
    Stage.STORED: common_pb2.INGEST_STAGE_STORED,
    Stage.EXTRACTING: common_pb2.INGEST_STAGE_EXTRACTING,
    Stage.CHUNKING: common_pb2.INGEST_STAGE_CHUNKING,
    Stage.EMBEDDING: common_pb2.INGEST_STAGE_EMBEDDING,
    Stage.INDEXED: common_pb2.INGEST_STAGE_INDEXED,
    Stage.SUMMARISING: common_pb2.INGEST_STAGE_SUMMARISING,
    Stage.DONE: common_pb2.INGEST_STAGE_DONE,
    Stage.FAILED: common_pb2.INGEST_STAGE_FAILED,
}


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1_000_000_000))
    return stamp


def document_proto(document: Document) -> common_pb2.Document:
    return common_pb2.Document(
        doc_id=document.doc_id,
        title=document.title,
        source=document.source,
        content_type=document.content_type,
        size_bytes=document.size_bytes,
        pages=document.pages,
        chunks=document.chunks,
        status=_STATUS[document.status],
        error=document.error,
        summary=document.summary,
        sha256=document.sha256,
        language=document.language,
        created_at=_timestamp(document.created_at),
        updated_at=_timestamp(document.updated_at),
    )


def event_proto(event: JobEvent) -> common_pb2.IngestEvent:
    message = common_pb2.IngestEvent(
        job_id=event.job_id,
        doc_id=event.doc_id,
        stage=_STAGE[event.stage],
        current=event.current,
        total=event.total,
        message=event.message,
        summary_delta=event.summary_delta,
        error_code=event.error_code,
    )
    if event.document is not None:
        message.document.CopyFrom(document_proto(event.document))
    return message


def job_proto(job: Job) -> common_pb2.Job:
    return common_pb2.Job(
        job_id=job.job_id, doc_id=job.doc_id, stage=_STAGE[job.stage], message=job.message, duplicate=job.duplicate
    )


def _upload_response(result: UploadResult) -> ingest_pb2.UploadResponse:
    return ingest_pb2.UploadResponse(
        job_id=result.job.job_id,
        doc_id=result.document.doc_id,
        duplicate=result.duplicate,
        document=document_proto(result.document),
    )


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    async def Upload(
        self, request_iterator: AsyncIterator[ingest_pb2.UploadRequest], context: grpc.aio.ServicerContext
    ) -> ingest_pb2.UploadResponse:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("the first Upload message must carry the header (owner, filename, ...)")
        header = first.header

        async def data() -> AsyncIterator[bytes]:
            async for request in requests:
                if request.WhichOneof("part") == "header":
                    raise InvalidArgument("only the first Upload message may carry a header")
                yield request.data
            if await client_cancelled(context):  # a cancelled stream ends like a finished one
                raise Cancelled(f"the upload of {header.filename!r} was cancelled by the client; nothing was stored")

        result = await self._ingest.upload(
            UploadHeader(
                owner=header.owner,
                filename=header.filename,
                content_type=header.content_type,
                size_bytes=header.size_bytes,
                title=header.title,
            ),
            data(),
        )
        return _upload_response(result)

    async def CreateUpload(
        self, request: ingest_pb2.CreateUploadRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.CreateUploadResponse:
        header = request.header
        upload = await self._ingest.create_upload(
            UploadHeader(
                owner=header.owner,
                filename=header.filename,
                content_type=header.content_type,
                size_bytes=header.size_bytes,
                title=header.title,
            )
        )
        return ingest_pb2.CreateUploadResponse(
            upload_id=upload.upload_id,
            url=upload.put.url,
            headers=upload.put.headers,
            expires_in_seconds=upload.put.expires_in_seconds,
        )

    async def CommitUpload(
        self, request: ingest_pb2.CommitUploadRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.UploadResponse:
        return _upload_response(await self._ingest.commit_upload(request.owner, request.upload_id))

    async def WatchJob(
        self, request: ingest_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.IngestEvent]:
        async for event in self._ingest.watch_job(request.owner, request.job_id):
            yield event_proto(event)

    async def GetJob(self, request: ingest_pb2.GetJobRequest, context: grpc.aio.ServicerContext) -> common_pb2.Job:
        return job_proto(await self._ingest.get_job(request.owner, request.job_id))

    async def ListDocuments(
        self, request: ingest_pb2.ListDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ListDocumentsResponse:
        documents = await self._ingest.list_documents(request.owner)
        return ingest_pb2.ListDocumentsResponse(documents=[document_proto(document) for document in documents])

    async def GetDocument(
        self, request: ingest_pb2.GetDocumentRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.Document:
        return document_proto(await self._ingest.get_document(request.owner, request.doc_id))

    async def DeleteDocument(
        self, request: ingest_pb2.DeleteDocumentRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.DeleteDocumentResponse:
        await self._ingest.delete_document(request.owner, request.doc_id)
        return ingest_pb2.DeleteDocumentResponse(doc_id=request.doc_id)
