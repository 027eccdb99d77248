"""LocalIndex against a real SQLite file and keyword index: ranking, owner and document filters, atomic writes,
persistence, the keyword index catching up after a crash, migrations."""

from __future__ import annotations

import logging
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.retrieval.backends import ChunkRecord, DocumentHeader, SearchMode
from services.retrieval.backends.keyword import KeywordChunk, KeywordIndex
from services.retrieval.backends.local_index import LocalIndex
from tests.unit.retrieval.legacy_index import write_legacy_index

KEYWORD = SearchMode.KEYWORD


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[LocalIndex]:
    local = LocalIndex(tmp_path / "index.db")
    await local.open()
    yield local
    await local.close()


def chunks(*texts: str, prefix: str = "c") -> list[ChunkRecord]:
    return [ChunkRecord(chunk_id=f"{prefix}{i}", text=text) for i, text in enumerate(texts)]


async def ids(index: LocalIndex, owner: str, query: str, top_k: int = 10, doc_ids: tuple[str, ...] = ()) -> list[str]:
    return [passage.chunk_id for passage in await index.search(owner, query, top_k, doc_ids, KEYWORD)]


async def test_search_returns_ranked_passages_with_their_metadata(index: LocalIndex) -> None:
    header = DocumentHeader(owner="alice", doc_id="d1", title="Garden Notes", source="garden.pdf", language="en")
    await index.index_document(
        header,
        [
            ChunkRecord("d1-0", "Tomatoes need sun and water.", page=1, heading="Tomatoes", char_start=0, char_end=28),
            ChunkRecord(
                "d1-1", "Tomatoes tomatoes tomatoes: blight ruins tomatoes.", page=2, char_start=29, char_end=80
            ),
            ChunkRecord("d1-2", "Roses prefer acidic soil.", page=3, char_start=81, char_end=106),
        ],
    )
    passages = await index.search("alice", "tomato blight", 5, (), KEYWORD)
    assert [p.chunk_id for p in passages] == ["d1-1", "d1-0"]
    assert passages[0].score > passages[1].score > 0
    first, second = passages[1], passages[0]
    assert (first.doc_id, first.title, first.source, first.page, first.heading) == (
        "d1",
        "Garden Notes",
        "garden.pdf",
        1,
        "Tomatoes",
    )
    assert (first.char_start, first.char_end, first.language, first.text) == (
        0,
        28,
        "en",
        "Tomatoes need sun and water.",
    )
    assert (second.page, second.char_start, second.char_end) == (2, 29, 80)
    assert index.backend == "local"


async def test_top_k_limits_the_results(index: LocalIndex) -> None:
    await index.index_document(DocumentHeader("alice", "d"), chunks(*(f"apple number {i}" for i in range(20))))
    assert len(await ids(index, "alice", "apple", top_k=7)) == 7


async def test_language_is_detected_per_chunk_when_the_header_has_none(index: LocalIndex) -> None:
    await index.index_document(DocumentHeader("alice", "d"), chunks("Seoul is big", "서울은 크다 Seoul"))
    passages = await index.search("alice", "seoul", 5, (), KEYWORD)
    assert {p.chunk_id: p.language for p in passages} == {"c0": "en", "c1": "ko"}


async def test_small_owner_gets_their_top_k_among_100k_better_matching_chunks(index: LocalIndex) -> None:
    for n in range(4):
        crowd = [ChunkRecord(f"x{n}-{i}", f"alpha beta alpha beta {i}") for i in range(25_000)]
        await index.index_document(DocumentHeader("crowd", f"doc{n}"), crowd)
    filler = " ".join(["unrelated filler words about nothing in particular"] * 20)
    await index.index_document(
        DocumentHeader("small", "mine"),
        [ChunkRecord(f"s{i}", f"alpha {filler} {i}") for i in range(3)] + [ChunkRecord("s-other", filler)],
    )
    assert sorted(await ids(index, "small", "alpha beta", top_k=3)) == ["s0", "s1", "s2"]
    assert sorted(await ids(index, "small", "alpha beta", top_k=10)) == ["s0", "s1", "s2"]
    crowd_ids = await ids(index, "crowd", "alpha beta", top_k=10)
    assert len(crowd_ids) == 10
    assert all(chunk_id.startswith("x") for chunk_id in crowd_ids)
    assert await ids(index, "nobody", "alpha") == []


