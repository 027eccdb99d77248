"""File names made safe, and file types sniffed from the bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.ingest.files import (
    MARKDOWN,
    PDF,
    TEXT,
    decode_text,
    format_size,
    sanitize_filename,
    sniff,
)

PDFS = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "pdfs"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
KOREAN = "검색 증강 생성은 문서를 찾아 답합니다. 한국어 문장도 잘 처리해야 합니다.\n"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\evil.txt", "evil.txt"),
        ("/abs/path/report.pdf", "report.pdf"),
        ("report\x00.pdf", "report.pdf"),
        ("line\nbreak\t.txt", "linebreak.txt"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),  # RTL override cannot disguise the extension
        ("..hidden..name...md", "hidden.name.md"),
        ('what?<is>this:"file"|*.txt', "what__is_this__file___.txt"),
        ("  spaced    out  .txt  ", "spaced out .txt"),
        ("보고서 2024.pdf", "보고서 2024.pdf"),
        ("\u1107\u1169\u1100\u1169\u1109\u1165.txt", "보고서.txt"),  # decomposed Hangul (macOS) is composed
        ("عربي.md", "عربي.md"),
    ],
)
def test_file_names_are_reduced_to_a_safe_basename(raw: str, expected: str) -> None:
    assert sanitize_filename(raw) == expected


def test_long_names_are_cut_to_200_characters_keeping_the_extension() -> None:
    name = sanitize_filename("가" * 300 + ".markdown")
    assert len(name) == 200
    assert name.endswith("가.markdown")


@pytest.mark.parametrize("raw", ["..", "../..", "/", "\x00\x01", "\u202e", " . "])
def test_names_with_nothing_usable_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="has no usable characters"):
        sanitize_filename(raw)


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 bytes"), (1, "1 byte"), (2048, "2 KB"), (50 * 1024 * 1024, "50 MB"), (64_172_851, "61.2 MB")],
)
def test_sizes_read_like_a_person_writes_them(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.skipif(not PDFS.exists(), reason=f"real PDFs not found in {PDFS}")
@pytest.mark.parametrize(
    "name", ["arxiv-2203.06947.pdf", "federal-register-2020-17221.pdf", "nics-background-checks-2015-11.pdf"]
)
def test_real_pdfs_are_pdfs(name: str) -> None:
    assert sniff(name, (PDFS / name).read_bytes()).content_type == PDF
    # Without an extension, the bytes alone decide.
    assert sniff("scan", (PDFS / name).read_bytes()).content_type == PDF


@pytest.mark.parametrize(
    ("data", "encodings"),
    [
        (KOREAN.encode("utf-8"), {"utf-8"}),
        (b"\xef\xbb\xbf" + KOREAN.encode("utf-8"), {"utf-8"}),
        (KOREAN.encode("utf-16"), {"utf-16-le"}),
        (b"\xfe\xff" + KOREAN.encode("utf-16-be"), {"utf-16-be"}),
        (KOREAN.encode("cp949"), {"cp949", "euc_kr"}),
        ("Café crème brûlée; naïve façade.".encode("latin-1"), {"latin_1", "cp1252"}),
    ],
)
def test_text_in_common_encodings_decodes(data: bytes, encodings: set[str]) -> None:
    decoded = decode_text(data)
    assert decoded is not None
    assert decoded.encoding in encodings
    assert decoded.text.strip() in (KOREAN.strip(), "Café crème brûlée; naïve façade.")
    assert sniff("notes.txt", data).content_type == TEXT
    assert sniff("notes.md", data).content_type == MARKDOWN


def test_random_bytes_are_not_text() -> None:
    noise = os.urandom(8192)
    assert decode_text(noise) is None
    with pytest.raises(InvalidArgument, match=r"^noise\.txt is not plain text: its content looks like binary data"):
        sniff("noise.txt", noise)


def test_text_with_nul_bytes_is_not_text() -> None:
    assert decode_text(b"hello\x00world") is None


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("photo.pdf", PNG, "photo.pdf is not a PDF: its content looks like a PNG image"),
        ("noise.pdf", os.urandom(4096), "noise.pdf is not a PDF: its content looks like binary data"),
        ("notes.pdf", b"just some text", "notes.pdf is not a PDF: its content looks like text"),
        ("paper.txt", b"%PDF-1.4\n...", "paper.txt is a PDF document, not plain text; rename it to .pdf"),
        ("paper.md", b"%PDF-1.4\n...", "paper.md is a PDF document, not Markdown; rename it to .pdf"),
        ("photo.png", PNG, "photo.png: unsupported file type .png (a PNG image); supported types are"),
        ("tool.exe", b"MZ\x90\x00" + bytes(64), "tool.exe: unsupported file type .exe (a Windows executable)"),
        ("data.zip", b"PK\x03\x04" + bytes(64), "data.zip: unsupported file type .zip (a ZIP archive"),
        ("report.docx", b"PK\x03\x04" + bytes(64), "report.docx: the archive is damaged"),
        ("blob", PNG, "blob: unsupported file type (a PNG image); supported types are"),
    ],
)
def test_mismatched_or_unsupported_files_are_rejected_saying_why(name: str, data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        sniff(name, data)
    assert caught.value.message.startswith(message)


def test_the_declared_extension_is_checked_case_insensitively() -> None:
    assert sniff("NOTES.TXT", b"plain").content_type == TEXT
    assert sniff("README.Markdown", b"# Title").content_type == MARKDOWN
