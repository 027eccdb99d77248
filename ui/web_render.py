"""HTML and table renderings of gateway messages for the web app (pure functions, no Gradio).

Document text is untrusted: a document must not be able to inject markup, script or Markdown
into the page. :func:`literal` makes any text inert in both HTML and Markdown (the Chatbot
renders Markdown, then sanitises the HTML): HTML's special characters and every character
Markdown or LaTeX gives a meaning to are written as numeric character references, which
Markdown leaves alone and the browser shows as the characters themselves.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ragchat.v1 import common_pb2, gateway_pb2

from services.common.text import search_terms
from ui.web_i18n import translate

# Characters with a meaning in HTML, Markdown (CommonMark + GFM) or the Chatbot's LaTeX.
_SPECIAL = "&<>\"'`*_{}[]()#+-.!|~\\$=:^"
_LITERAL = str.maketrans({ch: f"&#{ord(ch)};" for ch in _SPECIAL})
_HANGUL = re.compile("[\uac00-\ud7a3]")
# A Latin term matches words that start with its stem ("evaluated" marks "evaluation").
_SUFFIXES = ("ations", "ation", "ings", "ing", "ions", "ion", "ed", "es", "s", "ly")
_STAGES = {
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
_STAGE_UNITS = {common_pb2.INGEST_STAGE_EXTRACTING: "unit_pages", common_pb2.INGEST_STAGE_EMBEDDING: "unit_chunks"}
_STATUS = {
    common_pb2.DOCUMENT_STATUS_PENDING: "status_pending",
    common_pb2.DOCUMENT_STATUS_READY: "status_ready",
    common_pb2.DOCUMENT_STATUS_PROCESSING: "status_processing",
    common_pb2.DOCUMENT_STATUS_FAILED: "status_failed",
}
EXCERPT_CHARS = 360


def literal(text: str) -> str:
    """``text`` shown as itself in HTML or Markdown; newlines become ``<br>``."""
    return text.translate(_LITERAL).replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def _stem(term: str) -> str:
    for suffix in _SUFFIXES:
        if term.endswith(suffix) and len(term) - len(suffix) >= 4:
            return term[: -len(suffix)]
    return term


def highlight_spans(text: str, query: str) -> list[tuple[int, int]]:
    """Character spans of ``text`` that match the query's search terms, merged and sorted.

    Latin terms match whole words starting with the term's stem, case-insensitively; Korean
    terms (character bigrams, as the index uses) match anywhere.
    """
    patterns: set[str] = set()
    for term in search_terms(query):
        if _HANGUL.search(term):
            patterns.add(re.escape(term))
        elif len(term) >= 2:
            patterns.add(rf"(?<!\w){re.escape(_stem(term))}\w*")
    if not patterns:
        return []
    folded = unicodedata.normalize("NFKC", text)
    if len(folded) != len(text):  # offsets must line up with the original text
        folded = text
    # A lookahead finds overlapping matches too (Korean bigrams overlap: 김치, 치는).
    regex = re.compile("(?=(" + "|".join(sorted(patterns, key=len, reverse=True)) + "))", re.IGNORECASE)
    spans: list[tuple[int, int]] = []
    for match in regex.finditer(folded):
        start, end = match.span(1)
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def highlighted(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` made literal, with each span wrapped in ``<mark>``."""
    out: list[str] = []
    at = 0
    for start, end in spans:
        out.append(literal(text[at:start]))
        out.append(f"<mark>{literal(text[start:end])}</mark>")
        at = end
    out.append(literal(text[at:]))
    return "".join(out)


