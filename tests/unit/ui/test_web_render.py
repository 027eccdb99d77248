"""Renderings of the web app: inert document text, highlights, excerpts, progress lines, tables."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from ragchat.v1 import common_pb2, gateway_pb2

from ui.web_render import (
    FileProgress,
    conversation_choices,
    document_rows,
    excerpt_window,
    highlight_spans,
    literal,
    references_html,
    size_text,
    turns_messages,
)


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


HOSTILE = "<script>alert(1)</script> **bold** _it_ [x](javascript:y) `code` $x^2$ # head | a | <img src=x onerror=z>"


def test_literal_text_has_no_markup_for_html_or_markdown() -> None:
    shown = literal(HOSTILE)
    assert not set("<>*_[]()`$#|&") & set(re.sub(r"&#\d+;", "", shown)), shown
    parsed = parse(shown)
    assert parsed.tags == []
    assert "".join(parsed.text) == HOSTILE, "the browser shows exactly the original text"
    assert literal("a\nb\r\nc") == "a<br>b<br>c"
    assert literal("김치와 막걸리") == "김치와 막걸리"


def test_highlights_whole_words_by_stem_and_korean_bigrams() -> None:
    text = "We evaluated the evaluation; re-evaluate later. Devaluation is unrelated."
    marked = [text[s:e] for s, e in highlight_spans(text, "How is it evaluated?")]
    assert marked == ["evaluated", "evaluation", "evaluate"]
    korean = "김치는 배추를 절여 발효시킨 음식입니다."
    assert [korean[s:e] for s, e in highlight_spans(korean, "김치는 어떻게 발효시키나요?")] == ["김치는", "발효시"]
    assert highlight_spans(text, "the of a") == [], "stop words mark nothing"


def test_excerpt_starts_near_the_first_match_at_a_word_boundary() -> None:
    text = " ".join(f"w{i}" for i in range(300)) + " target " + " ".join(f"v{i}" for i in range(300))
    spans = highlight_spans(text, "target")
    start, end = excerpt_window(text, spans, limit=200)
    assert start < spans[0][0] < end
    assert text[start - 1] == " " and text[end] == " "
    assert end - start <= 200
    assert excerpt_window("short", [], limit=200) == (0, 5)


def passage(**fields: object) -> common_pb2.Passage:
    return common_pb2.Passage(**fields)  # type: ignore[arg-type]


def test_references_show_title_page_score_excerpt_and_full_passage() -> None:
    long_text = "Alpacas hum softly. " * 40 + "<b>not bold</b>"
    html = references_html(
        [
            passage(title="Herd <Handbook>", page=3, score=0.91, text=long_text, citation=2),
            passage(source="notes.md", page=0, score=0.4, text="Llamas spit."),
        ],
        "do alpacas hum?",
        "en",
    )
    parsed = parse(html)
    assert parsed.tags.count("details") == 1, "only a cut passage needs its full text"
    assert "b" not in parsed.tags
    text = "".join(parsed.text)
    assert "[2] Herd <Handbook> · p. 3 · score 0.910" in text
    assert "[2] notes.md · no page · score 0.400" in text
    assert "<b>not bold</b>" in text
    excerpt, full = html.split('<div class="rc-ref-full">', 1)
    assert full.count("<mark>Alpacas</mark>") == 40, "every match of the full passage"
    assert 10 < excerpt.count("<mark>Alpacas</mark>") < 40, "the excerpt is a part"
    assert "\n\n" not in html, "one HTML block: Markdown never sees a blank line inside it"

    korean = references_html([passage(title="김치", page=2, score=1.0, text="김치")], "김치", "ko")
    assert "2쪽 · 점수 1.000" in "".join(parse(korean).text)


def test_a_stored_conversation_becomes_chat_messages() -> None:
    turn = gateway_pb2.Turn(
        question="and then?",
        condensed_question="and then? (alpacas)",
        answer="They hum [1].",
        references=[passage(title="A", text="alpacas hum", score=1.0)],
    )
    messages = turns_messages([turn], "en", references=True)
    assert [m["role"] for m in messages] == ["user", "assistant", "assistant", "assistant"]
    assert messages[1]["metadata"]["title"] == "Searched for"
    assert messages[2]["content"] == "They hum [1]."
    assert messages[3]["metadata"]["title"] == "References (1)"
    assert len(turns_messages([turn], "en", references=False)) == 3


def test_progress_line_per_stage_then_the_outcome() -> None:
    line = FileProgress("paper.pdf")
    line.update(
        common_pb2.IngestEvent(stage=common_pb2.INGEST_STAGE_EXTRACTING, current=3, total=10, message="p. 3"), "ko"
    )
    html = line.html()
    assert "텍스트 추출 중" in html
    assert '<progress value="3" max="10"></progress>' in html
    assert "3/10 쪽" in html
    line.finished, line.title, line.summary = True, "Paper", "It is <about> layouts."
    done = line.html()
    assert "progress" not in done
    assert "".join(parse(done).text).endswith("It is <about> layouts.")


def test_tables_and_choices() -> None:
    document = common_pb2.Document(
        doc_id="d1", title="", source="a.pdf", pages=4, chunks=9, size_bytes=3_500_000, error="",
        status=common_pb2.DOCUMENT_STATUS_FAILED,
    )  # fmt: skip
    document.created_at.FromSeconds(1_700_000_000)
    assert document_rows([document], "en") == [["a.pdf", "failed", 4, "3.3 MB", 9, "2023-11-14 22:13", "d1"]]
    assert document_rows([document], "ko")[0][1] == "실패"
    assert [size_text(n) for n in (0, 512, 2048, 5 << 30)] == ["-", "512 B", "2.0 KB", "5.0 GB"]
    conversation = gateway_pb2.Conversation(conversation_id="c1", title="Alpacas", turn_count=3)
    assert conversation_choices([conversation], "en") == [("Alpacas · 3 turns · -", "c1")]
    assert re.fullmatch(r"Alpacas · 3개 질문 · -", conversation_choices([conversation], "ko")[0][0])
