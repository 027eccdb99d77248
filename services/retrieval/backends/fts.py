"""Text → FTS5: the term strings stored in the index and the MATCH expressions that query it.

Text is pre-tokenised in Python with :func:`services.common.text.search_terms` (English words
lower-cased with stopwords dropped, Hangul as character bigrams); the FTS5 table's
``porter unicode61`` tokenizer then stems the English terms and passes the bigrams through.
Every query term is quoted, so nothing a user types is read as FTS5 syntax (AND, OR, NOT,
NEAR, ``*``, ``^``, column filters, quotes).

Filters are part of the MATCH itself, so FTS5 intersects them with the terms before ranking:
the owner and each document are tokens of their own columns, ``owner`` and ``doc``, holding
integer keys (digits: never stemmed, never confused with the text columns).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from services.common.text import search_terms

# The FTS5 table's columns, in order; bm25() weights follow this order.
COLUMNS = ("owner", "doc", "title", "body")
TEXT_COLUMNS = ("title", "body")
TOKENIZER = "porter unicode61 remove_diacritics 2"


def term_string(text: str) -> str:
    """The space-separated search terms of ``text``, as stored in an FTS5 text column."""
    return " ".join(search_terms(text))


def query_terms(query: str) -> list[str]:
    """The distinct search terms of ``query``, in order of first appearance."""
    return list(dict.fromkeys(search_terms(query)))


def quote(term: str) -> str:
    """An FTS5 string literal: double quotes doubled, the whole term in quotes."""
    return '"' + term.replace('"', '""') + '"'


def _any_of(tokens: Iterable[str]) -> str:
    return "(" + " OR ".join(quote(token) for token in tokens) + ")"


def match_expression(owner_key: int, terms: Sequence[str], doc_keys: Sequence[int] | None = None) -> str:
    """``owner:"k" [AND doc:(...)] AND {title body}:("t1" OR "t2" ...)``; ``terms`` must not be empty.

    ``doc_keys`` None means every document of the owner; an empty sequence is not allowed
    (the caller answers "no results" without querying).
    """
    if not terms:
        raise ValueError("match_expression needs at least one term")
    parts = [f"owner:{quote(str(owner_key))}"]
    if doc_keys is not None:
        if not doc_keys:
            raise ValueError("match_expression needs at least one doc key when filtering by document")
        parts.append(f"doc:{_any_of(str(key) for key in doc_keys)}")
    parts.append("{" + " ".join(TEXT_COLUMNS) + "}:" + _any_of(terms))
    return " AND ".join(parts)