def excerpt_window(text: str, spans: Sequence[tuple[int, int]], limit: int = EXCERPT_CHARS) -> tuple[int, int]:
    """A window of about ``limit`` characters that starts a little before the first match, at a word boundary."""
    if len(text) <= limit:
        return 0, len(text)
    start = max(0, spans[0][0] - limit // 4) if spans else 0
    if start > 0:
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < start + 40 else start
    end = min(len(text), start + limit)
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > start + limit // 2 else end
    return start, end


def _shift(spans: Iterable[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    return [(max(s, start) - start, min(e, end) - start) for s, e in spans if e > start and s < end]


def reference_html(n: int, passage: common_pb2.Passage, query: str, language: str) -> str:
    """One reference: number, title, page and score; the matching excerpt; the full passage on demand."""
    text = " ".join(passage.text.split())
    spans = highlight_spans(text, query)
    start, end = excerpt_window(text, spans)
    excerpt = highlighted(text[start:end], _shift(spans, start, end))
    excerpt = ("… " if start > 0 else "") + excerpt + (" …" if end < len(text) else "")
    title = passage.title or passage.source or passage.doc_id
    page = translate("page", language, page=passage.page) if passage.page > 0 else translate("no_page", language)
    head = (
        f'<div class="rc-ref-head"><span class="rc-ref-n">[{n}]</span> <strong>{literal(title)}</strong>'
        f" · {literal(page)} · {translate('score', language)} {passage.score:.3f}</div>"
    )
    body = f'<div class="rc-ref-text">{excerpt}</div>'
    full = ""
    if (start, end) != (0, len(text)):
        whole = passage.text.strip()
        full = (
            f"<details><summary>{literal(translate('full_passage', language))}</summary>"
            f'<div class="rc-ref-full">{highlighted(whole, highlight_spans(whole, query))}</div></details>'
        )
    return f'<div class="rc-ref">{head}{body}{full}</div>'


def references_html(passages: Sequence[common_pb2.Passage], query: str, language: str) -> str:
    """Every reference, numbered as the answer's ``[n]`` markers when it has them. One HTML block, no blank line."""
    items = [reference_html(p.citation or n, p, query, language) for n, p in enumerate(passages, start=1)]
    return '<div class="rc-refs">' + "".join(items) + "</div>"


def references_message(passages: Sequence[common_pb2.Passage], query: str, language: str) -> dict[str, Any]:
    """The Chatbot message that carries an answer's references, collapsible under its title."""
    return {
        "role": "assistant",
        "content": references_html(passages, query, language),
        "metadata": {"title": translate("references", language, count=len(passages)), "status": "done"},
    }


def condensed_message(condensed: str, language: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": condensed,
        "metadata": {"title": translate("searched_for", language), "status": "done"},
    }


def is_references(message: dict[str, Any]) -> bool:
    return bool((message.get("metadata") or {}).get("title")) and "rc-refs" in _text(message.get("content"))


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def message_text(message: dict[str, Any]) -> str:
    """The text of a Chatbot message, whether its content is a string or Gradio's list of parts."""
    return _text(message.get("content"))


def turns_messages(turns: Sequence[gateway_pb2.Turn], language: str, *, references: bool) -> list[dict[str, Any]]:
    """A stored conversation as Chatbot messages: question, what was searched for, answer, references."""
    messages: list[dict[str, Any]] = []
    for turn in turns:
        messages.append({"role": "user", "content": turn.question})
        condensed = turn.condensed_question.strip()
        if condensed and condensed != turn.question.strip():
            messages.append(condensed_message(condensed, language))
        messages.append({"role": "assistant", "content": turn.answer})
        if references and turn.references:
            messages.append(references_message(turn.references, condensed or turn.question, language))
    return messages


# -- documents and uploads -----------------------------------------------------------------


def size_text(size: int) -> str:
    if size <= 0:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # unreachable: the loop returns at GB


def date_text(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M") if seconds > 0 else "-"


def status_text(status: common_pb2.DocumentStatus.ValueType, language: str) -> str:
    return translate(_STATUS.get(status, "status_unknown"), language)


DOCUMENT_COLUMNS = ("col_title", "col_status", "col_pages", "col_size", "col_chunks", "col_uploaded", "col_doc_id")


def document_headers(language: str) -> list[str]:
    return [translate(key, language) for key in DOCUMENT_COLUMNS]


def document_rows(documents: Sequence[common_pb2.Document], language: str) -> list[list[Any]]:
    """Rows of the document table: title, status, pages, size, chunks, uploaded, doc id."""
    return [
        [
            d.title or d.source,
            status_text(d.status, language) + (f": {d.error}" if d.error else ""),
            d.pages,
            size_text(d.size_bytes),
            d.chunks,
            date_text(d.created_at.seconds),
            d.doc_id,
        ]
        for d in documents
    ]


def document_choices(documents: Sequence[common_pb2.Document]) -> list[tuple[str, str]]:
    """(label, doc id) pairs for the delete picker."""
    return [(f"{d.title or d.source} ({d.doc_id})", d.doc_id) for d in documents]


def conversation_choices(conversations: Sequence[gateway_pb2.Conversation], language: str) -> list[tuple[str, str]]:
    """(label, conversation id) pairs: title, turns and last update."""
    return [
        (
            f"{c.title or c.conversation_id} · {translate('turns', language, count=c.turn_count)}"
            f" · {date_text(c.updated_at.seconds)}",
            c.conversation_id,
        )
        for c in conversations
    ]


def stage_text(stage: common_pb2.IngestStage.ValueType, language: str) -> str:
    return translate("stage_" + _STAGES.get(stage, "working"), language)


@dataclass
class FileProgress:
    """What the upload panel shows for one file: a live line, then the outcome and summary."""

    name: str
    stage: str = ""
    current: int = 0
    total: int = 0
    unit: str = ""
    detail: str = ""
    title: str = ""
    doc_id: str = ""
    summary: str = ""
    error: str = ""
    duplicate: bool = False
    finished: bool = False

    def update(self, event: common_pb2.IngestEvent, language: str) -> None:
        self.stage = stage_text(event.stage, language)
        self.current, self.total = max(0, min(event.current, event.total)), max(0, event.total)
        unit = _STAGE_UNITS.get(event.stage)
        self.unit = translate(unit, language) if unit else ""
        self.detail = event.message if event.stage != common_pb2.INGEST_STAGE_DONE else ""

    def html(self) -> str:
        name = f'<span class="rc-file-name">{literal(self.title or self.name)}</span>'
        if self.error:
            error = self.error.removeprefix(f"{self.name}: ")  # the gateway's messages often start with the name
            return f'<div class="rc-file rc-file-failed"><span class="rc-mark">✗</span> {name}: {literal(error)}</div>'
        if self.finished:
            extra = f" · {literal(self.stage)}" if self.stage else ""
            summary = f'<div class="rc-file-summary">{literal(self.summary)}</div>' if self.summary else ""
            doc = f' <code class="rc-file-id">{literal(self.doc_id)}</code>' if self.doc_id else ""
            return f'<div class="rc-file rc-file-done"><span class="rc-mark">✓</span> {name}{doc}{extra}{summary}</div>'
        bar = ""
        if self.total > 0:
            unit = f" {literal(self.unit)}" if self.unit else ""
            bar = (
                f' <progress value="{self.current}" max="{self.total}"></progress>'
                f' <span class="rc-file-count">{self.current}/{self.total}{unit}</span>'
            )
        detail = f' <span class="rc-file-detail">{literal(self.detail)}</span>' if self.detail else ""
        return (
            f'<div class="rc-file rc-file-live"><span class="rc-mark">…</span> {name}'
            f' <span class="rc-file-stage">{literal(self.stage)}</span>{bar}{detail}</div>'
        )


def uploads_html(files: Sequence[FileProgress]) -> str:
    return '<div class="rc-files">' + "".join(f.html() for f in files) + "</div>"


def notice_html(text: str, *, error: bool = False) -> str:
    """A one-line status message (an error in red), inert whatever it contains."""
    if not text:
        return ""
    kind = "rc-error" if error else "rc-note"
    return f'<div class="{kind}" role="{"alert" if error else "status"}">{"⚠ " if error else ""}{literal(text)}</div>'
