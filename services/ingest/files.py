"""What an uploaded file is: a safe display name, and its type sniffed from its bytes.

The client's file name and declared content type are never trusted: the name is reduced to
a safe display name (it is never used to build a storage key), and the type is decided by
the bytes, then checked against the name's extension.
"""

from __future__ import annotations

import codecs
import hashlib
import re
import unicodedata
from dataclasses import dataclass

from charset_normalizer import from_bytes

from services.common.errors import InvalidArgument
from services.ingest.archives import DOCX as DOCX
from services.ingest.archives import PPTX as PPTX
from services.ingest.archives import XLSX, ArchiveError, ArchiveLimits, office_type

PDF = "application/pdf"
TEXT = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
CSV = "text/csv"

MAX_FILENAME_CHARS = 200
_MAX_EXTENSION_CHARS = 16

_EXTENSIONS = {
    ".pdf": PDF,
    ".txt": TEXT,
    ".text": TEXT,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".html": HTML,
    ".htm": HTML,
    ".csv": CSV,
    ".docx": DOCX,
    ".pptx": PPTX,
}
SUPPORTED_TYPES = (
    "PDF (.pdf), plain text (.txt), Markdown (.md, .markdown), HTML (.html, .htm), CSV (.csv), "
    "Word (.docx) and PowerPoint (.pptx)"
)
# How each type is named in messages.
KIND: dict[str, str] = {
    PDF: "a PDF document",
    TEXT: "plain text",
    MARKDOWN: "Markdown",
    HTML: "an HTML page",
    CSV: "a CSV table",
    DOCX: "a Word document (.docx)",
    PPTX: "a PowerPoint presentation (.pptx)",
    XLSX: "an Excel workbook (.xlsx)",
}
_BINARY_EXTENSION = {PDF: ".pdf", DOCX: ".docx", PPTX: ".pptx"}
_TEXT_TYPES = frozenset({TEXT, MARKDOWN, HTML, CSV})
_HTML_START = re.compile(rb"^\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)[\s>]", re.IGNORECASE | re.DOTALL)

# Windows-reserved and shell-hostile characters become "_".
_RESERVED = re.compile(r'[<>:"|?*]')
_SPACES = re.compile(r"\s+")
_DOTS = re.compile(r"\.{2,}")

# Magic numbers, only to tell a person what a rejected file looks like.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "a PDF document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document such as .docx)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "a Linux executable"),
    (b"MZ", "a Windows executable"),
    (b"\xd0\xcf\x11\xe0", "an old Microsoft Office document"),
    (b"RIFF", "a RIFF media file"),
    (b"ID3", "an MP3 audio file"),
    (b"SQLite format 3\x00", "an SQLite database"),
)
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Legacy encodings tried (by charset-normalizer) when the bytes are not UTF-8 and have no BOM.
_LEGACY_ENCODINGS = ["cp949", "euc_kr", "cp1252", "latin_1"]
_ALLOWED_CONTROLS = frozenset("\t\n\r\f\v")
# Above this share of control characters, decoded "text" is binary data in disguise.
_MAX_CONTROL_RATIO = 0.005


@dataclass(frozen=True)
class DecodedText:
    text: str
    encoding: str


@dataclass(frozen=True)
class FileType:
    content_type: str
    # The encoding of a text file ("" for PDF).
    encoding: str = ""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def format_size(size: int) -> str:
    """A human size with binary units written the everyday way: 64_172_851 → "61.2 MB"."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= scale:
            value = f"{size / scale:.1f}".removesuffix(".0")
            return f"{value} {unit}"
    return f"{size} bytes" if size != 1 else "1 byte"


def sanitize_filename(raw: str) -> str:
    """A safe display name: basename only, no control/format characters, no ``..``, ≤ 200 chars.

    Letters of every script (Korean included) are kept; Unicode is NFC-normalised so names
    from macOS (decomposed Hangul) look the same as others. Raises InvalidArgument when
    nothing usable is left.
    """
    name = unicodedata.normalize("NFC", raw)
    # Control (Cc) and format (Cf: bidi overrides, zero-width) characters go first, so they
    # cannot hide a separator or an extension.
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf"))
    name = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    name = _RESERVED.sub("_", name)
    name = _SPACES.sub(" ", name)
    name = _DOTS.sub(".", name)
    name = name.strip(" .")
    if not name:
        raise InvalidArgument(f"file name {raw[:80]!r} has no usable characters; send a plain file name")
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        if dot and stem and 0 < len(ext) < _MAX_EXTENSION_CHARS:
            name = stem[: MAX_FILENAME_CHARS - len(ext) - 1].rstrip(" .") + "." + ext
        else:
            name = name[:MAX_FILENAME_CHARS].rstrip(" .")
    return name


def extension_of(filename: str) -> str:
    stem, dot, ext = filename.rpartition(".")
    return f".{ext.lower()}" if dot and stem else ""


def content_type_for(filename: str) -> str | None:
    """The type a supported file name's extension promises (the bytes are checked later); None otherwise."""
    return _EXTENSIONS.get(extension_of(filename))


def stem_of(filename: str) -> str:
    stem, dot, _ = filename.rpartition(".")
    return stem if dot and stem else filename