async def test_doc_filter_applies_before_ranking(index: LocalIndex) -> None:
    await index.index_document(DocumentHeader("alice", "strong"), chunks(*(["kiwi kiwi kiwi"] * 500), prefix="k"))
    await index.index_document(DocumentHeader("alice", "weak"), chunks("kiwi " + "other words " * 50, prefix="w"))
    await index.index_document(DocumentHeader("bob", "weak"), chunks("kiwi kiwi", prefix="b"))
    assert await ids(index, "alice", "kiwi", top_k=5, doc_ids=("weak",)) == ["w0"]
    assert len(await ids(index, "alice", "kiwi", top_k=5, doc_ids=("weak", "strong"))) == 5
    assert await ids(index, "alice", "kiwi", doc_ids=("unknown",)) == []


async def test_reindex_replaces_the_chunks_of_a_document(index: LocalIndex) -> None:
    await index.index_document(DocumentHeader("alice", "d", title="v1"), chunks("old banana", "old cherry"))
    assert await index.index_document(DocumentHeader("alice", "d", title="v2"), chunks("new banana")) == 1
    passages = await index.search("alice", "banana cherry old new", 10, (), KEYWORD)
    assert [(p.chunk_id, p.text, p.title) for p in passages] == [("c0", "new banana", "v2")]


async def test_same_doc_id_of_two_owners_are_separate_documents(index: LocalIndex) -> None:
    await index.index_document(DocumentHeader("alice", "d"), chunks("shared words alice"))
    await index.index_document(DocumentHeader("bob", "d"), chunks("shared words bob"))
    assert await index.delete_document("alice", "d") == 1
    assert await ids(index, "alice", "shared") == []
    assert await ids(index, "bob", "shared") == ["c0"]


async def test_delete_removes_every_chunk_and_is_idempotent(index: LocalIndex) -> None:
    await index.index_document(DocumentHeader("alice", "d"), chunks("melon one", "melon two", "melon three"))
    await index.index_document(DocumentHeader("alice", "keep"), chunks("melon kept", prefix="k"))
    assert await index.delete_document("alice", "d") == 3
    assert await ids(index, "alice", "melon") == ["k0"]
    assert await index.delete_document("alice", "d") == 0
    assert await index.delete_document("nobody", "d") == 0
    await index.index_document(DocumentHeader("alice", "d"), chunks("melon again"))
    assert sorted(await ids(index, "alice", "melon")) == ["c0", "k0"]


async def test_index_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "index.db"
    first = LocalIndex(path)
    await first.open()
    await first.index_document(DocumentHeader("alice", "d", title="Persisted"), chunks("durable grapefruit"))
    await first.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    second = LocalIndex(path)
    await second.open()
    try:
        passages = await second.search("alice", "grapefruit", 5, (), KEYWORD)
        assert [(p.chunk_id, p.title) for p in passages] == [("c0", "Persisted")]
        assert await second.delete_document("alice", "d") == 1
    finally:
        await second.close()


