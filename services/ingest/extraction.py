"""Text extraction with page numbers: PDF (pypdfium2), plain text and Markdown.

These parsers run inside the sandbox child process (see :mod:`services.ingest.sandbox`), so
this module stays light: no gRPC, no asyncio. Each parser takes the file's bytes and a
``progress(current, total)`` callback and returns :class:`Extracted`, or raises
:class:`ExtractionError` with a gRPC status name and a message a person can act on.

The extracted text of a page is cleaned once here (line endings, ligatures, PDF soft
hyphens, control characters); chunk offsets point into exactly this text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from services.common.text import normalize
from services.ingest.files import decode_text

Progress = Callable[[int, int], None]

NO_TEXT_IN_PDF = "no extractable text (scanned PDF? OCR is not enabled)"


class ExtractionError(Exception):
    """Extraction failed for a reason tied to the file; ``code`` is a gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Section:
    """A span of a page's text under one heading ("" before the first heading)."""

    start: int
    end: int
    heading: str


@dataclass(frozen=True)
class Page:
    number: int  # 1-based for PDF pages, 0 for formats without pages
    text: str
    sections: tuple[Section, ...]


@dataclass(frozen=True)
class Extracted:
    pages: tuple[Page, ...]
    # The title the file carries (PDF metadata, first Markdown heading); "" when none.
    title: str

    @property
    def page_count(self) -> int:
        return sum(1 for page in self.pages if page.number > 0) or len(self.pages)

    @property
    def text(self) -> str:
        return "\n\n".join(page.text for page in self.pages if page.text)


_SOFT_HYPHEN_BEFORE_CAPITAL = re.compile(r"[\x02\ufffe\u00ad]\n?(?=[A-Z])")
_SOFT_HYPHEN = re.compile(r"[\x02\ufffe\u00ad]\n?")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(```|~~~)", re.MULTILINE)
_JUNK_TITLES = frozenset({"untitled", "title", "document", "unknown", "none", "slide 1", "microsoft word"})
_FILE_LIKE_TITLE = re.compile(r"\.(docx?|pdf|tex|dvi|indd|pptx?|xlsx?|rtf|txt|odt)$", re.IGNORECASE)


def clean_text(text: str) -> str:
    """Uniform line endings, NFKC, no control characters, no trailing spaces or blank-line runs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SOFT_HYPHEN_BEFORE_CAPITAL.sub("-", text)
    text = _SOFT_HYPHEN.sub("", text)
    text = normalize(text)
    text = _CONTROL.sub("", text)
    text = _TRAILING_SPACE.sub("\n", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def meaningful_title(raw: str) -> str:
    """A document title worth showing, or "" (empty, junk like "Untitled", or a file name)."""
    title = " ".join(raw.split()).strip(" -_.")
    title = title.removeprefix("Microsoft Word - ").removeprefix("Microsoft PowerPoint - ")
    if len(title) < 3 or title.lower() in _JUNK_TITLES or _FILE_LIKE_TITLE.search(title):
        return ""
    if not any(ch.isalpha() for ch in title):
        return ""
    return title[:300]


def _whole_page(number: int, text: str) -> Page:
    return Page(number, text, (Section(0, len(text), ""),) if text else ())


def parse_pdf(data: bytes, progress: Progress) -> Extracted:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as error:
        if "password" in str(error).lower():
            raise ExtractionError(
                "INVALID_ARGUMENT", "the PDF is password-protected; upload a copy without a password"
            ) from None
        raise ExtractionError("INVALID_ARGUMENT", f"the PDF cannot be read ({error}); is the file damaged?") from None
    try:
        total = len(pdf)
        if total == 0:
            raise ExtractionError("INVALID_ARGUMENT", "the PDF has no pages")
        pages: list[Page] = []
        for index in range(total):
            page = pdf[index]
            try:
                textpage = page.get_textpage()
                try:
                    text = clean_text(textpage.get_text_bounded())
                finally:
                    textpage.close()
            finally:
                page.close()
            pages.append(_whole_page(index + 1, text))
            progress(index + 1, total)
        if not any(page.text for page in pages):
            raise ExtractionError("INVALID_ARGUMENT", NO_TEXT_IN_PDF)
        try:
            metadata_title = pdf.get_metadata_dict().get("Title", "")
        except pdfium.PdfiumError:
            metadata_title = ""
        return Extracted(tuple(pages), meaningful_title(metadata_title))
    finally:
        pdf.close()


def _decode(data: bytes) -> str:
    decoded = decode_text(data)
    if decoded is None:
        raise ExtractionError("INVALID_ARGUMENT", "the file is not text in a supported encoding")
    text = clean_text(decoded.text)
    if not text:
        raise ExtractionError("INVALID_ARGUMENT", "the file contains no text")
    return text


def parse_text(data: bytes, progress: Progress) -> Extracted:
    text = _decode(data)
    progress(1, 1)
    return Extracted((_whole_page(0, text),), "")


def markdown_sections(text: str) -> tuple[Section, ...]:
    """Split Markdown at ATX headings (``#`` .. ``######``) outside fenced code blocks.

    A heading line itself belongs to no section: its text becomes the ``heading`` of the
    section that follows it, up to the next heading.
    """
    fences = [match.start() for match in _FENCE.finditer(text)]
    fenced: list[tuple[int, int]] = []
    for i in range(0, len(fences) - 1, 2):
        fenced.append((fences[i], fences[i + 1]))
    if len(fences) % 2:
        fenced.append((fences[-1], len(text)))

    def in_fence(position: int) -> bool:
        return any(start < position < end for start, end in fenced)

    sections: list[Section] = []
    start, heading = 0, ""
    for match in _ATX_HEADING.finditer(text):
        if in_fence(match.start()):
            continue
        if text[start : match.start()].strip():
            sections.append(Section(start, match.start(), heading))
        heading = match.group(2).strip()
        start = match.end()
    if text[start:].strip():
        sections.append(Section(start, len(text), heading))
    return tuple(sections)


def first_heading(text: str) -> str:
    match = _ATX_HEADING.search(text)
    return match.group(2).strip() if match else ""


def parse_markdown(data: bytes, progress: Progress) -> Extracted:
    text = _decode(data)
    progress(1, 1)
    sections = markdown_sections(text)
    if not sections:
        raise ExtractionError("INVALID_ARGUMENT", "the Markdown file has headings but no text")
    return Extracted((Page(0, text, sections),), meaningful_title(first_heading(text)))


# Parser entry points by content type, as "module:function" so the sandbox child imports them.
PARSERS: dict[str, str] = {
    "application/pdf": "services.ingest.extraction:parse_pdf",
    "text/plain": "services.ingest.extraction:parse_text",
    "text/markdown": "services.ingest.extraction:parse_markdown",
}
