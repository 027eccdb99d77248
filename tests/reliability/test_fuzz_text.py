"""Property-based fuzzing of the chunker and the shared text primitives on arbitrary Unicode.

The chunker's contract (services/ingest/chunking.py): offsets slice back to the chunk text,
a chunk keeps its page and its section's heading, never spans two sections, stays within the
token budget, is never empty, shares at most ``overlap_tokens`` with the next one, and the
chunks of a section cover every token of it. The text primitives must hold their own
invariants on any input: sentence spans are ordered, trimmed and cover every non-space
character; search terms are non-empty words; the detected language follows the letters.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import text as text_module
from services.common.text import (
    ENGLISH_STOPWORDS,
    bounded_sentence_spans,
    detect_language,
    estimate_tokens,
    normalize,
    search_terms,
    sentence_spans,
)
from services.ingest.chunking import _TOKEN_RE, chunk_pages, count_tokens
from services.ingest.extraction import Page, Section, clean_text, markdown_sections

FAST = settings.get_profile("reliability-fast")
SOAK = settings.get_profile("reliability-soak")
SOAK_SECONDS = 3600  # per soak test (the fast tests keep the default 120 s)

# -- strategies ---------------------------------------------------------------------------

_ANY_CHAR = st.characters(codec="utf-8")
_PIECES = st.one_of(
    st.sampled_from(
        [
            " ",
            "  ",
            "\n",
            "\n\n",
            "\r\n",
            "\t",
            "\u00a0",
            "\u3000",
            ".",
            ". ",
            "! ",
            "? ",
            "。",
            "다.",
            "요. ",
            "e.g. ",
            "Fig. 3 ",
            "…",
            '." ',
            ") ",
            "| ",
            "- ",
            "# Heading\n",
            "## 제목\n",
            "```\n",
            "word ",
            "the ",
            "RAG ",
            "42 ",
            "검색 ",
            "증강생성을",
            "합니다. ",
            "가",
            "漢字",
            "カナ",
            "x_y ",
            "don't ",
            "l’été ",
            "ﬁ",
            "\u202e",
            "\u200b",
            "e\u0301",
        ]
    ),
    st.text(_ANY_CHAR, max_size=8),
    st.text(st.sampled_from("abcdefghij 가나다라마바사 .\n"), max_size=40),
)
texts = st.lists(_PIECES, max_size=60).map("".join)


@st.composite
def pages(draw: Callable[..., Any]) -> list[Page]:
    """1-3 pages of arbitrary text, each split into whole-page, Markdown or arbitrary sections."""
    count = draw(st.integers(1, 3))
    numbers = [0] if count == 1 and draw(st.booleans()) else list(range(1, count + 1))
    result = []
    for number in numbers:
        text = draw(texts)
        how = draw(st.sampled_from(["whole", "markdown", "cuts"]))
        if how == "whole":
            sections: tuple[Section, ...] = (Section(0, len(text), draw(st.sampled_from(["", "Intro", "서론"]))),)
        elif how == "markdown":
            sections = markdown_sections(text)
        else:
            cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=6)))
            bounds = [0, *cuts, len(text)]
            sections = tuple(
                Section(start, end, f"h{n}") for n, (start, end) in enumerate(itertools.pairwise(bounds)) if start < end
            )
        result.append(Page(number, text, sections))
    return result


@st.composite
def budgets(draw: Callable[..., Any]) -> tuple[int, int]:
    target = draw(st.integers(1, 80))
    return target, draw(st.integers(0, target - 1))


# -- the chunker ------------------------------------------------------------------------------


def chunker_holds_its_contract(document: list[Page], budget: tuple[int, int]) -> None:
    target, overlap = budget
    chunks = chunk_pages("doc", document, target_tokens=target, overlap_tokens=overlap)
    by_number = {page.number: page for page in document}
    assert [chunk.chunk_id for chunk in chunks] == [f"doc:{n}" for n in range(len(chunks))]
    covered: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for chunk in chunks:
        page = by_number[chunk.page]
        assert page.text[chunk.char_start : chunk.char_end] == chunk.text, "offsets slice back to the text"
        assert chunk.text.strip() and chunk.text == chunk.text.strip(), "no empty or untrimmed chunk"
        assert 1 <= count_tokens(chunk.text) <= target, "within the token budget"
        homes = [
            n
            for n, section in enumerate(page.sections)
            if section.start <= chunk.char_start and chunk.char_end <= section.end
        ]
        assert homes, "a chunk stays inside one section"
        assert chunk.heading in {page.sections[n].heading for n in homes}
        covered.setdefault((chunk.page, homes[0]), []).append((chunk.char_start, chunk.char_end))
    for previous, current in itertools.pairwise(chunks):
        same_section = previous.page == current.page and previous.heading == current.heading
        if same_section and current.char_start < previous.char_end:
            shared = by_number[current.page].text[current.char_start : previous.char_end]
            assert count_tokens(shared) <= overlap, "overlap within its budget"
    for page in document:
        for n, section in enumerate(page.sections):
            spans = covered.get((page.number, n), [])
            assert all(a < b for (a, _), (b, _) in itertools.pairwise(spans)), "chunks advance"
            for token in _TOKEN_RE.finditer(page.text, section.start, section.end):
                assert any(s <= token.start() and token.end() <= e for s, e in spans), (
                    f"token {token.group()!r} at {token.start()} of page {page.number} is in no chunk"
                )


@settings(FAST, max_examples=100)
@given(pages(), budgets())
def test_the_chunker_holds_its_contract_on_arbitrary_pages(document: list[Page], budget: tuple[int, int]) -> None:
    chunker_holds_its_contract(document, budget)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS)
@SOAK
@given(pages(), budgets())
def test_soak_the_chunker_holds_its_contract_on_arbitrary_pages(document: list[Page], budget: tuple[int, int]) -> None:
    chunker_holds_its_contract(document, budget)


def extracted_text_chunks(raw: str, budget: tuple[int, int]) -> None:
    """What the extractors hand the chunker: cleaned text, Markdown sections."""
    cleaned = clean_text(raw)
    sections = markdown_sections(cleaned)
    chunker_holds_its_contract([Page(0, cleaned, sections)], budget)


@settings(FAST, max_examples=100)
@given(texts, budgets())
def test_cleaned_markdown_text_chunks_within_the_contract(raw: str, budget: tuple[int, int]) -> None:
    extracted_text_chunks(raw, budget)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS)
@SOAK
@given(texts, budgets())
def test_soak_cleaned_markdown_text_chunks_within_the_contract(raw: str, budget: tuple[int, int]) -> None:
    extracted_text_chunks(raw, budget)


# -- the text primitives ------------------------------------------------------------------------

_LETTER = re.compile(r"[^\W\d_]")
_HANGUL = re.compile("[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")


def text_primitives_hold(text: str) -> None:
    spans = sentence_spans(text)
    for start, end in spans:
        assert 0 <= start < end <= len(text)
        assert not text[start].isspace() and not text[end - 1].isspace()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans)), "ordered, disjoint"
    inside = bytearray(len(text))
    for start, end in spans:
        inside[start:end] = b"\x01" * (end - start)
    missed = [i for i, ch in enumerate(text) if not ch.isspace() and not inside[i]]
    assert not missed, f"characters outside every sentence: {missed[:5]}"
    assert text_module.sentences(text) == [text[s:e] for s, e in spans]

    for start, end in bounded_sentence_spans(text, 5):
        assert 0 <= start < end <= len(text)
        assert len(text[start:end].split()) <= 5

    terms = search_terms(text)
    everything = search_terms(text, drop_stopwords=False)
    assert all(term and not any(ch.isspace() for ch in term) for term in everything)
    assert terms == [term for term in everything if term not in ENGLISH_STOPWORDS]

    language = detect_language(text)
    letters = _LETTER.findall(text[:20_000])
    if not letters:
        assert language == "und"
    else:
        hangul = [ch for ch in letters if _HANGUL.match(ch)]
        assert language == ("ko" if len(hangul) / len(letters) >= 0.3 else "en")

    assert estimate_tokens(text) >= 1
    once = normalize(text)
    assert normalize(once) == once


@settings(FAST, max_examples=100)
@given(texts)
def test_the_text_primitives_hold_on_arbitrary_unicode(text: str) -> None:
    text_primitives_hold(text)


@settings(FAST, max_examples=100)
@given(st.text(_ANY_CHAR, max_size=400))
def test_the_text_primitives_hold_on_any_characters(text: str) -> None:
    text_primitives_hold(text)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS)
@SOAK
@given(st.one_of(texts, st.text(_ANY_CHAR, max_size=2000)))
def test_soak_the_text_primitives_hold_on_arbitrary_unicode(text: str) -> None:
    text_primitives_hold(text)
