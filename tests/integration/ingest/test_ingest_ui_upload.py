"""ui.upload.upload_file: presigned PUT straight to S3 (moto_server) when the gateway offers it,
the gRPC stream otherwise. A small gateway stand-in relays the document calls to a real
ingest server, recording which ones were used."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import httpx
import pytest
from ragchat.v1 import gateway_pb2, gateway_pb2_grpc, ingest_pb2

from tests.integration.ingest.test_ingest_s3 import (  # noqa: F401 - fixtures
    aws_environ,
    ingest_s3,
    keys,
    moto_endpoint,
    s3,
)
from tests.integration.ingest.test_ingest_service import Running, ingest, watch  # noqa: F401 - fixture
from ui.client import GatewayClient, GatewayError
from ui.upload import DirectUploadError, upload_file

_T = TypeVar("_T")
TEXT = b"Geothermal plants draw heat from deep underground. Iceland gets a quarter of its power this way.\n"


class RelayGateway(gateway_pb2_grpc.GatewayServiceServicer):
    """The gateway's document upload calls, relayed to ingest for the user in the metadata."""

    def __init__(self, running: Running) -> None:
        self._ingest = running.stub
        self.calls: list[str] = []

    @staticmethod
    def _user(context: grpc.aio.ServicerContext) -> str:
        return str(dict(context.invocation_metadata() or ()).get("x-ragchat-user", ""))

    async def _relay(self, call: Awaitable[_T], context: grpc.aio.ServicerContext) -> _T:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            await context.abort(error.code(), error.details() or "")
            raise

    async def CreateDocumentUpload(
        self, request: gateway_pb2.CreateDocumentUploadRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.CreateUploadResponse:
        self.calls.append("CreateDocumentUpload")
        h = request.header
        header = ingest_pb2.UploadHeader(
            owner=self._user(context),
            filename=h.filename,
            content_type=h.content_type,
            size_bytes=h.size_bytes,
            title=h.title,
        )
        return await self._relay(self._ingest.CreateUpload(ingest_pb2.CreateUploadRequest(header=header)), context)

    async def CommitDocumentUpload(
        self, request: gateway_pb2.CommitDocumentUploadRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.UploadResponse:
        self.calls.append("CommitDocumentUpload")
        commit = ingest_pb2.CommitUploadRequest(owner=self._user(context), upload_id=request.upload_id)
        return await self._relay(self._ingest.CommitUpload(commit), context)

    async def UploadDocument(
        self, request_iterator: AsyncIterator[gateway_pb2.UploadDocumentRequest], context: grpc.aio.ServicerContext
    ) -> ingest_pb2.UploadResponse:
        self.calls.append("UploadDocument")
        owner = self._user(context)

        async def requests() -> AsyncIterator[ingest_pb2.UploadRequest]:
            async for request in request_iterator:
                if request.WhichOneof("part") == "header":
                    h = request.header
                    yield ingest_pb2.UploadRequest(
                        header=ingest_pb2.UploadHeader(
                            owner=owner, filename=h.filename, size_bytes=h.size_bytes, title=h.title
                        )
                    )
                else:
                    yield ingest_pb2.UploadRequest(data=request.data)

        return await self._relay(self._ingest.Upload(requests()), context)


async def relay_client(running: Running) -> tuple[grpc.aio.Server, RelayGateway, GatewayClient]:
    relay = RelayGateway(running)  # type: ignore[abstract]  # only the upload calls are needed here
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(relay, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, relay, GatewayClient(f"127.0.0.1:{port}", user="alice")


async def test_with_s3_the_file_goes_straight_to_the_bucket(ingest_s3: Running, s3: Any, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "geothermal.txt"
    path.write_bytes(TEXT)
    server, relay, client = await relay_client(ingest_s3)
    try:
        response = await upload_file(client, path)
    finally:
        await client.close()
        await server.stop(0)
    assert relay.calls == ["CreateDocumentUpload", "CommitDocumentUpload"]  # no bytes through the gateway
    assert not response.duplicate and response.document.source == "geothermal.txt"
    assert [key.rsplit("/", 2)[-2] for key in keys(s3)] == [response.doc_id]
    events = await watch(ingest_s3.stub, "alice", response.job_id)
    assert events[-1].document.chunks == 1


async def test_without_direct_uploads_the_file_is_streamed(ingest: Running, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "geothermal.txt"
    path.write_bytes(TEXT)
    server, relay, client = await relay_client(ingest)
    try:
        response = await upload_file(client, path, title="Geothermal")
    finally:
        await client.close()
        await server.stop(0)
    assert relay.calls == ["CreateDocumentUpload", "UploadDocument"]
    assert response.document.title == "Geothermal"


async def test_a_refused_put_is_reported_and_nothing_is_committed(ingest_s3: Running, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "geothermal.txt"
    path.write_bytes(TEXT)

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, text="<Error><Code>AccessDenied</Code><Message>Request has expired</Message>")

    server, relay, client = await relay_client(ingest_s3)
    try:
        async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
            with pytest.raises(DirectUploadError) as caught:
                await upload_file(client, path, http=http)
    finally:
        await client.close()
        await server.stop(0)
    assert isinstance(caught.value, GatewayError)
    assert caught.value.message.startswith("geothermal.txt: the blob store refused the upload (HTTP 403:")
    assert relay.calls == ["CreateDocumentUpload"]
