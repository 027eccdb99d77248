"""nDCG@k against hand-computed values, and the BEIR loader on a tiny data set."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from services.retrieval.evaluation import load_beir, mean_ndcg, ndcg_at_k


def test_perfect_ranking_scores_one() -> None:
    assert ndcg_at_k(["a", "b", "x"], {"a": 2, "b": 1}) == pytest.approx(1.0)


def test_graded_gains_with_log_discount() -> None:
    # Ranking b (1), a (2): DCG = 1/log2(2) + 2/log2(3); ideal a, b: 2/log2(2) + 1/log2(3).
    expected = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert ndcg_at_k(["b", "a"], {"a": 2, "b": 1}) == pytest.approx(expected)


def test_cutoff_ignores_documents_after_k() -> None:
    assert ndcg_at_k(["x", "y", "a"], {"a": 1}, k=2) == 0.0
    assert ndcg_at_k(["x", "a"], {"a": 1}, k=2) == pytest.approx(1 / math.log2(3))


def test_ideal_is_cut_at_k_too() -> None:
    # Three relevant documents, k=1: retrieving one relevant first is perfect.
    assert ndcg_at_k(["a"], {"a": 1, "b": 1, "c": 1}, k=1) == pytest.approx(1.0)


def test_duplicates_count_once_and_non_positive_grades_are_not_relevant() -> None:
    assert ndcg_at_k(["a", "a", "b"], {"a": 1, "b": 1}) == pytest.approx(1.0)
    assert ndcg_at_k(["z"], {"z": 0, "a": 1}) == 0.0
    assert ndcg_at_k(["a"], {"z": 0}) == 0.0


def test_mean_over_judged_queries_missing_ranking_scores_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    assert mean_ndcg({"q1": ["a"]}, qrels) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no query"):
        mean_ndcg({}, {"q": {"a": 0}})


def test_load_beir(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "1", "title": "T1", "text": "one"}\n{"_id": "2", "text": "two"}\n', encoding="utf-8"
    )
    (tmp_path / "queries.jsonl").write_text('{"_id": "q", "text": "one?"}\n', encoding="utf-8")
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\t1\t2\n", encoding="utf-8")
    dataset = load_beir(tmp_path)
    assert [(d.doc_id, d.title, d.text) for d in dataset.corpus] == [("1", "T1", "one"), ("2", "", "two")]
    assert dataset.queries == {"q": "one?"}
    assert dataset.qrels == {"q": {"1": 2}}
