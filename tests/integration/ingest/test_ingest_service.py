"""The ingest service over real gRPC (port 0) with fake Indexer and Summarizer."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ragchat.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc

from services.common.channels import open_channel
from services.common.config import Env
from services.common.errors import Unavailable
from services.common.server import GrpcServer
from services.ingest.config import IngestConfig
from services.ingest.files import SUPPORTED_TYPES
from services.ingest.sandbox import Extractor
from services.ingest.server import SERVICE_NAME, build_app
from tests.integration.ingest.ingest_fakes import FakeIndexer, FakeSummarizer

PDFS = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "pdfs"
ARXIV = PDFS / "arxiv-2203.06947.pdf"
NICS = PDFS / "nics-background-checks-2015-11.pdf"
MAX_UPLOAD = 4 * 1024 * 1024

needs_pdfs = pytest.mark.skipif(not ARXIV.exists(), reason=f"real PDFs not found in {PDFS}")


@dataclass
class Running:
    server: GrpcServer
    channel: grpc.aio.Channel
    stub: ingest_pb2_grpc.IngestServiceStub
    indexer: FakeIndexer
    summarizer: FakeSummarizer
    data_dir: Path


def make_config(data_dir: Path, **extra: str) -> IngestConfig:
    environ = {
        "DATA_DIR": str(data_dir),
        "PORT": "0",
        "SHUTDOWN_GRACE_SECONDS": "1",
        "MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        **extra,
    }
    return IngestConfig.from_env(Env(environ))


async def start(
    data_dir: Path,
    indexer: FakeIndexer | None = None,
    summarizer: FakeSummarizer | None = None,
    extractor: Extractor | None = None,
    **environ: str,
) -> Running:
    indexer = indexer or FakeIndexer()
    summarizer = summarizer or FakeSummarizer()
    config = make_config(data_dir, **environ)
    server = GrpcServer(build_app(config, indexer=indexer, summarizer=summarizer, extractor=extractor), config.server)
    port = await server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    return Running(server, channel, ingest_pb2_grpc.IngestServiceStub(channel), indexer, summarizer, data_dir)


async def stop(running: Running) -> None:
    await running.channel.close()
    await running.server.stop(0.5)


@pytest.fixture
async def ingest(tmp_path: Path) -> AsyncIterator[Running]:
    running = await start(tmp_path)
    yield running
    await stop(running)


def upload_requests(
    owner: str, filename: str, data: bytes, *, size: int | None = None, piece: int = 64 * 1024, title: str = ""
) -> Iterator[ingest_pb2.UploadRequest]:
    header = ingest_pb2.UploadHeader(
        owner=owner,
        filename=filename,
        content_type="application/octet-stream",
        size_bytes=len(data) if size is None else size,
        title=title,
    )
    yield ingest_pb2.UploadRequest(header=header)
    for start_at in range(0, len(data), piece):
        yield ingest_pb2.UploadRequest(data=data[start_at : start_at + piece])


async def upload(
    stub: ingest_pb2_grpc.IngestServiceStub, owner: str, filename: str, data: bytes, **options: object
) -> ingest_pb2.UploadResponse:
    response: ingest_pb2.UploadResponse = await stub.Upload(
        upload_requests(owner, filename, data, **options),  # type: ignore[arg-type]
        timeout=30,
    )
    return response


async def watch(stub: ingest_pb2_grpc.IngestServiceStub, owner: str, job_id: str) -> list[common_pb2.IngestEvent]:
    events: list[common_pb2.IngestEvent] = []
    call = stub.WatchJob(ingest_pb2.WatchJobRequest(owner=owner, job_id=job_id), timeout=60)
    async for event in call:
        events.append(event)
    return events


def stages(events: Sequence[common_pb2.IngestEvent]) -> list[str]:
    names: list[str] = []
    for event in events:
        name = common_pb2.IngestStage.Name(event.stage).removeprefix("INGEST_STAGE_")
        if not names or names[-1] != name:
            names.append(name)
    return names


async def rpc_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


def blob_files(data_dir: Path) -> list[Path]:
    return sorted(path for path in (data_dir / "blobs").rglob("*") if path.is_file())


@needs_pdfs
async def test_uploading_a_pdf_runs_every_stage_and_ends_ready(ingest: Running) -> None:
    data = ARXIV.read_bytes()
    response = await upload(ingest.stub, "alice", "../papers/XYLayoutLM.pdf", data)
    assert not response.duplicate
    assert response.document.source == "XYLayoutLM.pdf"
    assert response.document.status == common_pb2.DOCUMENT_STATUS_PENDING

    events = await watch(ingest.stub, "alice", response.job_id)
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
    pages = [event for event in events if event.stage == common_pb2.INGEST_STAGE_EXTRACTING and event.total]
    assert (pages[-1].current, pages[-1].total) == (10, 10)
    done = events[-1]
    document = done.document
    assert document.status == common_pb2.DOCUMENT_STATUS_READY
    assert (document.pages, document.content_type, document.language) == (10, "application/pdf", "en")
    assert document.summary == "This document is about layout."
    assert "".join(event.summary_delta for event in events) == "This document is about layout."

    (call,) = ingest.indexer.calls
    assert (call.owner, call.doc_id, call.source) == ("alice", response.doc_id, "XYLayoutLM.pdf")
    assert (call.content_type, call.source_uri) == ("application/pdf", "")  # the local store has no URI
    assert document.chunks == len(call.chunks) > 10
    assert {chunk.page for chunk in call.chunks} == set(range(1, 11))
    # The whole document goes to the summarizer, not only its first chunks.
    ((_, sections, language),) = ingest.summarizer.calls
    assert sections == [chunk.text for chunk in call.chunks]
    assert language == "en"

    job = await ingest.stub.GetJob(ingest_pb2.GetJobRequest(owner="alice", job_id=response.job_id))
    assert job.stage == common_pb2.INGEST_STAGE_DONE
    stored = await ingest.stub.GetDocument(ingest_pb2.GetDocumentRequest(owner="alice", doc_id=response.doc_id))
    assert stored.summary == document.summary and stored.chunks == document.chunks
    (blob,) = blob_files(ingest.data_dir)
    assert blob.read_bytes() == data
    assert "XYLayoutLM" not in str(blob) and blob.name == document.sha256


@needs_pdfs
async def test_the_same_bytes_again_return_the_existing_document(ingest: Running) -> None:
    data = NICS.read_bytes()
    first = await upload(ingest.stub, "alice", "nics.pdf", data)
    await watch(ingest.stub, "alice", first.job_id)
    again = await upload(ingest.stub, "alice", "renamed copy.pdf", data)
    assert again.duplicate
    assert (again.doc_id, again.job_id) == (first.doc_id, first.job_id)
    assert again.document.status == common_pb2.DOCUMENT_STATUS_READY
    assert len(ingest.indexer.calls) == 1
    assert len(blob_files(ingest.data_dir)) == 1
    # Another owner with the same bytes gets a document of their own.
    other = await upload(ingest.stub, "bob", "nics.pdf", data)
    assert not other.duplicate and other.doc_id != first.doc_id


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF_HEAD = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"

BAD_UPLOADS = [
    pytest.param(
        dict(owner="alice", filename="big.pdf", data=b"%PDF-", size=64_172_851),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "big.pdf: file is 61.2 MB; the limit is 4 MB (MAX_UPLOAD_BYTES)",
        id="declared-size-over-limit",
    ),
    pytest.param(
        dict(owner="alice", filename="big.txt", data=b"a" * (MAX_UPLOAD + 1), size=0),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "big.txt: file is more than 4 MB; the limit is 4 MB (MAX_UPLOAD_BYTES)",
        id="streamed-size-over-limit",
    ),
    pytest.param(
        dict(owner="alice", filename="notes.txt", data=b""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "notes.txt is empty",
        id="empty",
    ),
    pytest.param(
        dict(owner="alice", filename="photo.pdf", data=PNG),
        grpc.StatusCode.INVALID_ARGUMENT,
        "photo.pdf is not a PDF: its content looks like a PNG image; expected a PDF document (starting with %PDF-)",
        id="png-named-pdf",
    ),
    pytest.param(
        dict(owner="alice", filename="noise.pdf", data=os.urandom(4096)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "noise.pdf is not a PDF: its content looks like binary data; expected a PDF document (starting with %PDF-)",
        id="random-bytes-named-pdf",
    ),
    pytest.param(
        dict(owner="alice", filename="paper.txt", data=PDF_HEAD),
        grpc.StatusCode.INVALID_ARGUMENT,
        "paper.txt is a PDF document, not plain text; rename it to .pdf",
        id="pdf-named-txt",
    ),
    pytest.param(
        dict(owner="alice", filename="setup.exe", data=b"MZ\x90\x00" + bytes(100)),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"setup.exe: unsupported file type .exe (a Windows executable); supported types are {SUPPORTED_TYPES}",
        id="exe",
    ),
    pytest.param(
        dict(owner="alice", filename="photo.png", data=PNG),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"photo.png: unsupported file type .png (a PNG image); supported types are {SUPPORTED_TYPES}",
        id="png",
    ),
    pytest.param(
        dict(owner="alice", filename="archive.zip", data=b"PK\x03\x04" + bytes(60)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "archive.zip: unsupported file type .zip (a ZIP archive (or an Office document such as .docx)); "
        f"supported types are {SUPPORTED_TYPES}",
        id="zip",
    ),
    pytest.param(
        dict(owner=" ", filename="notes.txt", data=b"hello"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "owner is required",
        id="no-owner",
    ),
    pytest.param(
        dict(owner="alice", filename="../..", data=b"hello"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "file name '../..' has no usable characters; send a plain file name",
        id="no-usable-name",
    ),
    pytest.param(
        dict(owner="alice", filename="notes.txt", data=b"hello world", size=5),
        grpc.StatusCode.INVALID_ARGUMENT,
        "notes.txt: received 11 bytes but the header declared 5; the upload was cut short or the size is wrong",
        id="size-mismatch",
    ),
]


@needs_pdfs
@pytest.mark.parametrize(("upload_args", "code", "message"), BAD_UPLOADS)
async def test_bad_uploads_are_rejected_and_the_service_stays_healthy(
    ingest: Running, upload_args: dict[str, object], code: grpc.StatusCode, message: str
) -> None:
    good = await upload(ingest.stub, "alice", "nics.pdf", NICS.read_bytes())
    await watch(ingest.stub, "alice", good.job_id)

    data = upload_args.pop("data")
    assert isinstance(data, bytes)
    error = await rpc_error(
        upload(ingest.stub, str(upload_args.pop("owner")), str(upload_args.pop("filename")), data, **upload_args)
    )
    assert (error.code(), error.details()) == (code, message)

    health = await health_pb2_grpc.HealthStub(ingest.channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    listed = await ingest.stub.ListDocuments(ingest_pb2.ListDocumentsRequest(owner="alice"))
    assert [document.doc_id for document in listed.documents] == [good.doc_id]
    assert listed.documents[0].status == common_pb2.DOCUMENT_STATUS_READY
    assert len(blob_files(ingest.data_dir)) == 1  # nothing of the rejected upload stayed on disk


async def test_a_stream_without_a_header_is_rejected(ingest: Running) -> None:
    async def requests() -> AsyncIterator[ingest_pb2.UploadRequest]:
        yield ingest_pb2.UploadRequest(data=b"hello")

    error = await rpc_error(ingest.stub.Upload(requests(), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "the first Upload message must carry the header (owner, filename, ...)"


async def test_a_korean_text_file_in_cp949_is_ingested(ingest: Running) -> None:
    text = "# 검색 증강 생성\n\n이 문서는 한국어로 쓰였습니다. 문서를 나누고 색인합니다.\n"
    response = await upload(ingest.stub, "민수", "보고서.md", text.encode("cp949"))
    events = await watch(ingest.stub, "민수", response.job_id)
    document = events[-1].document
    assert (document.status, document.language, document.title) == (
        common_pb2.DOCUMENT_STATUS_READY,
        "ko",
        "검색 증강 생성",
    )
    (call,) = ingest.indexer.calls
    assert call.chunks[0].heading == "검색 증강 생성"
    assert call.chunks[0].text.startswith("이 문서는 한국어로")


async def test_watching_after_the_uploader_went_away_replays_and_follows(tmp_path: Path) -> None:
    gate = asyncio.Event()
    running = await start(tmp_path, summarizer=FakeSummarizer(gate=gate))
    try:
        uploader = open_channel(f"127.0.0.1:{running.server.port}")
        response = await upload(
            ingest_pb2_grpc.IngestServiceStub(uploader), "alice", "notes.txt", b"Plain text. Two sentences."
        )
        await uploader.close()
        watching = asyncio.create_task(watch(running.stub, "alice", response.job_id))
        while not running.summarizer.calls:  # the job got to SUMMARISING without anyone attached
            await asyncio.sleep(0.02)
        assert not watching.done()
        gate.set()
        events = await watching
        assert stages(events)[0] == "QUEUED" and stages(events)[-1] == "DONE"
        assert events[-1].document.summary == "This document is about layout."
    finally:
        await stop(running)


@needs_pdfs
async def test_deleting_removes_index_entries_blob_and_record(ingest: Running) -> None:
    data = NICS.read_bytes()
    response = await upload(ingest.stub, "alice", "nics.pdf", data)
    await watch(ingest.stub, "alice", response.job_id)
    assert ("alice", response.doc_id) in ingest.indexer.documents

    deleted = await ingest.stub.DeleteDocument(ingest_pb2.DeleteDocumentRequest(owner="alice", doc_id=response.doc_id))
    assert deleted.doc_id == response.doc_id
    assert ingest.indexer.deletes == [("alice", response.doc_id)]
    assert ("alice", response.doc_id) not in ingest.indexer.documents
    assert blob_files(ingest.data_dir) == []
    error = await rpc_error(
        ingest.stub.GetDocument(ingest_pb2.GetDocumentRequest(owner="alice", doc_id=response.doc_id))
    )
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, f"no document {response.doc_id}")
    error = await rpc_error(ingest.stub.GetJob(ingest_pb2.GetJobRequest(owner="alice", job_id=response.job_id)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = await ingest.stub.ListDocuments(ingest_pb2.ListDocumentsRequest(owner="alice"))
    assert list(listed.documents) == []
    # Uploading the same bytes again makes a new document, not a resurrected one.
    again = await upload(ingest.stub, "alice", "nics.pdf", data)
    assert not again.duplicate and again.doc_id != response.doc_id


async def test_deleting_an_unknown_document_is_not_found(ingest: Running) -> None:
    error = await rpc_error(ingest.stub.DeleteDocument(ingest_pb2.DeleteDocumentRequest(owner="alice", doc_id="nope")))
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "no document nope")


async def test_another_owner_cannot_see_or_touch_a_document(ingest: Running) -> None:
    response = await upload(ingest.stub, "alice", "notes.md", b"# Notes\n\nAlice's private notes.")
    await watch(ingest.stub, "alice", response.job_id)
    stub = ingest.stub
    unknown_id = "x" * 32
    checks = [
        (
            stub.GetDocument(ingest_pb2.GetDocumentRequest(owner="mallory", doc_id=response.doc_id)),
            stub.GetDocument(ingest_pb2.GetDocumentRequest(owner="mallory", doc_id=unknown_id)),
            "no document {}",
            response.doc_id,
        ),
        (
            stub.DeleteDocument(ingest_pb2.DeleteDocumentRequest(owner="mallory", doc_id=response.doc_id)),
            stub.DeleteDocument(ingest_pb2.DeleteDocumentRequest(owner="mallory", doc_id=unknown_id)),
            "no document {}",
            response.doc_id,
        ),
        (
            stub.GetJob(ingest_pb2.GetJobRequest(owner="mallory", job_id=response.job_id)),
            stub.GetJob(ingest_pb2.GetJobRequest(owner="mallory", job_id=unknown_id)),
            "no job {}",
            response.job_id,
        ),
    ]
    for theirs_call, unknown_call, template, real_id in checks:
        theirs, missing = await rpc_error(theirs_call), await rpc_error(unknown_call)
        assert theirs.code() == missing.code() == grpc.StatusCode.NOT_FOUND
        assert (theirs.details(), missing.details()) == (template.format(real_id), template.format(unknown_id))
    error = await rpc_error(watch(stub, "mallory", response.job_id))
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, f"no job {response.job_id}")
    listed = await stub.ListDocuments(ingest_pb2.ListDocumentsRequest(owner="mallory"))
    assert list(listed.documents) == []
    assert ingest.indexer.deletes == []
    mine = await stub.GetDocument(ingest_pb2.GetDocumentRequest(owner="alice", doc_id=response.doc_id))
    assert mine.status == common_pb2.DOCUMENT_STATUS_READY


async def test_a_pdf_without_text_fails_with_a_clear_reason(ingest: Running, tmp_path: Path) -> None:
    import pypdfium2 as pdfium

    blank = pdfium.PdfDocument.new()
    blank.new_page(595, 842)
    path = tmp_path / "scan.pdf"
    blank.save(str(path))
    response = await upload(ingest.stub, "alice", "scan.pdf", path.read_bytes())
    events = await watch(ingest.stub, "alice", response.job_id)
    failed = events[-1]
    assert failed.stage == common_pb2.INGEST_STAGE_FAILED
    assert failed.error_code == "INVALID_ARGUMENT"
    assert failed.message == "no extractable text: the PDF has no text layer and OCR found no text in its pages"
    assert failed.document.status == common_pb2.DOCUMENT_STATUS_FAILED
    assert ingest.indexer.calls == []


async def test_an_indexing_failure_fails_the_job_and_leaves_nothing_indexed(tmp_path: Path) -> None:
    indexer = FakeIndexer(fail_with=Unavailable("the retrieval service at 127.0.0.1:1 is unavailable"))
    running = await start(tmp_path, indexer=indexer)
    try:
        response = await upload(running.stub, "alice", "notes.txt", b"Some text to index.")
        events = await watch(running.stub, "alice", response.job_id)
        assert events[-1].stage == common_pb2.INGEST_STAGE_FAILED
        assert events[-1].error_code == "UNAVAILABLE"
        assert events[-1].message == "indexing failed: the retrieval service at 127.0.0.1:1 is unavailable"
        assert indexer.deletes == [("alice", response.doc_id)] and indexer.documents == {}
        stored = await running.stub.GetDocument(ingest_pb2.GetDocumentRequest(owner="alice", doc_id=response.doc_id))
        assert stored.status == common_pb2.DOCUMENT_STATUS_FAILED
        # Re-uploading the bytes of a failed document retries it.
        indexer.fail_with = None
        again = await upload(running.stub, "alice", "notes.txt", b"Some text to index.")
        assert again.duplicate and again.doc_id == response.doc_id and again.job_id != response.job_id
        events = await watch(running.stub, "alice", again.job_id)
        assert events[-1].document.status == common_pb2.DOCUMENT_STATUS_READY
    finally:
        await stop(running)


async def test_a_summary_failure_still_leaves_the_document_ready(tmp_path: Path) -> None:
    running = await start(tmp_path, summarizer=FakeSummarizer(fail=True))
    try:
        response = await upload(running.stub, "alice", "notes.txt", b"Some text to index.")
        events = await watch(running.stub, "alice", response.job_id)
        assert events[-1].stage == common_pb2.INGEST_STAGE_DONE
        assert events[-1].document.status == common_pb2.DOCUMENT_STATUS_READY
        assert events[-1].document.summary == ""
        failures = [event.message for event in events if event.message.startswith("summary failed")]
        assert failures == [
            "summary failed: the generation service at 127.0.0.1:1 is unavailable; "
            "the document is indexed and searchable without a summary"
        ]
        assert len(running.indexer.documents) == 1
    finally:
        await stop(running)


async def test_a_hanging_parser_is_killed_and_the_service_keeps_answering(tmp_path: Path) -> None:
    extractor = Extractor(
        timeout_seconds=1,
        memory_mb=1024,
        parsers={"text/plain": "tests.integration.ingest.ingest_slow_parser:sleep_forever"},
    )
    running = await start(tmp_path, extractor=extractor)
    try:
        response = await upload(running.stub, "alice", "notes.txt", b"Hangs the parser.")
        events = await watch(running.stub, "alice", response.job_id)
        assert events[-1].stage == common_pb2.INGEST_STAGE_FAILED
        assert events[-1].error_code == "DEADLINE_EXCEEDED"
        assert events[-1].message == "extraction took longer than 1 s (EXTRACT_TIMEOUT_SECONDS) and was stopped"
        listed = await running.stub.ListDocuments(ingest_pb2.ListDocumentsRequest(owner="alice"))
        assert [document.status for document in listed.documents] == [common_pb2.DOCUMENT_STATUS_FAILED]
    finally:
        await stop(running)


async def test_unfinished_jobs_are_resumed_after_a_restart(tmp_path: Path) -> None:
    first = await start(tmp_path, summarizer=FakeSummarizer(gate=asyncio.Event()))
    response = await upload(first.stub, "alice", "notes.txt", b"Interrupted while summarising.")
    while not first.summarizer.calls:
        await asyncio.sleep(0.02)
    await stop(first)  # the job is cut off in SUMMARISING

    second = await start(tmp_path)
    try:
        events = await watch(second.stub, "alice", response.job_id)
        assert events[0].message == "resumed after a restart"
        assert stages(events)[-1] == "DONE"
        assert events[-1].document.summary == "This document is about layout."
        assert [call.doc_id for call in second.indexer.calls] == [response.doc_id]
    finally:
        await stop(second)


async def test_direct_uploads_need_the_s3_blob_store(ingest: Running) -> None:
    header = ingest_pb2.UploadHeader(owner="alice", filename="a.pdf")
    error = await rpc_error(ingest.stub.CreateUpload(ingest_pb2.CreateUploadRequest(header=header)))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "direct uploads need BLOB_BACKEND=s3; stream the file with Upload instead",
    )
    error = await rpc_error(ingest.stub.CommitUpload(ingest_pb2.CommitUploadRequest(owner="alice", upload_id="u")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_jobs_beyond_the_concurrency_limit_wait_for_a_slot(tmp_path: Path) -> None:
    gate = asyncio.Event()
    running = await start(tmp_path, summarizer=FakeSummarizer(gate=gate), INGEST_CONCURRENCY="1")
    try:
        first = await upload(running.stub, "alice", "one.txt", b"First document.")
        second = await upload(running.stub, "alice", "two.txt", b"Second document.")
        while not running.summarizer.calls:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        waiting = await running.stub.GetJob(ingest_pb2.GetJobRequest(owner="alice", job_id=second.job_id))
        assert waiting.stage == common_pb2.INGEST_STAGE_STORED
        assert [call.doc_id for call in running.indexer.calls] == [first.doc_id]
        gate.set()
        events = await watch(running.stub, "alice", second.job_id)
        assert stages(events)[-1] == "DONE"
    finally:
        await stop(running)


async def test_deleting_a_document_while_its_job_runs_stops_the_job(tmp_path: Path) -> None:
    running = await start(tmp_path, summarizer=FakeSummarizer(gate=asyncio.Event()))
    try:
        response = await upload(running.stub, "alice", "notes.txt", b"Deleted while summarising.")
        watching = asyncio.create_task(watch(running.stub, "alice", response.job_id))
        while not running.summarizer.calls:
            await asyncio.sleep(0.02)
        await running.stub.DeleteDocument(ingest_pb2.DeleteDocumentRequest(owner="alice", doc_id=response.doc_id))
        error = await rpc_error(watching)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert running.indexer.documents == {}
        assert running.indexer.deletes == [("alice", response.doc_id)]
        listed = await running.stub.ListDocuments(ingest_pb2.ListDocumentsRequest(owner="alice"))
        assert list(listed.documents) == []
        assert blob_files(tmp_path) == []
    finally:
        await stop(running)
