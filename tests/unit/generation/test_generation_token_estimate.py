"""``estimate_tokens`` (byte tables) gives exactly the counts of its regular-expression definition.

The prompt budget of generation and the gateway's history budget both rest on it, so the fast
path must not change a single count: ASCII, English with a few non-ASCII characters, Korean,
mixed text, every ASCII character, arbitrary Unicode (surrogates included), and real abstracts.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.text import _estimate_tokens_regex, estimate_tokens, max_estimate_tokens

SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"

TEXTS = [
    "",
    " ",
    "The quick brown fox jumps over the lazy dog.",
    "snake_case_name, e.g. x_1 + y_2 = z__3; (a) [b] {c} <d> 50% $3.50 #tag @user ~ ` ^ | \\ / ' \"",
    "".join(chr(i) for i in range(128)),  # every ASCII character, controls included
    "\x1c\x1d\x1e\x1f\x0b\x0c\x85 separators that Unicode calls whitespace",
    "Café naïve résumé — 25 μg/mL at 37 °C (p < 0.05); “quoted” ‘text’ … done.",
    "서울은 한국의 수도이다. 인구는 약 천만 명이며, 한강이 도시를 가로지른다.",
    "ragchat은 문서(PDF, DOCX)를 업로드하면 답변을 token 단위로 streaming 합니다: 100% 한국어 지원!",
    "ㄱㄴㄷ ㅏㅑ \u1100\u1161\u11a8 \u3164 compatibility jamo and conjoining jamo",
    "全角ＡＢＣ１２３ 日本語のテキスト 中文文本 العربية עברית Ελληνικά кириллица",
    "emoji 😀👍🏽 and symbols ✓ ✗ → ← ∑ ∫ ≤ ≥ ± × ÷ © ® ™ and a lone surrogate \ud800 here",
    "\u00a0\u2003\u3000non-breaking and ideographic spaces\u200b\ufeffzero-width",
    "a" * 5000 + " " + "가" * 5000,
    "mostly English text " * 200 + "é",
    "한국어 " * 300 + "with a little English",
]


@pytest.mark.parametrize("text", TEXTS)
def test_equals_the_regular_expressions(text: str) -> None:
    assert estimate_tokens(text) == _estimate_tokens_regex(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None), max_size=200))
def test_equals_the_regular_expressions_on_any_text(text: str) -> None:
    assert estimate_tokens(text) == _estimate_tokens_regex(text)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(["word", "한국어", " ", "\n", ".", "_", "é", "—", "1", "ㄱ", "😀", "\u00a0", "x_y"]),
        max_size=60,
    )
)
def test_equals_the_regular_expressions_on_mixed_pieces(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert estimate_tokens(text) == _estimate_tokens_regex(text)


def test_equals_the_regular_expressions_on_real_abstracts() -> None:
    corpus = SHARED_DATA / "scifact" / "corpus.jsonl"
    if not corpus.is_file():
        pytest.skip(f"the shared data is not at {SHARED_DATA}")
    with corpus.open(encoding="utf-8") as lines:
        records = [json.loads(raw) for raw in itertools.islice(lines, 0, 5000, 25)]
    texts = [f"{r['title']}\n\n{r['text']}" for r in records]
    assert any(not t.isascii() for t in texts) and any(t.isascii() for t in texts)  # both paths run
    for text in [*texts, "\n\n".join(texts[:8])]:
        assert estimate_tokens(text) == _estimate_tokens_regex(text)


@pytest.mark.parametrize("text", [*TEXTS, "a가" * 500, "a가" * 500 + "a", "a!" * 500, "가" * 1000, "a_" * 500])
def test_the_length_bound_holds(text: str) -> None:
    assert estimate_tokens(text) <= max_estimate_tokens(text)


def test_the_length_bound_is_tight_for_the_worst_text() -> None:
    worst = "a가" * 500 + "a"  # word runs separated by Hangul: 1.2 tokens a character
    assert max_estimate_tokens(worst) - estimate_tokens(worst) <= 2


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.characters(codec=None), max_size=200)
    | st.lists(st.sampled_from(["a", "가", "!", " ", "_", "1", "é", "ㄱ", "😀"]), max_size=120).map("".join)
)
def test_the_length_bound_holds_on_any_text(text: str) -> None:
    assert estimate_tokens(text) <= max_estimate_tokens(text)
