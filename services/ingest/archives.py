"""Office Open XML (DOCX, PPTX) packages: what they are, and whether they are safe to open.

A DOCX or PPTX file is a ZIP archive; what kind of document it holds is declared by its
``[Content_Types].xml`` part, not by its name. A ZIP archive can also be a decompression
bomb (a few KB that inflate to GBs) or carry tens of thousands of members; both are
rejected from the archive's central directory, before any member is inflated. The
declared sizes bound the inflation too: :mod:`zipfile` never returns more bytes for a
member than its header declares (and then fails the CRC check), so a member that lies
about its size cannot exceed the limits either, provided it is read in bounded pieces:
``ZipFile.read`` inflates a member's whole compressed data at once (up to 2 GB from a 2 MB
member that lies) before cutting it to the declared size. This service reads in pieces; the
parsers, which use ``ZipFile.read``, are bounded by the sandbox's memory limit.
"""

from __future__ import annotations

import io
import lzma
import zipfile
import zlib
from dataclasses import dataclass

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

_CONTENT_TYPES_PART = "[Content_Types].xml"
_MAX_CONTENT_TYPES_BYTES = 1024 * 1024
# The main part's content type in [Content_Types].xml tells the document kind.
_MAIN_PARTS: tuple[tuple[str, str], ...] = (
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml", DOCX),
    ("application/vnd.ms-word.document.macroenabled.main+xml", DOCX),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.template.main+xml", DOCX),
    ("application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml", PPTX),
    ("application/vnd.openxmlformats-officedocument.presentationml.slideshow.main+xml", PPTX),
    ("application/vnd.ms-powerpoint.presentation.macroenabled.main+xml", PPTX),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml", XLSX),
    ("application/vnd.ms-excel.sheet.macroenabled.main+xml", XLSX),
)


# What zipfile raises on damaged bytes: besides BadZipFile, NotImplementedError for a version or a
# compression method it does not know, and the decompressors' own errors for corrupt data.
_DAMAGED = (zipfile.BadZipFile, NotImplementedError, zlib.error, lzma.LZMAError, ValueError, EOFError, OSError)


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on a ZIP package, checked from its central directory before anything is inflated."""

    max_members: int = 10_000
    max_uncompressed_bytes: int = 512 * 1024 * 1024
    # Whole-archive inflation ratio; real Office files stay well under 100 (XML ~10-30, media ~1).
    max_ratio: float = 200.0


class ArchiveError(Exception):
    """The archive is unusable; ``message`` says why, in words a person can act on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _size(value: int) -> str:
    return f"{value / (1024 * 1024):.1f} MB" if value >= 1024 * 1024 else f"{value} bytes"


def check_archive(archive: zipfile.ZipFile, compressed_size: int, limits: ArchiveLimits) -> None:
    """Raise :class:`ArchiveError` when the archive exceeds a limit (a decompression bomb)."""
    members = archive.infolist()
    if len(members) > limits.max_members:
        raise ArchiveError(f"the archive has {len(members)} members; at most {limits.max_members} are accepted")
    total = 0
    for member in members:
        if member.flag_bits & 0x1:
            raise ArchiveError("the document is encrypted; save a copy without a password")
        total += member.file_size
    if total > limits.max_uncompressed_bytes:
        raise ArchiveError(
            f"the document would inflate to {_size(total)}; the limit is {_size(limits.max_uncompressed_bytes)} "
            "(a decompression bomb?)"
        )
    ratio = total / max(compressed_size, 1)
    if ratio > limits.max_ratio:
        raise ArchiveError(
            f"the document would inflate {ratio:.0f}-fold ({_size(compressed_size)} to {_size(total)}); "
            f"the limit is {limits.max_ratio:g}-fold (a decompression bomb?)"
        )


def open_package(data: bytes, limits: ArchiveLimits) -> zipfile.ZipFile:
    """The checked archive of ``data``; raises :class:`ArchiveError`."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _DAMAGED as error:
        raise ArchiveError(f"the archive is damaged ({error})") from None
    try:
        check_archive(archive, len(data), limits)
    except ArchiveError:
        archive.close()
        raise
    return archive


def office_type(data: bytes, limits: ArchiveLimits) -> str | None:
    """DOCX, PPTX or XLSX for an Office package, None for another ZIP archive; ArchiveError when unsafe."""
    with open_package(data, limits) as archive:
        try:
            info = archive.getinfo(_CONTENT_TYPES_PART)
        except KeyError:
            return None
        if info.file_size > _MAX_CONTENT_TYPES_BYTES:
            raise ArchiveError(f"{_CONTENT_TYPES_PART} is {_size(info.file_size)}; a real one is a few KB")
        try:
            # Read in bounded pieces: ``archive.read`` inflates a member's whole compressed data in
            # one call (up to 2 GB) before cutting it to the size the header declares.
            with archive.open(info) as part:
                declared = part.read(_MAX_CONTENT_TYPES_BYTES + 1).lower()
        except _DAMAGED as error:
            raise ArchiveError(f"the archive is damaged ({error})") from None
    for marker, content_type in _MAIN_PARTS:
        if marker.encode() in declared:
            return content_type
    return None
