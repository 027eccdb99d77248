import pytest

from services.common.text import detect_language, estimate_tokens, search_terms, sentences


def test_language_detection() -> None:
    assert detect_language("서울은 대한민국의 수도이며 가장 큰 도시이다.") == "ko"
    assert detect_language("Seoul is the capital of South Korea.") == "en"
    assert detect_language("Llama 2 모델은 4096 토큰의 context window를 가진다.") == "ko"
    assert detect_language("12345 !!!") == "und"


def test_search_terms_english_and_korean() -> None:
    assert search_terms("The Model’s CONTEXT window") == ["model's", "context", "window"]
    # Particles attach to nouns; bigrams still share "서울" and "인구" with the question.
    doc = set(search_terms("서울은 인구가 많다"))
    question = set(search_terms("서울의 인구"))
    assert {"서울", "인구"} <= doc & question
    assert search_terms("ｆｕｌｌ-width") == ["full", "width"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Dr. Smith went home. He slept! Did he? Yes.", ["Dr. Smith went home.", "He slept!", "Did he?", "Yes."]),
        ("Value is 3.5 units. See Fig. 2 for details.", ["Value is 3.5 units.", "See Fig. 2 for details."]),
        (
            "서울은 수도이다. 부산은 항구입니다.인천도 있어요.",
            ["서울은 수도이다.", "부산은 항구입니다.", "인천도 있어요."],
        ),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("Heading\n\nBody text here", ["Heading", "Body text here"]),
    ],
)
def test_sentences(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


def test_token_estimate_errs_high() -> None:
    assert estimate_tokens("The quick brown fox jumps over the lazy dog.") >= 10
    assert estimate_tokens("서울은 한국의 수도이다.") >= 10


def test_bounded_sentences_split_tables_into_rows_and_long_lines_into_windows() -> None:
    from services.common.text import bounded_sentence_spans

    table = "State Permit Handgun Long Gun\n" + "\n".join(f"State{i} {i},001 {i},002 {i},003" for i in range(30))
    rows = [table[s:e] for s, e in bounded_sentence_spans(table, max_words=20)]
    assert rows[0] == "State Permit Handgun Long Gun"
    assert rows[5] == "State4 4,001 4,002 4,003"
    assert len(rows) == 31
    prose = "A short sentence. " + " ".join(["word"] * 130)
    spans = bounded_sentence_spans(prose, max_words=60)
    assert [len(prose[s:e].split()) for s, e in spans] == [3, 60, 60, 10]
