"""The keyword engine (tantivy) on its own: terms, filters, ranking, deferred commits, manifest and locking."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.errors import FailedPrecondition
from services.retrieval.backends.keyword import (
    KEYWORD_FORMAT,
    MANIFEST_NAME,
    KeywordChunk,
    KeywordIndex,
    Manifest,
    query_terms,
    term_string,
)

INDEX_ID = "test-index"


@pytest.fixture
def keyword(tmp_path: Path) -> Iterator[KeywordIndex]:
    index = KeywordIndex(tmp_path / "keyword", title_weight=1, commit_seconds=3600)
    assert index.open(INDEX_ID) is None  # a new index: nothing to reflect yet
    yield index
    index.close()


def chunk(key: int, body: str, *, owner: int = 1, doc: int = 1, title: str = "") -> KeywordChunk:
    return KeywordChunk(key, owner, doc, term_string(title), term_string(body))


def found(index: KeywordIndex, query: str, *, owner: int = 1, doc_keys: list[int] | None = None) -> list[int]:
    return [key for key, _ in index.search(owner, query_terms(query), doc_keys, 10)]


def test_query_terms_lowercase_drop_stopwords_and_deduplicate() -> None:
    assert query_terms("The Cats and the DOGS, cats!") == ["cats", "dogs"]


def test_query_terms_of_korean_are_bigrams() -> None:
    assert query_terms("서울의 인구") == ["서울", "울의", "인구"]


def test_query_terms_of_punctuation_or_stopwords_only_are_empty() -> None:
    assert query_terms("?!* ()") == []
    assert query_terms("what is the") == []


def test_tokens_are_stemmed_folded_and_split_like_the_indexed_text(keyword: KeywordIndex) -> None:
    assert keyword.tokens(["connections", "running", "café", "o'brien"]) == ["connect", "run", "cafe", "o", "brien"]
    assert keyword.tokens(["서울", "x" * 101]) == ["서울"]  # over-long tokens are not indexed, nor searched


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
def test_user_syntax_is_never_read_as_query_syntax(keyword: KeywordIndex, query: str) -> None:
    keyword.apply([], [chunk(1, query), chunk(2, "something else entirely")], 1)
    assert query_terms(query)
    assert found(keyword, query) == [1]


def test_terms_are_stemmed_on_both_sides(keyword: KeywordIndex) -> None:
    keyword.apply([], [chunk(1, "Connected systems running quickly")], 1)
    assert found(keyword, "connection runs") == [1]


def test_owner_filter_is_exact(keyword: KeywordIndex) -> None:
    keyword.apply([], [chunk(1, "apples", owner=7), chunk(2, "apples", owner=17), chunk(3, "apples 7", owner=70)], 1)
    assert found(keyword, "apples", owner=7) == [1]
    assert found(keyword, "7", owner=70) == [3]
    assert found(keyword, "7", owner=7) == []
    assert found(keyword, "apples", owner=8) == []


def test_doc_filter_restricts_to_listed_documents(keyword: KeywordIndex) -> None:
    keyword.apply([], [chunk(key, "apples", doc=doc) for key, doc in ((1, 10), (2, 11), (3, 12))], 1)
    assert sorted(found(keyword, "apples", doc_keys=[10, 12])) == [1, 3]
    assert found(keyword, "apples", doc_keys=[]) == []


def test_title_terms_count_title_weight_times(tmp_path: Path) -> None:
    chunks = [chunk(1, "numbers in a table", title="Quarterly Revenue"), chunk(2, "revenue grew in spring")]
    # Weight 1: one occurrence each, the shorter chunk first; weight 2: the title's two occurrences win.
    for weight, expected in ((0, [2]), (1, [2, 1]), (2, [1, 2])):
        index = KeywordIndex(tmp_path / f"w{weight}", title_weight=weight)
        index.open(INDEX_ID)
        try:
            index.apply([], chunks, 1)
            assert found(index, "revenue") == expected, weight
            assert found(index, "quarterly") == ([1] if weight else []), weight
        finally:
            index.close()


@pytest.mark.parametrize("weight", [0.5, -1])
def test_title_weight_must_be_a_whole_number(tmp_path: Path, weight: float) -> None:
    with pytest.raises(ValueError, match="title_weight must be a whole number"):
        KeywordIndex(tmp_path / "keyword", title_weight=weight)


def test_bm25_prefers_rarer_terms_and_scores_are_positive(keyword: KeywordIndex) -> None:
    keyword.apply(
        [],
        [chunk(1, "common words here"), chunk(2, "common words there"), chunk(3, "common rare words")],
        1,
    )
    ranked = keyword.search(1, query_terms("common rare"), None, 10)
    assert ranked[0][0] == 3
    assert all(score > 0 for _, score in ranked)
    assert [score for _, score in ranked] == sorted((score for _, score in ranked), reverse=True)


def test_korean_particles_match_through_shared_bigrams(keyword: KeywordIndex) -> None:
    keyword.apply([], [chunk(1, "서울은 인구가 많다"), chunk(2, "부산은 항구 도시이다")], 1)
    assert found(keyword, "서울의 인구") == [1]


def test_a_search_sees_every_applied_write_and_commits_it(keyword: KeywordIndex) -> None:
    keyword.apply([], [chunk(1, "kiwi one", doc=1), chunk(2, "kiwi two", doc=2)], 1)
    assert keyword.manifest is None  # applied, not committed: the committer waits an hour here
    assert sorted(found(keyword, "kiwi")) == [1, 2]
    assert keyword.manifest == Manifest(INDEX_ID, 1)
    keyword.apply([1], [], 2)
    assert found(keyword, "kiwi") == [2]
    assert keyword.count("doc", 1) == 0
    assert keyword.count("owner", 1) == 1


def test_a_replayed_write_is_idempotent(keyword: KeywordIndex) -> None:
    for generation in (1, 2):
        keyword.apply([5], [chunk(1, "plum a", doc=5), chunk(2, "plum b", doc=5)], generation)
    assert sorted(found(keyword, "plum")) == [1, 2]


def test_a_failed_apply_drops_every_uncommitted_write(keyword: KeywordIndex) -> None:
    keyword.apply([], [chunk(1, "fig committed", doc=1)], 1)
    keyword.commit()
    keyword.apply([], [chunk(2, "fig pending", doc=2)], 2)

    def broken() -> Iterator[KeywordChunk]:
        yield chunk(3, "fig broken", doc=3)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        keyword.apply([], broken(), 3)
    assert keyword.applied == 1  # the caller replays from the last commit
    assert found(keyword, "fig") == [1]


def test_the_committer_commits_within_its_interval(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "keyword", title_weight=1, commit_seconds=0.05)
    index.open(INDEX_ID)
    try:
        index.apply([], [chunk(1, "quince")], 4)
        deadline = time.monotonic() + 10
        while index.manifest is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert index.manifest == Manifest(INDEX_ID, 4)
        manifest = json.loads((tmp_path / "keyword" / MANIFEST_NAME).read_text())
        assert manifest == {"format": KEYWORD_FORMAT, "index_id": INDEX_ID, "generation": 4}
    finally:
        index.close()


def test_reopen_keeps_the_index_and_its_manifest(tmp_path: Path) -> None:
    first = KeywordIndex(tmp_path / "keyword", title_weight=1)
    first.open(INDEX_ID)
    first.apply([], [chunk(1, "durable grapefruit")], 9)
    first.close()  # commits
    second = KeywordIndex(tmp_path / "keyword", title_weight=1)
    assert second.open(INDEX_ID) == Manifest(INDEX_ID, 9)
    try:
        assert second.applied == 9
        assert found(second, "grapefruit") == [1]
    finally:
        second.close()


def test_an_uncommitted_write_is_gone_after_a_crash(tmp_path: Path) -> None:
    first = KeywordIndex(tmp_path / "keyword", title_weight=1, commit_seconds=3600)
    first.open(INDEX_ID)
    first.apply([], [chunk(1, "lime kept")], 1)
    first.commit()
    first.apply([], [chunk(2, "lime lost")], 2)
    first.abandon()
    second = KeywordIndex(tmp_path / "keyword", title_weight=1)
    assert second.open(INDEX_ID) == Manifest(INDEX_ID, 1)  # the caller replays generation 2 from SQLite
    try:
        assert found(second, "lime") == [1]
    finally:
        second.close()


@pytest.mark.parametrize(
    "manifest",
    [
        None,  # a build that never finished
        "not json",
        json.dumps({"format": KEYWORD_FORMAT + 1, "index_id": INDEX_ID, "generation": 3}),
        json.dumps({"format": KEYWORD_FORMAT, "index_id": "another-file", "generation": 3}),
        json.dumps({"format": KEYWORD_FORMAT, "index_id": INDEX_ID}),
    ],
)
def test_an_index_of_unknown_state_is_emptied_for_a_rebuild(tmp_path: Path, manifest: str | None) -> None:
    first = KeywordIndex(tmp_path / "keyword", title_weight=1)
    first.open(INDEX_ID)
    first.apply([], [chunk(1, "stale cherry")], 3)
    first.close()
    path = tmp_path / "keyword" / MANIFEST_NAME
    if manifest is None:
        path.unlink()
    else:
        path.write_text(manifest)
    second = KeywordIndex(tmp_path / "keyword", title_weight=1)
    assert second.open(INDEX_ID) is None
    try:
        assert second.applied is None
        assert found(second, "cherry") == []
        assert not path.exists()
    finally:
        second.close()


@pytest.mark.parametrize("extension", ["term", "idx", "store", "fieldnorm", "fast"])
def test_an_index_with_a_damaged_file_is_emptied_for_a_rebuild(tmp_path: Path, extension: str) -> None:
    first = KeywordIndex(tmp_path / "keyword", title_weight=1)
    first.open(INDEX_ID)
    first.apply([], [chunk(key, f"damson {key}", doc=key) for key in range(1, 50)], 3)
    first.close()
    damaged = list((tmp_path / "keyword").glob(f"*.{extension}"))
    assert damaged
    for path in damaged:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    second = KeywordIndex(tmp_path / "keyword", title_weight=1)
    assert second.open(INDEX_ID) is None
    try:
        assert found(second, "damson") == []
    finally:
        second.close()


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    first = KeywordIndex(tmp_path / "keyword", title_weight=1)
    first.open(INDEX_ID)
    try:
        with pytest.raises(FailedPrecondition, match="in use by another process"):
            KeywordIndex(tmp_path / "keyword", title_weight=1).open(INDEX_ID)
    finally:
        first.close()
    again = KeywordIndex(tmp_path / "keyword", title_weight=1)
    again.open(INDEX_ID)
    again.close()


def test_a_closed_index_refuses_calls(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "keyword", title_weight=1)
    with pytest.raises(FailedPrecondition, match="not open"):
        index.search(1, ["plum"], None, 5)
    with pytest.raises(FailedPrecondition, match="not open"):
        index.apply([], [], 1)


def test_searches_run_alongside_writes_and_commits(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "keyword", title_weight=1, commit_seconds=0.005)
    index.open(INDEX_ID)
    errors: list[BaseException] = []

    def write() -> None:
        for n in range(1, 101):  # 100 versions of 20 documents, 5 chunks each
            doc = n % 20
            index.apply([doc], [chunk(n * 10 + i, f"melon version {n}", doc=doc) for i in range(5)], n)

    def search() -> None:
        try:
            for _ in range(100):
                keys = [key for key, _ in index.search(1, ["melon"], None, 100)]
                assert len(keys) % 5 == 0  # whole documents only
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write), *(threading.Thread(target=search) for _ in range(4))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert index.count("owner", 1) == 100
    finally:
        index.close()
