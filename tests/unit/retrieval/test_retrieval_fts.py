"""Query building: terms, quoting and the MATCH expression, checked against a real FTS5 table."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from services.retrieval.backends.fts import COLUMNS, TOKENIZER, match_expression, query_terms, quote, term_string


@pytest.fixture
def fts() -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE VIRTUAL TABLE t USING fts5({', '.join(COLUMNS)}, tokenize='{TOKENIZER}')")
    yield db
    db.close()


def add(db: sqlite3.Connection, rowid: int, owner: int, doc: int, title: str, body: str) -> None:
    db.execute(
        "INSERT INTO t (rowid, owner, doc, title, body) VALUES (?, ?, ?, ?, ?)",
        (rowid, str(owner), str(doc), term_string(title), term_string(body)),
    )


def matches(db: sqlite3.Connection, expression: str) -> list[int]:
    return [row[0] for row in db.execute("SELECT rowid FROM t WHERE t MATCH ? ORDER BY rowid", (expression,))]


def test_quote_doubles_embedded_quotes() -> None:
    assert quote("plain") == '"plain"'
    assert quote('say "hi"') == '"say ""hi"""'


def test_query_terms_lowercase_drop_stopwords_and_deduplicate() -> None:
    assert query_terms("The Cats and the DOGS, cats!") == ["cats", "dogs"]


def test_query_terms_of_korean_are_bigrams() -> None:
    assert query_terms("서울의 인구") == ["서울", "울의", "인구"]


def test_query_terms_of_punctuation_or_stopwords_only_are_empty() -> None:
    assert query_terms("?!* ()") == []
    assert query_terms("what is the") == []


def test_match_expression_shape() -> None:
    assert match_expression(7, ["cat", "dog"]) == 'owner:"7" AND {title body}:("cat" OR "dog")'
    assert match_expression(7, ["cat"], [3, 4]) == 'owner:"7" AND doc:("3" OR "4") AND {title body}:("cat")'


def test_match_expression_refuses_no_terms_and_empty_doc_filter() -> None:
    with pytest.raises(ValueError, match="term"):
        match_expression(1, [])
    with pytest.raises(ValueError, match="doc key"):
        match_expression(1, ["cat"], [])


@pytest.mark.parametrize(
    "query",
    [
        'say "hello" now',
        "cats AND dogs OR NOT birds",
        "NEAR(cats dogs, 2)",
        "cat* ^dog -bird +fish",
        "body:cats title:dogs {owner}: 1",
        "owner:1",
        "(((unbalanced",
        "it's don't o'brien",
        "C++ vs. C#; 3.14 * 2 = 6.28",
        "서울의 인구는?",
    ],
)
def test_user_syntax_is_never_read_as_fts_syntax(fts: sqlite3.Connection, query: str) -> None:
    add(fts, 1, 1, 1, "", query)
    terms = query_terms(query)
    assert terms
    # Every query finds the text it was taken from, and never fails with an FTS5 syntax error.
    assert matches(fts, match_expression(1, terms)) == [1]


def test_operator_words_are_searched_as_words(fts: sqlite3.Connection) -> None:
    add(fts, 1, 1, 1, "", "the near side of the moon")
    add(fts, 2, 1, 1, "", "the far side of the moon")
    assert matches(fts, match_expression(1, query_terms("NEAR"))) == [1]
    assert matches(fts, match_expression(1, query_terms("NOT"))) == []


def test_terms_are_stemmed_on_both_sides(fts: sqlite3.Connection) -> None:
    add(fts, 1, 1, 1, "", "Connected systems running quickly")
    assert matches(fts, match_expression(1, query_terms("connection runs"))) == [1]


def test_owner_filter_is_exact_and_confined_to_its_column(fts: sqlite3.Connection) -> None:
    add(fts, 1, 7, 1, "", "apples")
    add(fts, 2, 17, 2, "", "apples")
    add(fts, 3, 70, 3, "7", "apples 7")
    assert matches(fts, match_expression(7, ["apples"])) == [1]
    assert matches(fts, match_expression(70, ["7"])) == [3]
    assert matches(fts, match_expression(7, ["7"])) == []


def test_doc_filter_restricts_to_listed_documents(fts: sqlite3.Connection) -> None:
    for rowid, doc in ((1, 10), (2, 11), (3, 12)):
        add(fts, rowid, 1, doc, "", "apples")
    assert matches(fts, match_expression(1, ["apples"], [10, 12])) == [1, 3]


def test_title_column_is_searched(fts: sqlite3.Connection) -> None:
    add(fts, 1, 1, 1, "Quarterly Revenue", "numbers in a table")
    assert matches(fts, match_expression(1, query_terms("revenue"))) == [1]


def test_korean_particles_match_through_shared_bigrams(fts: sqlite3.Connection) -> None:
    add(fts, 1, 1, 1, "", "서울은 인구가 많다")
    add(fts, 2, 1, 1, "", "부산은 항구 도시이다")
    assert matches(fts, match_expression(1, query_terms("서울의 인구"))) == [1]
