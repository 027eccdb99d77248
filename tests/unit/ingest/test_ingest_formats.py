"""Every supported format: sniffed from its bytes, extracted with pages, headings and readable tables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.ingest.archives import ArchiveLimits
from services.ingest.chunking import chunk_pages
from services.ingest.extraction import (
    OCR_FOUND_NOTHING,
    ExtractionError,
    ParseOptions,
    parse_csv,
    parse_docx,
    parse_html,
    parse_pdf,
    parse_pptx,
    strip_running_lines,
)
from services.ingest.files import CSV, DOCX, HTML, PDF, PPTX, TEXT, sniff
from tests.unit.ingest.ingest_samples import (
    DEJAVU,
    HTML_PAGE,
    NANUM,
    WORD_CONTENT_TYPES,
    csv_bytes,
    docx_bytes,
    pptx_bytes,
    scanned_pdf,
    zip_bytes,
)

OPTIONS = ParseOptions()
PDFS = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "pdfs"
needs_pdfs = pytest.mark.skipif(not PDFS.exists(), reason=f"real PDFs not found in {PDFS}")


def no_progress(current: int, total: int) -> None:
    return None


# -- sniffing ----------------------------------------------------------------------------


def test_office_files_are_told_apart_by_their_content_types_part_not_their_name() -> None:
    assert sniff("report.docx", docx_bytes()).content_type == DOCX
    assert sniff("slides.pptx", pptx_bytes()).content_type == PPTX
    assert sniff("no-extension", docx_bytes()).content_type == DOCX
    with pytest.raises(
        InvalidArgument,
        match=r"^slides\.docx is not a Word document \(\.docx\): its content looks "
        r"like a PowerPoint presentation",
    ):
        sniff("slides.docx", pptx_bytes())
    with pytest.raises(InvalidArgument, match=r"^report\.pdf is not a PDF: its content looks like a Word document"):
        sniff("report.pdf", docx_bytes())
    with pytest.raises(
        InvalidArgument,
        match=r"^report\.txt is a Word document \(\.docx\), not plain text; "
        r"rename it to \.docx",
    ):
        sniff("report.txt", docx_bytes())


def test_a_plain_zip_named_docx_is_not_a_word_document() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"^fake\.docx is not a Word document \(\.docx\): its content looks "
        r"like a ZIP archive",
    ):
        sniff("fake.docx", zip_bytes({"readme.txt": b"hello"}))


def test_html_and_csv_are_text_types() -> None:
    assert sniff("page.html", HTML_PAGE.encode()).content_type == HTML
    assert sniff("page.htm", HTML_PAGE.encode()).content_type == HTML
    assert sniff("page", HTML_PAGE.encode()).content_type == HTML  # no extension: the markup decides
    assert sniff("notes", b"just words").content_type == TEXT
    people = sniff("people.csv", csv_bytes("cp949"))
    assert (people.content_type, people.encoding) in ((CSV, "cp949"), (CSV, "euc_kr"))
    with pytest.raises(InvalidArgument, match=r"^table\.csv is not a CSV table: its content looks like binary"):
        sniff("table.csv", os.urandom(2048))


def test_a_decompression_bomb_is_rejected_before_it_is_inflated() -> None:
    bomb = zip_bytes({"word/document.xml": bytes(20 * 1024 * 1024)}, content_types=WORD_CONTENT_TYPES)
    assert len(bomb) < 100_000
    with pytest.raises(InvalidArgument, match=r"^bomb\.docx: the document would inflate \d+-fold .*decompression bomb"):
        sniff("bomb.docx", bomb)
    small_limit = ArchiveLimits(max_uncompressed_bytes=1024 * 1024, max_ratio=1e9)
    with pytest.raises(InvalidArgument, match=r"would inflate to 20\.0 MB; the limit is 1\.0 MB"):
        sniff("bomb.docx", bomb, small_limit)
    many = zip_bytes({f"part{i}.xml": b"x" for i in range(50)}, content_types=WORD_CONTENT_TYPES)
    with pytest.raises(InvalidArgument, match=r"the archive has 51 members; at most 20 are accepted"):
        sniff("many.docx", many, ArchiveLimits(max_members=20))


def test_the_parser_checks_the_archive_again_in_the_sandbox() -> None:
    bomb = zip_bytes({"word/document.xml": bytes(20 * 1024 * 1024)}, content_types=WORD_CONTENT_TYPES)
    with pytest.raises(ExtractionError) as caught:
        parse_docx(bomb, no_progress, OPTIONS)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert "decompression bomb" in caught.value.message


# -- DOCX, PPTX --------------------------------------------------------------------------


def test_docx_keeps_headings_as_sections_and_tables_as_rows() -> None:
    extracted = parse_docx(docx_bytes(), no_progress, OPTIONS)
    assert extracted.title == "Quarterly Report"
    [page] = extracted.pages
    assert page.number == 0
    by_heading = {section.heading: page.text[section.start : section.end] for section in page.sections}
    assert by_heading[""] == "Prepared by the finance team."
    assert by_heading["Revenue"].startswith("Revenue grew by twelve percent.")
    assert "Region | Q1 | Q2\nNorth | 10 | 12\nSouth | 7 | 9" in by_heading["Revenue"]
    assert by_heading["Costs"] == "비용은 작년과 비슷했습니다. 인건비가 가장 큰 항목입니다."
    chunks = chunk_pages("d", extracted.pages, target_tokens=50, overlap_tokens=0)
    assert {chunk.heading for chunk in chunks} == {"", "Revenue", "Costs"}
    assert all(page.text[chunk.char_start : chunk.char_end] == chunk.text for chunk in chunks)


def test_pptx_is_one_page_per_slide_with_the_slide_title_as_heading() -> None:
    progress: list[tuple[int, int]] = []
    extracted = parse_pptx(pptx_bytes(), lambda current, total: progress.append((current, total)), OPTIONS)
    assert [page.number for page in extracted.pages] == [1, 2]
    assert progress == [(1, 2), (2, 2)]
    first, second = extracted.pages
    assert [section.heading for section in first.sections] == ["Launch plan"]
    assert "Ship the beta in March.\nCollect feedback from ten customers." in first.text
    assert "Speaker note: mention the budget." in first.text
    assert [section.heading for section in second.sections] == ["Milestones"]
    assert "Milestone | Date\nBeta | March\nGA | June" in second.text
    assert extracted.title == "Launch plan"


def test_a_damaged_office_file_fails_clearly() -> None:
    broken = zip_bytes({"word/document.xml": b"<not-xml"}, content_types=WORD_CONTENT_TYPES)
    with pytest.raises(ExtractionError) as caught:
        parse_docx(broken, no_progress, OPTIONS)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message.startswith("the Word document cannot be read")


# -- HTML, CSV ---------------------------------------------------------------------------


def test_html_boilerplate_is_stripped_and_headings_kept() -> None:
    extracted = parse_html(HTML_PAGE.encode(), no_progress, OPTIONS)
    [page] = extracted.pages
    for boilerplate in (
        "do-not-index-this-script",
        "cookie-banner-menu",
        "newsletter-banner",
        "sidebar-advert",
        "footer-legal-text",
        "color:red",
    ):
        assert boilerplate not in page.text
    assert "photovoltaic cells" in page.text
    headings = [section.heading for section in page.sections]
    assert headings[-2:] == ["Efficiency", "Costs"]
    costs = next(section for section in page.sections if section.heading == "Costs")
    assert page.text[costs.start : costs.end].strip().startswith("Prices fell by more than eighty percent")
    assert extracted.title == "Solar panels explained"


@pytest.mark.parametrize(("encoding", "delimiter"), [("utf-8", ","), ("cp949", ";"), ("utf-16", "\t")])
def test_each_csv_row_keeps_its_headers(encoding: str, delimiter: str) -> None:
    extracted = parse_csv(csv_bytes(encoding, delimiter), no_progress, OPTIONS)
    [page] = extracted.pages
    assert page.text.split("\n\n") == [
        "이름: 김민수; 도시: 서울; 나이: 34",
        "이름: Jane Doe; 도시: Busan; 나이: 29",
        "이름: 박지영; 도시: 대구; 나이: 41",
    ]
    # Rows are whole units: a chunk never cuts one from its headers.
    chunks = chunk_pages("d", extracted.pages, target_tokens=20, overlap_tokens=0)
    assert all(chunk.text.startswith("이름: ") for chunk in chunks)


# -- PDF ---------------------------------------------------------------------------------


def test_running_headers_and_footers_are_removed_but_the_body_kept() -> None:
    bodies = [
        "Revenue grew in every region.\nThe north led with 12 percent.",
        "Costs stayed flat.\nSalaries are the largest item.",
        "We hired forty engineers.\nAttrition fell to 6 percent.",
        "The outlook is cautious.\nDemand may soften in winter.",
        "Risks include currency moves.\nSupply chains look stable.",
    ]
    pages = [
        f"ACME Annual Report 2024 — page {n + 1}\n{body}\nConfidential. Printed 2024-05-0{n + 1}\n{n + 1}"
        for n, body in enumerate(bodies)
    ]
    stripped = strip_running_lines(pages)
    assert stripped == bodies
    # Fewer than 3 pages: nothing counts as running.
    assert strip_running_lines(pages[:2])[0].startswith("ACME Annual Report")


@needs_pdfs
def test_the_federal_registers_running_header_does_not_leak_into_chunks() -> None:
    extracted = parse_pdf((PDFS / "federal-register-2020-17221.pdf").read_bytes(), no_progress, OPTIONS)
    chunks = chunk_pages("d", extracted.pages)
    leaks = [chunk for chunk in chunks if "No. 152 / Thursday, August 6, 2020 / Proposed Rules" in chunk.text]
    assert leaks == []
    assert not any("jbell on DSKJLSW7X2PROD" in page.text for page in extracted.pages)
    # Pages 2-15 started with the header; the body now starts each page.
    assert extracted.pages[1].text.startswith("1Preliminary KNKT.18.10.35.04 Aircraft")
    # Page 8 is a figure (an image with only the running header as text): OCR reads it.
    assert "Airspeed Unreliable" in extracted.pages[7].text


@needs_pdfs
def test_a_table_page_is_chunked_at_row_boundaries() -> None:
    extracted = parse_pdf((PDFS / "nics-background-checks-2015-11.pdf").read_bytes(), no_progress, OPTIONS)
    chunks = chunk_pages("d", extracted.pages, target_tokens=120, overlap_tokens=0)
    assert len(chunks) > 3
    rows = {line.split(" ")[0] for chunk in chunks for line in chunk.text.split("\n")}
    assert {"Alabama", "Alaska", "Wyoming"} <= rows
    # No row is cut in two: every chunk line that starts with a state ends with its total.
    alabama = next(line for chunk in chunks for line in chunk.text.split("\n") if line.startswith("Alabama"))
    assert alabama.endswith("71,137")


# -- OCR ---------------------------------------------------------------------------------


@pytest.mark.skipif(not NANUM.exists(), reason="fonts-nanum is not installed")
def test_a_scanned_korean_and_english_pdf_is_read_by_ocr() -> None:
    scan = scanned_pdf(["검색 증강 생성 시스템 안내서", "Retrieval augmented generation guide"])
    with pytest.raises(ExtractionError):
        parse_pdf(scan, no_progress, ParseOptions(ocr=False))
    extracted = parse_pdf(scan, no_progress, OPTIONS)
    text = extracted.pages[0].text
    assert "검색" in text and "생성" in text
    assert "Retrieval augmented generation" in text


@pytest.mark.skipif(not DEJAVU.exists(), reason="fonts-dejavu is not installed")
def test_ocr_that_is_unavailable_or_reads_nothing_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    scan = scanned_pdf(["A scanned page"], font=DEJAVU)
    with pytest.raises(ExtractionError) as missing_language:
        parse_pdf(scan, no_progress, ParseOptions(ocr_languages="zzz"))
    assert missing_language.value.code == "FAILED_PRECONDITION"
    assert "OCR is unavailable: tesseract lacks a language of OCR_LANGUAGES='zzz'" in missing_language.value.message
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ExtractionError) as not_installed:
        parse_pdf(scan, no_progress, OPTIONS)
    assert not_installed.value.code == "FAILED_PRECONDITION"
    assert "the tesseract program is not installed" in not_installed.value.message
    assert OCR_FOUND_NOTHING.startswith("no extractable text")


def test_real_pdfs_sniff_as_pdf() -> None:
    assert sniff("scan.pdf", scanned_pdf(["x"], font=DEJAVU) if DEJAVU.exists() else b"%PDF-1.4").content_type == PDF