def _control_ratio(text: str) -> float:
    if not text:
        return 0.0
    sample = text[:200_000]
    bad = sum(
        1 for ch in sample if ch == "\ufffd" or (unicodedata.category(ch) == "Cc" and ch not in _ALLOWED_CONTROLS)
    )
    return bad / len(sample)


def _is_text(text: str) -> bool:
    return "\x00" not in text and _control_ratio(text) <= _MAX_CONTROL_RATIO


def decode_text(data: bytes) -> DecodedText | None:
    """Decode text bytes: BOM (UTF-8/16/32), then UTF-8, then CP949/EUC-KR/CP1252/Latin-1.

    None when the bytes are not text (NUL bytes, binary garbage, or no encoding fits).
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(encoding)
            except UnicodeDecodeError:
                return None
            return DecodedText(text, encoding) if _is_text(text) else None
    if b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return DecodedText(text, "utf-8") if _is_text(text) else None
    best = from_bytes(data, cp_isolation=_LEGACY_ENCODINGS).best()
    if best is None:
        return None
    text = str(best)
    return DecodedText(text, best.encoding) if _is_text(text) else None


def _utf8_break(data: bytes) -> int | None:
    """Where text that no single encoding reads stops being UTF-8; None for valid UTF-8 or binary data."""
    if b"\x00" in data:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        readable = data.decode("utf-8", errors="replace").replace("\ufffd", "")
        return error.start if _control_ratio(readable) <= _MAX_CONTROL_RATIO else None
    return None


def describe(data: bytes) -> str:
    """What the bytes look like, for messages: "a PNG image", "text", "binary data"."""
    for magic, what in _MAGIC:
        if data.startswith(magic):
            return what
    sample = data[:65_536]
    if decode_text(sample) is not None:
        return "text"
    broken_at = _utf8_break(sample)
    if broken_at is not None:
        return f"text in mixed or unknown encodings (invalid UTF-8 at byte {broken_at})"
    return "binary data"


def _looks_like_pdf(data: bytes) -> bool:
    # The header may follow a little junk (the PDF spec tolerates up to 1 KB).
    return b"%PDF-" in data[:1024]


def _looks_like_html(data: bytes) -> bool:
    return _HTML_START.match(data[:4096].removeprefix(codecs.BOM_UTF8)) is not None


def _binary_type(filename: str, data: bytes, limits: ArchiveLimits) -> str | None:
    """PDF, DOCX, PPTX or XLSX when the bytes are one; InvalidArgument for an unsafe or damaged package."""
    if _looks_like_pdf(data):
        return PDF
    if data.startswith(b"PK\x03\x04"):
        try:
            return office_type(data, limits)
        except ArchiveError as error:
            raise InvalidArgument(f"{filename}: {error.message}") from None
    return None


def sniff(filename: str, data: bytes, limits: ArchiveLimits | None = None) -> FileType:
    """The supported type of ``data`` named ``filename``, or InvalidArgument saying why not.

    The bytes decide; the extension must agree with them. Without an extension, a file is
    accepted as what its bytes are (PDF, DOCX, PPTX, HTML, else plain text).
    """
    limits = limits or ArchiveLimits()
    ext = extension_of(filename)
    expected = _EXTENSIONS.get(ext)
    if ext and expected is None:
        what = describe(data)
        raise InvalidArgument(
            f"{filename}: unsupported file type {ext} ({what}); supported types are {SUPPORTED_TYPES}"
        )
    actual = _binary_type(filename, data, limits)
    if actual == XLSX:
        raise InvalidArgument(
            f"{filename}: unsupported file type ({KIND[XLSX]}); supported types are {SUPPORTED_TYPES}"
        )
    if expected == PDF and actual != PDF:
        what = KIND[actual] if actual else describe(data)
        raise InvalidArgument(
            f"{filename} is not a PDF: its content looks like {what}; expected a PDF document (starting with %PDF-)"
        )
    if expected in (DOCX, PPTX) and actual != expected:
        what = KIND[actual] if actual else describe(data)
        raise InvalidArgument(
            f"{filename} is not {KIND[expected]}: its content looks like {what}; "
            f"save it as {_BINARY_EXTENSION[expected]} (Office Open XML) and upload it again"
        )
    if actual is not None:
        if expected is not None and expected != actual:
            raise InvalidArgument(
                f"{filename} is {KIND[actual]}, not {KIND[expected]}; rename it to {_BINARY_EXTENSION[actual]}"
            )
        return FileType(actual)
    decoded = decode_text(data)
    if decoded is None:
        if not ext:
            raise InvalidArgument(
                f"{filename}: unsupported file type ({describe(data)}); supported types are {SUPPORTED_TYPES}"
            )
        kind = KIND[expected] if expected in _TEXT_TYPES else "text"
        raise InvalidArgument(
            f"{filename} is not {kind}: its content looks like {describe(data)}; "
            f"expected text in UTF-8, UTF-16 (with BOM), CP949/EUC-KR or Latin-1"
        )
    if expected is None:
        expected = HTML if _looks_like_html(data) else TEXT
    return FileType(expected, decoded.encoding)
