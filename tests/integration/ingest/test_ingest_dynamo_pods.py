"""Several ingest pods over one DynamoDB registry (``INGEST_REGISTRY=dynamodb``), for real: gRPC
servers on port 0, a moto server on a loopback port, one shared blob folder (standing in for the
S3 bucket). A job uploaded to one pod is watched to the end on another; the same bytes sent to
two pods at once make one document; a pod killed with SIGKILL in the middle of a job has the job
finished by another pod once its lease lapses.

The moto server answers one request at a time (DynamoDB applies each request atomically; moto
serving several threads at once does not).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from ragchat.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from werkzeug.serving import make_server

from services.common.aws import AwsConfig, make_client
from services.common.channels import open_channel
from services.common.config import Env
from services.ingest.backends import dynamo_schema as schema
from tests.integration.ingest.ingest_fakes import FakeSummarizer
from tests.integration.ingest.test_ingest_service import Running, rpc_error, stages, start, stop, upload, watch

REPO = Path(__file__).resolve().parents[3]
NOTE = "Tidal power uses the rise and fall of the sea. Barrages hold water back at high tide.\n"


@pytest.fixture
def dynamo_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A moto server (one request at a time) with the ingest tables; the variables that reach it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = make_server(
        "127.0.0.1",
        0,
        DomainDispatcherApplication(create_backend_app),
        threaded=False,
        request_handler=MotoRequestHandler,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    environ = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_port}",
        "AWS_REGION": "us-east-1",
        "INGEST_REGISTRY": "dynamodb",
        "DYNAMO_DOCUMENTS_TABLE": "ingest-documents",
        "DYNAMO_JOBS_TABLE": "ingest-jobs",
        "DYNAMO_UPLOADS_TABLE": "ingest-uploads",
        "INGEST_WATCH_POLL_SECONDS": "0.2",
        "INGEST_LEASE_SECONDS": "3",
        "INGEST_RECOVERY_SECONDS": "1",
    }
    client = make_client("dynamodb", AwsConfig.from_env(Env(environ)))
    schema.create_tables(client, "ingest-documents", "ingest-jobs", "ingest-uploads")
    try:
        yield environ
    finally:
        for table in ("ingest-documents", "ingest-jobs", "ingest-uploads"):
            client.delete_table(TableName=table)
        server.shutdown()
        thread.join(timeout=10)


async def pod(data_dir: Path, environ: dict[str, str], summarizer: FakeSummarizer | None = None) -> Running:
    """An ingest pod in this process (fake indexer and summariser) on the shared registry and blobs."""
    return await start(data_dir, None, summarizer, None, **environ)


@pytest.fixture
async def two_pods(tmp_path: Path, dynamo_environ: dict[str, str]) -> AsyncIterator[tuple[Running, Running]]:
    gate = asyncio.Event()
    gate.set()
    a = await pod(tmp_path, dynamo_environ, FakeSummarizer(gate=gate))
    b = await pod(tmp_path, dynamo_environ, FakeSummarizer(gate=gate))
    yield a, b
    await stop(a)
    await stop(b)


async def test_a_job_uploaded_to_one_pod_is_watched_to_the_end_on_another(
    tmp_path: Path, dynamo_environ: dict[str, str]
) -> None:
    gate = asyncio.Event()  # holds the job in SUMMARISING on pod A
    a = await pod(tmp_path, dynamo_environ, FakeSummarizer(gate=gate))
    b = await pod(tmp_path, dynamo_environ)
    try:
        response = await upload(a.stub, "alice", "tides.txt", NOTE.encode())
        watching = asyncio.create_task(watch(b.stub, "alice", response.job_id))
        await asyncio.sleep(1.0)
        assert not watching.done()
        released = time.monotonic()
        gate.set()
        events = await asyncio.wait_for(watching, 10)
        # Pod A cannot wake pod B's watcher: B re-reads the job every INGEST_WATCH_POLL_SECONDS (0.2 s)
        # rather than at the 15 s fallback.
        assert time.monotonic() - released < 8.0
        assert stages(events) == [
            "QUEUED",
            "STORED",
            "EXTRACTING",
            "CHUNKING",
            "EMBEDDING",
            "INDEXED",
            "SUMMARISING",
            "DONE",
        ]
        assert events[-1].document.summary == "This document is about layout."
        listed = await b.stub.ListDocuments(ingest_pb2.ListDocumentsRequest(owner="alice"), timeout=10)
        assert [d.doc_id for d in listed.documents] == [response.doc_id]
        assert a.indexer.documents and not b.indexer.documents  # pod A ran it
    finally:
        await stop(a)
        await stop(b)


async def test_the_same_bytes_sent_to_two_pods_at_once_make_one_document(two_pods: tuple[Running, Running]) -> None:
    a, b = two_pods
    for round_ in range(4):
        data = f"{NOTE}round {round_}\n".encode()
        first, second = await asyncio.gather(
            upload(a.stub, "alice", f"r{round_}.txt", data), upload(b.stub, "alice", f"r{round_}.txt", data)
        )
        assert first.doc_id == second.doc_id
        assert sorted([first.duplicate, second.duplicate]) == [False, True]
    listed = await a.stub.ListDocuments(ingest_pb2.ListDocumentsRequest(owner="alice"), timeout=10)
    assert len(listed.documents) == 4


async def test_a_document_deleted_on_one_pod_is_gone_on_the_other(two_pods: tuple[Running, Running]) -> None:
    a, b = two_pods
    response = await upload(a.stub, "alice", "tides.txt", NOTE.encode())
    events = await watch(b.stub, "alice", response.job_id)
    assert events[-1].stage == common_pb2.INGEST_STAGE_DONE
    await b.stub.DeleteDocument(ingest_pb2.DeleteDocumentRequest(owner="alice", doc_id=response.doc_id), timeout=10)
    error = await rpc_error(
        a.stub.GetDocument(ingest_pb2.GetDocumentRequest(owner="alice", doc_id=response.doc_id), timeout=10)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # Stored again after the delete: a new document, not the deleted one.
    again = await upload(a.stub, "alice", "tides.txt", NOTE.encode())
    assert not again.duplicate and again.doc_id != response.doc_id


class StuckRetrieval(retrieval_pb2_grpc.RetrievalServiceServicer):
    """A retrieval service whose indexing never finishes (the job stays in EMBEDDING)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def Search(self, request: retrieval_pb2.SearchRequest, context: Any) -> retrieval_pb2.SearchResponse:
        return retrieval_pb2.SearchResponse()

    async def IndexDocument(
        self, request_iterator: AsyncIterator[retrieval_pb2.IndexDocumentRequest], context: Any
    ) -> retrieval_pb2.IndexDocumentResponse:
        async for _ in request_iterator:
            self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def DeleteDocument(
        self, request: retrieval_pb2.DeleteIndexedDocumentRequest, context: Any
    ) -> retrieval_pb2.DeleteIndexedDocumentResponse:
        return retrieval_pb2.DeleteIndexedDocumentResponse(chunks_deleted=0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_job_of_a_killed_pod_is_finished_by_another_once_its_lease_lapses(
    tmp_path: Path, dynamo_environ: dict[str, str]
) -> None:
    stuck = StuckRetrieval()
    retrieval = grpc.aio.server()
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(stuck, retrieval)
    retrieval_port = retrieval.add_insecure_port("127.0.0.1:0")
    await retrieval.start()
    port = free_port()
    environ = {
        **os.environ,
        **dynamo_environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATA_DIR": str(tmp_path),
        "RETRIEVAL_ADDR": f"127.0.0.1:{retrieval_port}",
        "INGEST_SUMMARIZE": "false",
        "OCR_ENABLED": "false",
        "LOG_LEVEL": "warning",
    }
    # Pod A: the real service, as a process of its own.
    pod_a = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.ingest", cwd=REPO, env=environ)
    channel = open_channel(f"127.0.0.1:{port}")
    b: Running | None = None
    try:
        await asyncio.wait_for(channel.channel_ready(), 60)
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        response = await upload(stub, "alice", "tides.txt", NOTE.encode())
        await asyncio.wait_for(stuck.started.wait(), 30)
        pod_a.send_signal(signal.SIGKILL)  # no shutdown: its lease is left to lapse
        await asyncio.wait_for(pod_a.wait(), 10)
        killed = time.monotonic()

        b = await pod(tmp_path, dynamo_environ)
        events = await asyncio.wait_for(watch(b.stub, "alice", response.job_id), 30)
        assert events[-1].stage == common_pb2.INGEST_STAGE_DONE, events[-1].message
        assert any(e.message == "resumed after a restart" for e in events)
        assert time.monotonic() - killed < 20
        assert list(b.indexer.documents) == [("alice", response.doc_id)]
        document = await b.stub.GetDocument(
            ingest_pb2.GetDocumentRequest(owner="alice", doc_id=response.doc_id), timeout=10
        )
        assert document.status == common_pb2.DOCUMENT_STATUS_READY
    finally:
        if pod_a.returncode is None:
            pod_a.kill()
            await asyncio.wait_for(pod_a.wait(), 10)
        await channel.close()
        if b is not None:
            await stop(b)
        await retrieval.stop(None)
