"""Plain renderings of gateway messages shared by the CLI and the web app.

The ``*_dict`` functions define the JSON shapes the CLI prints with ``--json``; the ``render_*``
functions the human text. No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

from google.protobuf.timestamp_pb2 import Timestamp
from ragchat.v1 import common_pb2, gateway_pb2

_STAGE_WORDS = {
    common_pb2.INGEST_STAGE_UNSPECIFIED: "waiting",
    common_pb2.INGEST_STAGE_QUEUED: "queued",
    common_pb2.INGEST_STAGE_STORED: "stored",
    common_pb2.INGEST_STAGE_EXTRACTING: "extracting",
    common_pb2.INGEST_STAGE_CHUNKING: "chunking",
    common_pb2.INGEST_STAGE_EMBEDDING: "embedding",
    common_pb2.INGEST_STAGE_INDEXED: "indexed",
    common_pb2.INGEST_STAGE_SUMMARISING: "summarising",
    common_pb2.INGEST_STAGE_DONE: "done",
    common_pb2.INGEST_STAGE_FAILED: "failed",
}
# What current/total count, per stage.
_STAGE_UNITS = {
    common_pb2.INGEST_STAGE_EXTRACTING: "pages",
    common_pb2.INGEST_STAGE_EMBEDDING: "chunks",
}


def status_word(status: common_pb2.DocumentStatus.ValueType) -> str:
    """``DOCUMENT_STATUS_READY`` → ``"ready"``; unknown values → ``"unknown"``."""
    if status == common_pb2.DOCUMENT_STATUS_UNSPECIFIED:
        return "unknown"
    try:
        name = common_pb2.DocumentStatus.Name(status)
    except ValueError:
        return "unknown"
    return name.removeprefix("DOCUMENT_STATUS_").lower()


def stage_word(stage: common_pb2.IngestStage.ValueType) -> str:
    return _STAGE_WORDS.get(stage, "working")


def timestamp_text(value: Timestamp) -> str | None:
    """ISO 8601 in UTC, or None when the timestamp is unset."""
    if value.seconds == 0 and value.nanos == 0:
        return None
    return value.ToJsonString()


def excerpt(text: str, limit: int = 240) -> str:
    """The passage on one line, cut at a word boundary near ``limit`` characters."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0] or flat[:limit]
    return cut + "…"


def passage_dict(passage: common_pb2.Passage) -> dict[str, Any]:
    return {
        "doc_id": passage.doc_id,
        "chunk_id": passage.chunk_id,
        "title": passage.title,
        "source": passage.source,
        "page": passage.page,
        "heading": passage.heading,
        "text": passage.text,
        "score": round(float(passage.score), 6),
        "language": passage.language,
        "citation": passage.citation,
    }


def document_dict(document: common_pb2.Document) -> dict[str, Any]:
    return {
        "doc_id": document.doc_id,
        "title": document.title,
        "source": document.source,
        "pages": document.pages,
        "chunks": document.chunks,
        "status": status_word(document.status),
        "error": document.error,
        "content_type": document.content_type,
        "size_bytes": document.size_bytes,
        "language": document.language,
        "summary": document.summary,
        "sha256": document.sha256,
        "created_at": timestamp_text(document.created_at),
        "updated_at": timestamp_text(document.updated_at),
    }


def conversation_dict(conversation: gateway_pb2.Conversation) -> dict[str, Any]:
    return {
        "conversation_id": conversation.conversation_id,
        "title": conversation.title,
        "turn_count": conversation.turn_count,
        "created_at": timestamp_text(conversation.created_at),
        "updated_at": timestamp_text(conversation.updated_at),
    }


def page_text(page: int) -> str:
    return f"p. {page}" if page > 0 else "no page"


def render_passages(passages: Sequence[common_pb2.Passage], *, limit: int = 240) -> str:
    """Numbered references: ``[n] title, p. X (score 0.812)`` and an indented excerpt."""
    lines: list[str] = []
    for n, passage in enumerate(passages, start=1):
        n = passage.citation or n  # the [n] the answer uses for it, when it marks citations
        title = passage.title or passage.source or passage.doc_id
        lines.append(f"[{n}] {title}, {page_text(passage.page)} (score {passage.score:.3f})")
        lines.append(f"    {excerpt(passage.text, limit)}")
    return "\n".join(lines)


def render_documents(documents: Sequence[common_pb2.Document]) -> str:
    """A plain table: doc id, status, pages, title."""
    if not documents:
        return "no documents"
    rows = [("DOC_ID", "STATUS", "PAGES", "TITLE")]
    rows += [(d.doc_id, status_word(d.status), str(d.pages), d.title or d.source) for d in documents]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}".rstrip() for row in rows
    )


def render_conversations(conversations: Sequence[gateway_pb2.Conversation]) -> str:
    if not conversations:
        return "no conversations"
    lines = []
    for c in conversations:
        updated = timestamp_text(c.updated_at) or "-"
        lines.append(f"{c.conversation_id}  {updated}  {c.turn_count:>3} turns  {c.title}")
    return "\n".join(lines)


def progress_text(name: str, event: common_pb2.IngestEvent, *, width: int = 20) -> str:
    """One line of ingest progress: ``name  extracting [#####-----] 3/6 pages``."""
    parts = [name, stage_word(event.stage)]
    if event.total > 0:
        current = max(0, min(event.current, event.total))
        filled = round(width * current / event.total)
        unit = _STAGE_UNITS.get(event.stage, "")
        parts.append(f"[{'#' * filled}{'-' * (width - filled)}] {current}/{event.total}" + (f" {unit}" if unit else ""))
    if event.message and event.stage != common_pb2.INGEST_STAGE_DONE:
        parts.append(f"- {event.message}")
    return "  ".join(parts)


class ProgressLine:
    """Renders the progress of one document on a stream.

    On a terminal the line is redrawn in place; otherwise one plain line is written each time
    the stage changes, so logs and pipes stay readable.
    """

    def __init__(self, name: str, stream: TextIO, *, tty: bool) -> None:
        self._name = name
        self._stream = stream
        self._tty = tty
        self._last: str | None = None
        self._last_stage: int | None = None
        self._open = False

    def update(self, event: common_pb2.IngestEvent) -> None:
        text = progress_text(self._name, event)
        if self._tty:
            if text != self._last:
                self._stream.write("\r" + text + "\x1b[K")
                self._stream.flush()
                self._open = True
        elif event.stage != self._last_stage:
            self._stream.write(text + "\n")
            self._stream.flush()
        self._last = text
        self._last_stage = event.stage

    def finish(self) -> None:
        """End the in-place line (on a terminal) so the next output starts on a fresh line."""
        if self._tty and self._open:
            self._stream.write("\n")
            self._stream.flush()
            self._open = False
