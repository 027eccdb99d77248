"""The hybrid local index: fusion, language awareness, vectors kept with their chunks, HNSW, start-up checks.

Ranking quality is checked with the real model (all-MiniLM-L6-v2 through ONNX Runtime, built by
``scripts/export_embedding_model.py``); mechanics with a deterministic hashed bag-of-words embedder.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.errors import FailedPrecondition
from services.retrieval.backends import ChunkRecord, DocumentHeader, SearchMode
from services.retrieval.backends.fusion import fuse, latin_share
from services.retrieval.backends.local_index import LocalIndex
from services.retrieval.embedding import DEFAULT_MODEL_DIR, MANIFEST_NAME, ONNX_NAME, TOKENIZER_NAME, OnnxEmbedder
from services.retrieval.evaluation import mean_ndcg
from tests.unit.retrieval.legacy_index import write_legacy_index
from tests.unit.retrieval.retrieval_fakes import HashEmbedder

needs_model = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / ONNX_NAME).is_file(),
    reason=f"embedding model not built at {DEFAULT_MODEL_DIR}: run scripts/export_embedding_model.py",
)


@pytest.fixture(scope="module")
def minilm() -> OnnxEmbedder:
    if not (DEFAULT_MODEL_DIR / ONNX_NAME).is_file():
        pytest.skip("embedding model not built")
    embedder = OnnxEmbedder(DEFAULT_MODEL_DIR, threads=1)
    embedder.load()
    return embedder


def chunks(*texts: str, prefix: str = "c") -> list[ChunkRecord]:
    return [ChunkRecord(chunk_id=f"{prefix}{i}", text=text) for i, text in enumerate(texts)]


async def ranked(index: LocalIndex, query: str, mode: SearchMode, top_k: int = 10, owner: str = "alice") -> list[str]:
    return [p.chunk_id for p in await index.search(owner, query, top_k, (), mode)]


# Fusion


def test_latin_share_by_script() -> None:
    assert latin_share("The quick brown fox") == 1.0
    assert latin_share("서울은 대한민국의 수도이다") == 0.0
    assert latin_share("서울 Seoul 수도 capital") == 0.5
    assert latin_share("GPU 메모리는 얼마인가요?") == 3 / (3 + 3 * 9)
    assert latin_share("1234 ---") == 1.0


def test_a_korean_query_keeps_the_keyword_order_exactly() -> None:
    keyword = [(1, 9.0), (2, 5.0), (3, 1.0)]
    dense = {1: 0.1, 2: 0.2, 3: 0.9, 4: 0.95}
    fused = fuse(keyword, dense, {}, query_english=0.0, dense_weight=0.6)
    assert [key for key, _ in fused] == [1, 2, 3, 4]


def test_an_english_query_lets_the_dense_leg_promote_a_passage() -> None:
    keyword = [(1, 9.0), (2, 8.0)]
    dense = {1: 0.1, 2: 0.2, 3: 0.9}
    fused = fuse(keyword, dense, {}, query_english=1.0, dense_weight=0.6)
    assert [key for key, _ in fused][:1] == [3]
    assert all(0.0 <= score <= 1.0 for _, score in fused)


def test_a_korean_passage_is_not_promoted_by_the_dense_leg() -> None:
    keyword = [(1, 9.0), (2, 8.0)]
    dense = {1: 0.1, 2: 0.2, 3: 0.9}
    fused = fuse(keyword, dense, {3: 0.0}, query_english=1.0, dense_weight=0.6)
    assert [key for key, _ in fused] == [1, 2, 3]


# Quality with the real model

KOREAN_PASSAGES = {
    "k0": "서울은 대한민국의 수도이며 인구는 약 천만 명이다.",
    "k1": "부산은 대한민국 제2의 도시로 해운대 해수욕장이 유명하다.",
    "k2": "김치는 배추와 고춧가루로 만드는 한국의 전통 발효 음식이다.",
    "k3": "한글은 1443년 세종대왕이 창제한 문자이다.",
    "k4": "제주도는 화산섬으로 한라산이 섬 한가운데에 있다.",
    "k5": "비빔밥은 밥 위에 나물과 고추장을 얹어 비벼 먹는 음식이다.",
    "k6": "태권도는 발차기 기술이 특징인 한국의 무술이다.",
    "k7": "경주는 신라의 수도였으며 불국사와 석굴암이 있다.",
    "k8": "한국의 추석은 음력 8월 15일로 송편을 빚어 먹는다.",
    "k9": "지하철은 서울에서 가장 많이 이용하는 대중교통 수단이다.",
    "k10": "인천국제공항은 대한민국에서 가장 큰 공항이다.",
    "k11": "한강은 서울을 가로질러 흐르는 큰 강이다.",
}
KOREAN_QUESTIONS = {
    "q0": ("대한민국의 수도는 어디인가요?", "k0"),
    "q1": ("해운대 해수욕장은 어느 도시에 있나요?", "k1"),
    "q2": ("김치는 무엇으로 만드나요?", "k2"),
    "q3": ("한글을 만든 왕은 누구인가요?", "k3"),
    "q4": ("한라산은 어디에 있나요?", "k4"),
    "q5": ("고추장을 넣어 비벼 먹는 음식은?", "k5"),
    "q6": ("발차기가 특징인 무술은?", "k6"),
    "q7": ("불국사가 있는 도시는?", "k7"),
    "q8": ("추석에 먹는 떡은 무엇인가요?", "k8"),
    "q9": ("서울을 흐르는 강의 이름은?", "k11"),
}


async def test_korean_hybrid_is_at_least_as_good_as_keyword_alone(tmp_path: Path, minilm: OnnxEmbedder) -> None:
    index = LocalIndex(tmp_path / "index.db", embedder=minilm)
    await index.open()
    try:
        await index.index_document(
            DocumentHeader("alice", "ko"), [ChunkRecord(key, text) for key, text in KOREAN_PASSAGES.items()]
        )
        qrels = {qid: {expected: 1} for qid, (_, expected) in KOREAN_QUESTIONS.items()}
        rankings: dict[SearchMode, dict[str, list[str]]] = {}
        for mode in (SearchMode.KEYWORD, SearchMode.DENSE, SearchMode.HYBRID):
            rankings[mode] = {qid: await ranked(index, question, mode) for qid, (question, _) in qrels_questions()}
    finally:
        await index.close()
    scores = {mode: mean_ndcg(rankings[mode], qrels) for mode in rankings}
    assert scores[SearchMode.HYBRID] >= scores[SearchMode.KEYWORD] >= 0.8, scores
    # MiniLM does not read Korean: trusted blindly, its ranking would cost a lot here.
    assert scores[SearchMode.DENSE] < scores[SearchMode.KEYWORD] - 0.2, scores


def qrels_questions() -> list[tuple[str, tuple[str, str]]]:
    return [(qid, (question, expected)) for qid, (question, expected) in KOREAN_QUESTIONS.items()]


async def test_english_paraphrases_are_found_by_hybrid_and_exact_terms_still_win(
    tmp_path: Path, minilm: OnnxEmbedder
) -> None:
    index = LocalIndex(tmp_path / "index.db", embedder=minilm)
    await index.open()
    try:
        await index.index_document(
            DocumentHeader("alice", "en", title="Notes"),
            chunks(
                "The physician prescribed antibiotics for the bacterial infection.",
                "Error code E1234 means the pump is blocked.",
                "The stock market fell sharply on Monday.",
                "Cats sleep for most of the day.",
                "서울은 대한민국의 수도이다.",
            ),
        )
        assert (await ranked(index, "doctor gave medicine for germs", SearchMode.HYBRID))[0] == "c0"
        assert (await ranked(index, "E1234", SearchMode.HYBRID))[0] == "c1"
        assert (await ranked(index, "E1234", SearchMode.AUTO))[0] == "c1"
        assert await ranked(index, "doctor gave medicine for germs", SearchMode.KEYWORD) == []
    finally:
        await index.close()


# Mechanics with the hashed embedder


@pytest.fixture
async def hashed(tmp_path: Path) -> AsyncIterator[LocalIndex]:
    index = LocalIndex(tmp_path / "index.db", embedder=HashEmbedder(), ann_threshold=10_000)
    await index.open()
    yield index
    await index.close()


def vector_rows(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        chunks_count = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        vectors = db.execute("SELECT count(*) FROM chunk_vectors").fetchone()[0]
    return int(chunks_count), int(vectors)


async def test_vectors_are_written_replaced_and_deleted_with_their_chunks(hashed: LocalIndex) -> None:
    await hashed.index_document(DocumentHeader("alice", "d"), chunks("red apple", "green pear", "blue plum"))
    assert vector_rows(hashed.path) == (3, 3)
    assert (await ranked(hashed, "pear", SearchMode.DENSE))[0] == "c1"
    await hashed.index_document(DocumentHeader("alice", "d"), chunks("yellow banana", prefix="n"))
    assert vector_rows(hashed.path) == (1, 1)
    assert await ranked(hashed, "pear", SearchMode.DENSE) == ["n0"]
    assert await hashed.delete_document("alice", "d") == 1
    assert vector_rows(hashed.path) == (0, 0)
    assert await ranked(hashed, "banana", SearchMode.DENSE) == []


async def test_dense_search_is_per_owner_and_honours_the_document_filter(hashed: LocalIndex) -> None:
    for n in range(30):
        await hashed.index_document(DocumentHeader("bob", f"b{n}"), chunks(f"apple orchard number {n}"))
    await hashed.index_document(DocumentHeader("alice", "a1"), chunks("apple pie"))
    await hashed.index_document(DocumentHeader("alice", "a2"), chunks("apple juice"))
    for mode in (SearchMode.DENSE, SearchMode.HYBRID):
        passages = await hashed.search("alice", "apple", 10, (), mode)
        assert {p.doc_id for p in passages} == {"a1", "a2"}, mode
        only = await hashed.search("alice", "apple", 10, ("a2",), mode)
        assert [p.doc_id for p in only] == ["a2"], mode
    assert await hashed.search("carol", "apple", 10, (), SearchMode.DENSE) == []


async def test_a_failed_write_leaves_no_vector_behind(hashed: LocalIndex) -> None:
    await hashed.index_document(DocumentHeader("alice", "d"), chunks("kept text"))
    with pytest.raises(Exception, match="appears more than once"):
        await hashed.index_document(
            DocumentHeader("alice", "d"), [ChunkRecord("x", "new text"), ChunkRecord("x", "dup")]
        )
    assert vector_rows(hashed.path) == (1, 1)
    assert await ranked(hashed, "kept", SearchMode.DENSE) == ["c0"]


async def test_hnsw_answers_large_owners_and_its_snapshot_is_reused_only_when_current(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "index.db"
    embedder = HashEmbedder()
    first = LocalIndex(path, embedder=embedder, ann_threshold=50)
    await first.open()
    for n in range(8):
        await first.index_document(
            DocumentHeader("alice", f"d{n}"),
            chunks(*(f"word{n}x{i} common filler" for i in range(10)), prefix=f"d{n}-"),
        )
    assert (await ranked(first, "word3x7", SearchMode.DENSE, top_k=1)) == ["d3-7"]
    await first.delete_document("alice", "d3")
    assert "d3-7" not in await ranked(first, "word3x7", SearchMode.DENSE, top_k=5)
    await first.close()
    manifest = json.loads((tmp_path / "index.db.ann" / "ann.json").read_text())
    assert manifest["owners"] == {"1": 70}

    caplog.set_level(logging.INFO, logger="services.retrieval.backends.vectors")
    second = LocalIndex(path, embedder=embedder, ann_threshold=50)
    await second.open()
    assert not any(record.message == "HNSW graph built" for record in caplog.records)  # the snapshot was loaded
    assert not (tmp_path / "index.db.ann" / "ann.json").exists()  # consumed: a crash now cannot reuse it
    assert (await ranked(second, "word5x2", SearchMode.DENSE, top_k=1)) == ["d5-2"]
    assert "d3-7" not in await ranked(second, "word3x7", SearchMode.DENSE, top_k=5)
    await second.index_document(DocumentHeader("alice", "late"), chunks("word9x9 late arrival", prefix="late-"))
    # A crash now (no close): the next start must rebuild, not load the graph saved before the write.
    second._writer = None  # simulate the process dying: nothing saved
    second._keyword.abandon()
    third = LocalIndex(path, embedder=embedder, ann_threshold=50)
    await third.open()
    assert any(record.message == "HNSW graph built" for record in caplog.records)
    assert (await ranked(third, "word9x9 late arrival", SearchMode.DENSE, top_k=1)) == ["late-0"]
    await third.close()


async def test_chunks_without_vectors_are_embedded_at_start(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    keyword_only = LocalIndex(path)
    await keyword_only.open()
    await keyword_only.index_document(DocumentHeader("alice", "d"), chunks("red apple", "green pear"))
    await keyword_only.close()
    assert vector_rows(path) == (2, 0)
    embedder = HashEmbedder()
    hybrid = LocalIndex(path, embedder=embedder)
    await hybrid.open()
    try:
        assert vector_rows(path) == (2, 2)
        assert (await ranked(hybrid, "pear", SearchMode.DENSE))[0] == "c1"
    finally:
        await hybrid.close()
    # Another model: every vector is stale and is recomputed.
    other = HashEmbedder("hash-embedder:2")
    again = LocalIndex(path, embedder=other)
    await again.open()
    await again.close()
    assert other.embedded == 2


async def test_a_version_1_index_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    count = write_legacy_index(path, 1)
    index = LocalIndex(path, embedder=HashEmbedder())
    await index.open()
    try:
        assert vector_rows(path) == (count, count)
        with sqlite3.connect(path) as db:
            english = db.execute("SELECT chunk_id, english FROM chunks ORDER BY chunk_key").fetchall()
        assert english == [("g0", 1.0), ("s0", 0.0), ("s1", 1.0), ("b0", 1.0)]
        assert (await ranked(index, "apple", SearchMode.HYBRID))[0] == "s1"
        assert (await ranked(index, "tomatoes", SearchMode.HYBRID, owner="bob")) == ["b0"]
    finally:
        await index.close()


# The model files


def test_a_missing_model_stops_the_start_with_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match=r"embedding model is missing: .*scripts/export_embedding_model\.py"):
        OnnxEmbedder(tmp_path).load()


@needs_model
def test_a_tampered_model_is_refused(tmp_path: Path) -> None:
    for name in (MANIFEST_NAME, ONNX_NAME, TOKENIZER_NAME):
        (tmp_path / name).write_bytes((DEFAULT_MODEL_DIR / name).read_bytes())
    with (tmp_path / ONNX_NAME).open("ab") as model:
        model.write(b"\0")
    with pytest.raises(FailedPrecondition, match="was changed after export; refusing it"):
        OnnxEmbedder(tmp_path).load()
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest["source_sha256"] = "0" * 64
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(FailedPrecondition, match="not the pinned all-MiniLM-L6-v2"):
        OnnxEmbedder(tmp_path).load()