def fail_inserts_of(path: Path, text: str) -> None:
    """A trigger that makes SQLite abort any insert of a chunk with ``text``: a failure mid-write."""
    with sqlite3.connect(path) as db:
        db.execute(
            f"CREATE TRIGGER fail_insert BEFORE INSERT ON chunks WHEN NEW.text = '{text}'"
            " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )


async def test_a_failed_write_leaves_nothing(index: LocalIndex) -> None:
    fail_inserts_of(index.path, "boom")
    with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
        await index.index_document(DocumentHeader("alice", "new"), chunks("papaya first", "papaya second", "boom"))
    assert await ids(index, "alice", "papaya") == []
    assert await index.delete_document("alice", "new") == 0


async def test_a_failed_reindex_keeps_the_previous_version(index: LocalIndex) -> None:
    await index.index_document(DocumentHeader("alice", "d", title="v1"), chunks("papaya old", "guava old"))
    fail_inserts_of(index.path, "boom")
    with pytest.raises(sqlite3.IntegrityError):
        await index.index_document(DocumentHeader("alice", "d", title="v2"), chunks("papaya new", "boom"))
    passages = await index.search("alice", "papaya guava", 10, (), KEYWORD)
    assert sorted((p.chunk_id, p.text, p.title) for p in passages) == [
        ("c0", "papaya old", "v1"),
        ("c1", "guava old", "v1"),
    ]


async def test_empty_chunk_ids_are_derived_and_duplicates_refused(index: LocalIndex) -> None:
    await index.index_document(DocumentHeader("alice", "d"), [ChunkRecord("", "lime a"), ChunkRecord("", "lime b")])
    assert sorted(await ids(index, "alice", "lime")) == ["d#0", "d#1"]
    with pytest.raises(InvalidArgument, match="'x' appears more than once"):
        await index.index_document(DocumentHeader("alice", "e"), [ChunkRecord("x", "a"), ChunkRecord("x", "b")])


@pytest.mark.parametrize(
    ("header", "records", "message"),
    [
        (DocumentHeader("", "d"), chunks("text"), "header.owner is required"),
        (DocumentHeader("alice", " "), chunks("text"), "header.doc_id is required"),
        (DocumentHeader("alice", "d"), chunks("fine", "  \n"), "chunk 1 ('c1') has empty text"),
        (DocumentHeader("alice", "d"), [ChunkRecord("c", "t", page=-1)], "negative page"),
        (DocumentHeader("alice", "d"), [ChunkRecord("c", "t", char_start=5, char_end=2)], "invalid offsets 5..2"),
    ],
)
async def test_invalid_documents_are_refused_and_not_written(
    index: LocalIndex, header: DocumentHeader, records: list[ChunkRecord], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        await index.index_document(header, records)
    assert await ids(index, "alice", "text fine t") == []


async def test_queries_without_terms_return_nothing(index: LocalIndex) -> None:
    await index.index_document(DocumentHeader("alice", "d"), chunks("what is the answer"))
    assert await ids(index, "alice", "what is the") == []
    assert await ids(index, "alice", "?!") == []
    assert await ids(index, "alice", "answer") == ["c0"]


async def test_fts_syntax_in_queries_is_harmless(index: LocalIndex) -> None:
    await index.index_document(DocumentHeader("alice", "d"), chunks('he said "near" and NOT far', "owner body"))
    assert await ids(index, "alice", 'NEAR("said" far) AND NOT *') == ["c0"]
    assert await ids(index, "alice", "owner:1 OR body:x") == ["c1"]


@pytest.mark.parametrize("mode", [SearchMode.DENSE, SearchMode.HYBRID])
async def test_dense_modes_fail_on_a_keyword_only_index(index: LocalIndex, mode: SearchMode) -> None:
    with pytest.raises(FailedPrecondition, match=r"needs the dense leg, which is off on this index"):
        await index.search("alice", "anything", 5, (), mode)


async def test_auto_mode_is_keyword_on_a_keyword_only_index(index: LocalIndex) -> None:
    await index.index_document(DocumentHeader("alice", "d"), chunks("plum"))
    assert [p.chunk_id for p in await index.search("alice", "plum", 5, (), SearchMode.AUTO)] == ["c0"]


async def test_a_closed_index_refuses_calls(tmp_path: Path) -> None:
    local = LocalIndex(tmp_path / "index.db")
    with pytest.raises(FailedPrecondition, match="not open"):
        await local.search("alice", "plum", 5, (), KEYWORD)
    await local.open()
    await local.close()
    with pytest.raises(FailedPrecondition, match="not open"):
        await local.index_document(DocumentHeader("alice", "d"), chunks("plum"))


async def test_an_index_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    local = LocalIndex(path)
    await local.open()
    await local.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(FailedPrecondition, match="schema version 999"):
        await LocalIndex(path).open()


KOREAN_PASSAGES = {
    "seoul": "서울은 인구가 약 940만 명으로 대한민국에서 가장 많은 도시이다.",
    "busan": "부산은 대한민국 최대의 항구 도시이며 해운대 해수욕장으로 유명하다.",
    "jeju": "제주도는 화산섬으로 한라산과 아름다운 자연 경관을 가지고 있다.",
    "kimchi": "김치는 배추와 고춧가루로 만드는 한국의 전통 발효 음식이다.",
    "english": "Seoul has many subway lines and a large population.",
}


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("서울의 인구", "seoul"),
        ("서울 인구는 얼마나 되나요?", "seoul"),
        ("해운대가 있는 항구 도시는?", "busan"),
        ("한라산이 있는 섬", "jeju"),
        ("배추로 만든 발효 음식", "kimchi"),
    ],
)
async def test_korean_questions_find_their_passage(index: LocalIndex, question: str, expected: str) -> None:
    await index.index_document(
        DocumentHeader("alice", "korea", title="한국 안내"),
        [ChunkRecord(key, text) for key, text in KOREAN_PASSAGES.items()],
    )
    passages = await index.search("alice", question, 3, (), KEYWORD)
    assert passages[0].chunk_id == expected
    assert passages[0].language == "ko"


def crash(index: LocalIndex) -> None:
    """Stop ``index`` as a kill -9 would: nothing saved or committed on the way out."""
    assert index._writer is not None
    index._writer.close()
    index._writer = None
    index._keyword.abandon()


