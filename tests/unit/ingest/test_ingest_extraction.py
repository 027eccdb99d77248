"""Extraction of real PDFs, of a PDF without text, and of text and Markdown files."""

from __future__ import annotations

from pathlib import Path

import pypdfium2 as pdfium
import pytest

from services.ingest.extraction import (
    NO_TEXT_IN_PDF,
    OCR_FOUND_NOTHING,
    Extracted,
    ExtractionError,
    ParseOptions,
    clean_text,
    meaningful_title,
    parse_markdown,
    parse_pdf,
    parse_text,
)
from services.ingest.sandbox import Extractor

PDFS = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "pdfs"
needs_pdfs = pytest.mark.skipif(not PDFS.exists(), reason=f"real PDFs not found in {PDFS}")
OPTIONS = ParseOptions()


def no_progress(current: int, total: int) -> None:
    return None


def blank_pdf(pages: int = 1) -> bytes:
    document = pdfium.PdfDocument.new()
    for _ in range(pages):
        document.new_page(595, 842)
    import io

    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


@needs_pdfs
@pytest.mark.parametrize(
    ("name", "pages", "phrase"),
    [
        ("arxiv-2203.06947.pdf", 10, "XYLayoutLM"),
        ("federal-register-2020-17221.pdf", 15, "Federal Aviation Administration"),
        ("nics-background-checks-2015-11.pdf", 1, "Alabama"),
    ],
)
def test_real_pdfs_yield_text_per_page(name: str, pages: int, phrase: str) -> None:
    progress: list[tuple[int, int]] = []
    extracted = parse_pdf((PDFS / name).read_bytes(), lambda current, total: progress.append((current, total)), OPTIONS)
    assert extracted.page_count == pages
    assert [page.number for page in extracted.pages] == list(range(1, pages + 1))
    assert all(page.text.strip() for page in extracted.pages)
    assert phrase in extracted.pages[0].text
    assert progress == [(n, pages) for n in range(1, pages + 1)]
    assert "\r" not in extracted.text and "\x02" not in extracted.text


@needs_pdfs
def test_pdf_soft_hyphens_are_joined() -> None:
    text = parse_pdf((PDFS / "arxiv-2203.06947.pdf").read_bytes(), no_progress, OPTIONS).pages[0].text
    assert "proposed" in text and "integrating" in text
    assert "Visually-Rich Document Understanding(VRDU)" in text


@needs_pdfs
async def test_real_pdfs_extract_through_the_sandbox() -> None:
    extracted = await Extractor(timeout_seconds=60, memory_mb=2048).extract(
        "application/pdf", (PDFS / "federal-register-2020-17221.pdf").read_bytes()
    )
    assert isinstance(extracted, Extracted) and extracted.page_count == 15


def test_a_pdf_without_a_text_layer_fails_clearly_when_ocr_is_off() -> None:
    with pytest.raises(ExtractionError) as caught:
        parse_pdf(blank_pdf(2), no_progress, ParseOptions(ocr=False))
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", NO_TEXT_IN_PDF)


def test_a_blank_scan_fails_clearly_when_ocr_reads_nothing() -> None:
    with pytest.raises(ExtractionError) as caught:
        parse_pdf(blank_pdf(1), no_progress, OPTIONS)
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", OCR_FOUND_NOTHING)


def test_a_damaged_pdf_fails_clearly() -> None:
    with pytest.raises(ExtractionError) as caught:
        parse_pdf(b"%PDF-1.7\nthis is not really a pdf", no_progress, OPTIONS)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message.startswith("the PDF cannot be read")


def test_text_files_are_one_page_zero() -> None:
    extracted = parse_text("첫 줄입니다.\r\n둘째 줄\t \r\n\r\n\r\n\r\n끝.".encode("cp949"), no_progress, OPTIONS)
    (page,) = extracted.pages
    assert (page.number, page.text) == (0, "첫 줄입니다.\n둘째 줄\n\n끝.")
    assert extracted.title == ""


def test_whitespace_only_text_has_nothing_to_extract() -> None:
    with pytest.raises(ExtractionError, match="contains no text"):
        parse_text(b" \n\t\n ", no_progress, OPTIONS)


def test_markdown_keeps_text_and_takes_its_first_heading_as_title() -> None:
    source = "# Quarterly Report\n\nRevenue grew.\n\n## Costs\n\nCosts fell.\n"
    extracted = parse_markdown(source.encode(), no_progress, OPTIONS)
    assert extracted.title == "Quarterly Report"
    (page,) = extracted.pages
    assert page.text == source.strip()
    assert [section.heading for section in page.sections] == ["Quarterly Report", "Costs"]


def test_clean_text_normalises_ligatures_and_controls() -> None:
    assert clean_text("ﬁnd\x07 the   ﬂow \r\n") == "find the flow"


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        ("XYLayoutLM: Towards Layout-Aware Networks", "XYLayoutLM: Towards Layout-Aware Networks"),
        ("Microsoft Word - Annual plan", "Annual plan"),
        ("untitled", ""),
        ("report_final.docx", ""),
        ("   ", ""),
        ("1234", ""),
        ("검색 증강 생성 안내서", "검색 증강 생성 안내서"),
    ],
)
def test_only_meaningful_titles_are_kept(raw: str, title: str) -> None:
    assert meaningful_title(raw) == title
