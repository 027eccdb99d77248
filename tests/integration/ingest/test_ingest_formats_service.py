"""Every format through the running ingest service: sniffed at upload, parsed in the sandbox child."""

from __future__ import annotations

import grpc
import pytest
from ragchat.v1 import common_pb2

from services.ingest.files import CSV, DOCX, HTML, PDF, PPTX
from tests.integration.ingest.test_ingest_service import (  # noqa: F401 - the fixture
    Running,
    ingest,
    rpc_error,
    upload,
    watch,
)
from tests.unit.ingest.ingest_samples import (
    HTML_PAGE,
    NANUM,
    WORD_CONTENT_TYPES,
    csv_bytes,
    docx_bytes,
    pptx_bytes,
    scanned_pdf,
    zip_bytes,
)


@pytest.mark.parametrize(
    ("name", "make", "content_type", "pages", "headings"),
    [
        ("report.docx", docx_bytes, DOCX, 1, {"", "Revenue", "Costs"}),
        ("deck.pptx", pptx_bytes, PPTX, 2, {"Launch plan", "Milestones"}),
        ("solar.html", lambda: HTML_PAGE.encode(), HTML, 1, {"Solar panels explained", "Efficiency", "Costs"}),
        ("people.csv", lambda: csv_bytes("cp949", ";"), CSV, 1, {""}),
    ],
)
async def test_each_format_is_ingested_with_its_headings(
    ingest: Running,  # noqa: F811
    name: str,
    make: object,
    content_type: str,
    pages: int,
    headings: set[str],
) -> None:
    data = make()  # type: ignore[operator]
    response = await upload(ingest.stub, "alice", name, data)
    events = await watch(ingest.stub, "alice", response.job_id)
    done = events[-1]
    assert done.stage == common_pb2.INGEST_STAGE_DONE, done.message
    assert (done.document.content_type, done.document.pages) == (content_type, pages)
    (call,) = ingest.indexer.calls
    assert {chunk.heading for chunk in call.chunks} == headings
    assert call.content_type == content_type


@pytest.mark.skipif(not NANUM.exists(), reason="fonts-nanum is not installed")
async def test_a_scanned_pdf_is_read_by_ocr_inside_the_sandbox(ingest: Running) -> None:  # noqa: F811
    scan = scanned_pdf(["한국어 문서를 광학 문자 인식으로 읽습니다", "Optical character recognition works"])
    response = await upload(ingest.stub, "alice", "scan.pdf", scan)
    events = await watch(ingest.stub, "alice", response.job_id)
    assert events[-1].stage == common_pb2.INGEST_STAGE_DONE, events[-1].message
    assert events[-1].document.content_type == PDF
    (call,) = ingest.indexer.calls
    text = " ".join(chunk.text for chunk in call.chunks)
    assert "문서" in text and "recognition" in text
    assert events[-1].document.language == "ko"


async def test_a_decompression_bomb_is_refused_at_upload(ingest: Running) -> None:  # noqa: F811
    bomb = zip_bytes({"word/document.xml": bytes(30 * 1024 * 1024)}, content_types=WORD_CONTENT_TYPES)
    error = await rpc_error(upload(ingest.stub, "alice", "invoice.docx", bomb))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "decompression bomb" in (error.details() or "")
    assert ingest.indexer.calls == []
