"""Quality on real data: BM25 over SciFact (5,183 abstracts, 300 test claims) through the LocalIndex API.

Published BM25 nDCG@10 on this split is 0.665; a plain BM25 scores 0.663 on this copy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from services.retrieval.backends import SearchMode
from services.retrieval.backends.local_index import LocalIndex
from services.retrieval.evaluation import evaluate, index_corpus, load_beir

SCIFACT = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "scifact"

log = logging.getLogger(__name__)


@pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason=f"SciFact not found at {SCIFACT}")
async def test_scifact_ndcg_at_10_matches_published_bm25(tmp_path: Path) -> None:
    dataset = load_beir(SCIFACT)
    assert (len(dataset.corpus), len(dataset.qrels)) == (5183, 300)
    index = LocalIndex(tmp_path / "index.db")
    await index.open()
    try:
        seconds = await index_corpus(index, "scifact", dataset.corpus)
        report = await evaluate(index, "scifact", dataset, k=10, index_seconds=seconds)
        first_query = dataset.queries[next(iter(dataset.qrels))]
        other_owner = await index.search("someone-else", first_query, 10, (), SearchMode.KEYWORD)
    finally:
        await index.close()
    log.warning(
        "scifact nDCG@10 %.4f over %d queries; indexing %.1f s; query p50 %.2f ms, p95 %.2f ms",
        report.ndcg,
        report.queries,
        report.index_seconds,
        report.query_p50_ms,
        report.query_p95_ms,
    )
    assert report.queries == 300
    assert report.ndcg >= 0.65
    assert other_owner == []
