"""``ragchat eval``: the subcommand is registered, --limit restricts consistently, the table renders."""

from __future__ import annotations

from pathlib import Path

from services.retrieval.evaluation import BeirDataset, CorpusDocument, mean_recall, recall_at_k
from ui import cli, evaluate


def test_eval_is_a_ragchat_subcommand_with_its_options() -> None:
    args = cli.build_parser().parse_args(["eval", "--data", "/tmp/beir", "--user", "u", "--limit", "7"])
    assert (args.command, args.data, args.user, args.limit) == ("eval", Path("/tmp/beir"), "u", 7)
    assert cli._COMMANDS["eval"] is evaluate.cmd_eval
    defaults = cli.build_parser().parse_args(["eval"])
    assert (defaults.user, defaults.limit) == ("scifact-eval", 0)
    assert (
        defaults.data.resolve()
        == (Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "scifact").resolve()
    )


def test_limit_keeps_the_queries_whose_relevant_documents_are_all_kept() -> None:
    dataset = BeirDataset(
        corpus=[CorpusDocument(str(i), f"t{i}", f"text {i}") for i in range(4)],
        queries={"q1": "a", "q2": "b", "q3": "c"},
        qrels={"q1": {"0": 1, "1": 1}, "q2": {"1": 1, "3": 1}, "q3": {"2": 1, "3": 0}},
    )
    limited = evaluate.restrict(dataset, 3)
    assert [d.doc_id for d in limited.corpus] == ["0", "1", "2"]
    assert set(limited.qrels) == {"q1", "q3"}
    assert evaluate.restrict(dataset, 0) is dataset
    assert evaluate.file_name(dataset.corpus[2]) == "scifact-2.txt"


def test_recall_counts_distinct_relevant_documents() -> None:
    assert recall_at_k(["a", "x", "a", "b"], {"a": 1, "b": 2, "c": 0}, 2) == 0.5
    assert recall_at_k(["a", "x", "a", "b"], {"a": 1, "b": 2}, 3) == 1.0
    assert mean_recall({"q": ["a"]}, {"q": {"a": 1}, "r": {"b": 1}}, 10) == 0.5


def test_the_table_has_one_row_per_mode() -> None:
    row = {"ndcg@10": 0.7123, "recall@10": 0.8, "recall@100": 0.95, "p50_ms": 8.04}
    table = evaluate.render({"keyword": row, "dense": row, "hybrid": row}, 300, 5183)
    assert "| hybrid | 0.7123 | 0.8000 | 0.9500 | 8.0 |" in table
    assert table.startswith("retrieval quality over 300 queries, 5183 documents")
