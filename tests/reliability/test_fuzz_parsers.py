"""Property-based fuzzing of what reads uploaded bytes: file names, type sniffing, every extractor.

Contract: whatever the bytes, ``sanitize_filename`` returns a safe display name or refuses
with INVALID_ARGUMENT; ``sniff`` returns a supported type or INVALID_ARGUMENT; an extractor
returns cleaned pages whose sections lie inside their text (and chunk within the chunker's
contract) or raises :class:`ExtractionError` with a status a person can act on, never an
unexpected exception (which the sandbox would report as INTERNAL). The PDF parser (native
pdfium) runs in the real sandbox, a child process with a memory and a time limit; the
pure-Python parsers run in-process.

Inputs: arbitrary bytes, text in several encodings, and mutations (bit flips, cuts, inserted
and duplicated runs) of valid PDF, DOCX, PPTX, HTML and CSV files made here.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
import unicodedata
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.ingest.archives import DOCX, PPTX, ArchiveLimits
from services.ingest.chunking import chunk_pages
from services.ingest.extraction import (
    Extracted,
    ExtractionError,
    ParseOptions,
    parse_csv,
    parse_docx,
    parse_html,
    parse_markdown,
    parse_pptx,
    parse_text,
)
from services.ingest.files import CSV, HTML, MARKDOWN, PDF, TEXT, FileType, sanitize_filename, sniff
from services.ingest.sandbox import Extractor
from tests.reliability import hostile_corpus as corpus
from tests.unit.ingest.ingest_samples import HTML_PAGE, csv_bytes, docx_bytes, pptx_bytes

FAST = settings.get_profile("reliability-fast")
SOAK = settings.get_profile("reliability-soak")
SOAK_SECONDS = 3600  # per soak test (the fast tests keep the default 120 s)

OPTIONS = ParseOptions(ocr=False, archive_limits=ArchiveLimits())
# What a broken file may get: never INTERNAL (an unexpected exception) nor UNKNOWN.
EXTRACTION_CODES = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})
SANDBOX_TIMEOUT = 10.0
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


# -- seeds and mutations -------------------------------------------------------------------------


@functools.cache
def seeds() -> dict[str, bytes]:
    return {
        PDF: corpus.good_pdf(),
        DOCX: docx_bytes(),
        PPTX: pptx_bytes(),
        HTML: HTML_PAGE.encode(),
        CSV: csv_bytes(),
        MARKDOWN: "# 제목\n\nFirst paragraph. Second sentence.\n\n## Part two\n\n- item\n- 항목\n".encode(),
        TEXT: (corpus.ENGLISH + corpus.KOREAN).encode() * 3,
    }


@st.composite
def mutations(draw: Callable[..., Any], seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        match draw(st.sampled_from(["flip", "byte", "cut", "insert", "delete", "repeat"])):
            case "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            case "byte":
                data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, ord("("), ord(")"), ord("<"), ord("/")]))
            case "cut":
                del data[at:]
            case "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=64))
            case "delete":
                del data[at : at + draw(st.integers(1, 256))]
            case "repeat":
                data[at:at] = data[at : at + draw(st.integers(1, 512))] * draw(st.integers(1, 8))
    return bytes(data)


def inputs(content_type: str) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, bytes with the format's magic, and mutations of a valid file of the type."""
    return st.deferred(lambda: _inputs(content_type))


def _inputs(content_type: str) -> st.SearchStrategy[bytes]:
    seed = seeds()[content_type]
    magic = {PDF: b"%PDF-1.7\n", DOCX: b"PK\x03\x04", PPTX: b"PK\x03\x04"}.get(content_type, b"")
    return st.one_of(
        st.binary(max_size=2048),
        st.binary(max_size=2048).map(lambda tail: magic + tail),
        mutations(seed),
        mutations(seed),
        mutations(seed),
    )


_ANY_CHAR = st.characters(codec="utf-8")
_ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-32", "cp949", "euc_kr", "cp1252", "latin_1"]