async def test_writes_the_keyword_index_had_not_committed_are_replayed_at_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "index.db"
    first = LocalIndex(path, keyword_commit_seconds=3600)
    await first.open()
    await first.index_document(DocumentHeader("alice", "kept"), chunks("cherry kept", prefix="k"))
    await first.index_document(DocumentHeader("alice", "gone"), chunks("cherry gone", prefix="g"))
    assert sorted(await ids(first, "alice", "cherry")) == ["g0", "k0"]  # this search committed both
    await first.index_document(DocumentHeader("alice", "kept"), chunks("cherry replaced", prefix="r"))
    await first.delete_document("alice", "gone")
    await first.index_document(DocumentHeader("alice", "new"), chunks("cherry new", prefix="n"))
    crash(first)  # the last three writes are in SQLite only

    caplog.set_level(logging.INFO, logger="services.retrieval.backends.local_index")
    second = LocalIndex(path)
    await second.open()
    try:
        assert sorted(await ids(second, "alice", "cherry")) == ["n0", "r0"]
        assert await ids(second, "alice", "kept") == []
        assert await ids(second, "alice", "gone") == []
    finally:
        await second.close()
    caught_up = [record for record in caplog.records if record.message == "keyword index caught up"]
    assert [record.__dict__["chunks"] for record in caught_up] == [2]


async def test_a_missing_keyword_index_is_rebuilt_from_the_chunks(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    first = LocalIndex(path)
    await first.open()
    await first.index_document(DocumentHeader("alice", "d", title="Fruit"), chunks("pear tart", "plum jam"))
    await first.close()
    shutil.rmtree(tmp_path / "index.db.keyword")
    second = LocalIndex(path)
    await second.open()
    try:
        assert sorted(await ids(second, "alice", "fruit")) == ["c0", "c1"]  # the title is indexed again too
        assert await ids(second, "alice", "plum") == ["c1"]
    finally:
        await second.close()


async def test_a_keyword_index_of_another_index_file_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    first = LocalIndex(path)
    await first.open()
    for n in range(3):
        await first.index_document(DocumentHeader("alice", f"d{n}"), chunks(f"orange {n}", prefix=f"d{n}-"))
    await first.close()
    for name in ("index.db", "index.db-wal", "index.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)  # the database is gone (or replaced); its keyword index stays
    second = LocalIndex(path)
    await second.open()
    try:
        await second.index_document(DocumentHeader("alice", "fresh"), chunks("orange fresh", prefix="f"))
        assert await ids(second, "alice", "orange") == ["f0"]
    finally:
        await second.close()


async def test_a_failed_keyword_update_is_caught_up_by_the_next_write(
    index: LocalIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_apply = KeywordIndex.apply
    calls = 0

    def fail_once(self: KeywordIndex, deleted: Iterable[int], chunks: Iterable[KeywordChunk], generation: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("No space left on device")
        return real_apply(self, deleted, chunks, generation)

    monkeypatch.setattr(KeywordIndex, "apply", fail_once)
    with pytest.raises(OSError, match="No space left"):
        await index.index_document(DocumentHeader("alice", "a"), chunks("mango first", prefix="a"))
    await index.index_document(DocumentHeader("alice", "b"), chunks("mango second", prefix="b"))
    assert sorted(await ids(index, "alice", "mango")) == ["a0", "b0"]


@pytest.mark.parametrize("version", [1, 2])
async def test_an_index_of_an_earlier_version_is_migrated_and_its_keyword_index_built(
    tmp_path: Path, version: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "index.db"
    write_legacy_index(path, version)
    caplog.set_level(logging.INFO, logger="services.retrieval.backends.local_index")
    index = LocalIndex(path)
    await index.open()
    try:
        assert await ids(index, "alice", "tomato") == ["g0"]
        assert await ids(index, "alice", "garden notes") == ["g0"]  # the title
        assert await ids(index, "alice", "대한민국의 수도") == ["s0"]
        assert await ids(index, "bob", "tomatoes basil") == ["b0"]
        await index.index_document(DocumentHeader("alice", "seoul"), chunks("부산은 항구 도시이다"))
        assert await ids(index, "alice", "수도") == []
        assert await ids(index, "alice", "항구") == ["c0"]
        assert await index.delete_document("bob", "garden") == 1
        assert await ids(index, "bob", "tomatoes") == []
    finally:
        await index.close()
    messages = [record.message for record in caplog.records]
    assert "index schema migrated" in messages
    assert "keyword index built" in messages
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'chunk_fts%'").fetchone() == (0,)