@st.composite
def encoded_text(draw: Callable[..., Any]) -> bytes:
    """Text, with Markdown/HTML/CSV-ish fragments, in an encoding that can hold it (else UTF-8)."""
    fragments = st.sampled_from(["# ", "\n", "\n\n", ",", ";", '"', "<p>", "</p>", "<html>", "```", "|", "\t", "다. "])
    text = "".join(draw(st.lists(st.one_of(fragments, st.text(_ANY_CHAR, max_size=12)), max_size=40)))
    encoding = draw(st.sampled_from(_ENCODINGS))
    try:
        return text.encode(encoding)
    except UnicodeEncodeError:
        return text.encode("utf-8")


# -- properties ----------------------------------------------------------------------------------


def check_extracted(result: Extracted) -> None:
    assert result.pages, "at least one page"
    assert any(page.text for page in result.pages), "some text (else an ExtractionError)"
    for page in result.pages:
        assert not _CONTROL.search(page.text), "control characters are cleaned away"
        previous_end = 0
        for section in page.sections:
            assert previous_end <= section.start <= section.end <= len(page.text)
            previous_end = section.end
    for chunk in chunk_pages("d", result.pages, target_tokens=50, overlap_tokens=10):
        page = next(page for page in result.pages if page.number == chunk.page)
        assert page.text[chunk.char_start : chunk.char_end] == chunk.text


def check_error(error: ExtractionError) -> None:
    assert error.code in EXTRACTION_CODES, f"{error.code}: {error.message}"
    assert error.message.strip()


_IN_PROCESS: dict[str, Callable[[bytes, Callable[[int, int], None], ParseOptions], Extracted]] = {
    TEXT: parse_text,
    MARKDOWN: parse_markdown,
    HTML: parse_html,
    CSV: parse_csv,
    DOCX: parse_docx,
    PPTX: parse_pptx,
}


def in_process_parser_holds(content_type: str, data: bytes) -> None:
    progress: list[tuple[int, int]] = []
    try:
        result = _IN_PROCESS[content_type](data, lambda current, total: progress.append((current, total)), OPTIONS)
    except ExtractionError as error:
        check_error(error)
        return
    check_extracted(result)
    assert progress and progress[-1][0] == progress[-1][1], "progress ends at its total"


@functools.cache
def sandbox() -> Extractor:
    return Extractor(timeout_seconds=SANDBOX_TIMEOUT, memory_mb=512, options=OPTIONS)


def pdf_in_the_sandbox_holds(data: bytes) -> None:
    started = time.monotonic()
    try:
        result = asyncio.run(sandbox().extract(PDF, data))
    except ExtractionError as error:
        check_error(error)
    else:
        check_extracted(result)
    assert time.monotonic() - started < SANDBOX_TIMEOUT + 5


PARSED_TYPES = [TEXT, MARKDOWN, HTML, CSV, DOCX, PPTX]


@pytest.fixture(scope="module", autouse=True)
def parsers_loaded() -> None:
    """Import the format libraries once (trafilatura takes seconds), so no example pays for it."""
    for content_type in PARSED_TYPES:
        in_process_parser_holds(content_type, seeds()[content_type])


@settings(FAST, max_examples=30)
@pytest.mark.parametrize("content_type", PARSED_TYPES)
@given(data=st.data())
def test_an_extractor_answers_any_bytes_with_pages_or_a_clear_error(content_type: str, data: st.DataObject) -> None:
    sample = data.draw(
        st.one_of(inputs(content_type), encoded_text())
        if content_type in (TEXT, MARKDOWN, HTML, CSV)
        else inputs(content_type)
    )
    in_process_parser_holds(content_type, sample)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS)
@SOAK
@pytest.mark.parametrize("content_type", PARSED_TYPES)
@given(data=st.data())
def test_soak_an_extractor_answers_any_bytes_with_pages_or_a_clear_error(
    content_type: str, data: st.DataObject
) -> None:
    sample = data.draw(
        st.one_of(inputs(content_type), encoded_text())
        if content_type in (TEXT, MARKDOWN, HTML, CSV)
        else inputs(content_type)
    )
    in_process_parser_holds(content_type, sample)


@settings(FAST, max_examples=20, deadline=None)
@given(inputs(PDF))
def test_the_pdf_extractor_in_its_sandbox_answers_any_bytes(data: bytes) -> None:
    pdf_in_the_sandbox_holds(data)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS)
@settings(SOAK, max_examples=500, deadline=None)
@given(inputs(PDF))
def test_soak_the_pdf_extractor_in_its_sandbox_answers_any_bytes(data: bytes) -> None:
    pdf_in_the_sandbox_holds(data)


# -- names and types ------------------------------------------------------------------------------

_NAME_PIECES = st.one_of(
    st.text(_ANY_CHAR, max_size=20),
    st.sampled_from(
        [
            "../",
            "..",
            "/",
            "\\",
            "\x00",
            "\u202e",
            "\u200b",
            ".",
            " ",
            "보고서",
            "e\u0301",
            ".pdf",
            ".txt",
            ".docx",
            ".exe",
        ]
    ),
)
names = st.lists(_NAME_PIECES, max_size=12).map("".join) | st.text(_ANY_CHAR, min_size=190, max_size=320)


def refusal(action: Callable[[], object]) -> tuple[object, str | None]:
    """What ``action`` returns, or the message of the InvalidArgument it raises."""
    try:
        return action(), None
    except InvalidArgument as error:
        return None, error.message


def name_is_safe(raw: str) -> None:
    name, refused = refusal(lambda: sanitize_filename(raw))
    if refused is not None:
        assert "has no usable characters" in refused
        return
    assert isinstance(name, str)
    assert name and len(name) <= 200
    assert "/" not in name and "\\" not in name and ".." not in name
    assert name == name.strip(" .")
    assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name)
    assert not any(ch in '<>:"|?*' for ch in name)
    assert unicodedata.is_normalized("NFC", name)
    assert sanitize_filename(name) == name, "a safe name stays as it is"


def sniff_answers(filename: str, data: bytes) -> None:
    name, refused = refusal(lambda: sanitize_filename(filename))
    if refused is not None:
        return
    assert isinstance(name, str)
    found, refused = refusal(lambda: sniff(name, data))
    if refused is not None:
        assert refused.startswith(name), refused
        return
    assert isinstance(found, FileType)
    assert found.content_type in {PDF, TEXT, MARKDOWN, HTML, CSV, DOCX, PPTX}


@settings(FAST, max_examples=150)
@given(names)
def test_a_file_name_becomes_a_safe_display_name_or_is_refused(raw: str) -> None:
    name_is_safe(raw)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS)
@SOAK
@given(names)
def test_soak_a_file_name_becomes_a_safe_display_name_or_is_refused(raw: str) -> None:
    name_is_safe(raw)


_FILENAMES = names | st.sampled_from(["a.pdf", "a.txt", "a.md", "a.html", "a.csv", "a.docx", "a.pptx", "a", "a.exe"])
_ANY_UPLOAD = st.one_of(
    *(inputs(content_type) for content_type in (PDF, DOCX, PPTX, HTML, CSV, MARKDOWN, TEXT)), encoded_text()
)


@settings(FAST, max_examples=100)
@given(_FILENAMES, _ANY_UPLOAD)
def test_sniffing_answers_a_supported_type_or_a_message_naming_the_file(filename: str, data: bytes) -> None:
    sniff_answers(filename, data)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS)
@SOAK
@given(_FILENAMES, _ANY_UPLOAD)
def test_soak_sniffing_answers_a_supported_type_or_a_message_naming_the_file(filename: str, data: bytes) -> None:
    sniff_answers(filename, data)
