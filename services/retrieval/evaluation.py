"""Retrieval quality: BEIR-format data sets and nDCG@k, for tests and ``make eval``.

nDCG follows trec_eval's ``ndcg_cut`` (what BEIR reports through pytrec_eval): the gain of a
document is its graded relevance, discounted by ``log2(rank + 1)``; the ideal ranking sorts
the judged relevant documents by grade; only queries with at least one relevant judgement
count, and a query whose results miss every relevant document scores 0.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.retrieval.backends import ChunkRecord, DocumentHeader, IndexWriter, Retriever, SearchMode


@dataclass(frozen=True)
class CorpusDocument:
    doc_id: str
    title: str
    text: str


@dataclass(frozen=True)
class BeirDataset:
    corpus: list[CorpusDocument]
    # query id → query text
    queries: dict[str, str]
    # query id → {doc id: graded relevance}
    qrels: dict[str, dict[str, int]]


@dataclass(frozen=True)
class EvaluationReport:
    ndcg: float
    k: int
    queries: int
    documents: int
    index_seconds: float
    query_p50_ms: float
    query_p95_ms: float


def load_beir(folder: Path, split: str = "test") -> BeirDataset:
    """``corpus.jsonl`` (_id, title, text), ``queries.jsonl`` (_id, text), ``qrels/<split>.tsv``."""
    corpus: list[CorpusDocument] = []
    with (folder / "corpus.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                item = json.loads(line)
                corpus.append(CorpusDocument(str(item["_id"]), item.get("title") or "", item.get("text") or ""))
    queries: dict[str, str] = {}
    with (folder / "queries.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                item = json.loads(line)
                queries[str(item["_id"])] = item["text"]
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / f"{split}.tsv").open(encoding="utf-8", newline="") as table:
        for row in csv.DictReader(table, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels)


def dcg(gains: Sequence[float]) -> float:
    return sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))


def ndcg_at_k(ranked_doc_ids: Sequence[str], judgements: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k of one ranking against graded judgements (grades ≤ 0 are not relevant)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    ideal = dcg(sorted((grade for grade in judgements.values() if grade > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    seen: set[str] = set()
    gains: list[float] = []
    for doc_id in ranked_doc_ids:
        if doc_id in seen:
            continue
        seen.add(doc_id)
        gains.append(float(max(judgements.get(doc_id, 0), 0)))
        if len(gains) == k:
            break
    return dcg(gains) / ideal


def mean_ndcg(rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], k: int = 10) -> float:
    """Mean nDCG@k over the queries that have a relevant judgement; a missing ranking scores 0."""
    judged = [query_id for query_id, judgements in qrels.items() if any(grade > 0 for grade in judgements.values())]
    if not judged:
        raise ValueError("no query has a relevant judgement")
    return sum(ndcg_at_k(rankings.get(query_id, ()), qrels[query_id], k) for query_id in judged) / len(judged)


def recall_at_k(ranked_doc_ids: Sequence[str], judgements: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents (grade > 0) found in the first ``k`` distinct documents."""
    relevant = {doc_id for doc_id, grade in judgements.items() if grade > 0}
    if not relevant:
        return 0.0
    top = list(dict.fromkeys(ranked_doc_ids))[:k]
    return len(relevant.intersection(top)) / len(relevant)


def mean_recall(rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], k: int) -> float:
    """Mean recall@k over the queries that have a relevant judgement; a missing ranking scores 0."""
    judged = [query_id for query_id, judgements in qrels.items() if any(grade > 0 for grade in judgements.values())]
    if not judged:
        raise ValueError("no query has a relevant judgement")
    return sum(recall_at_k(rankings.get(query_id, ()), qrels[query_id], k) for query_id in judged) / len(judged)


async def index_corpus(writer: IndexWriter, owner: str, corpus: Sequence[CorpusDocument]) -> float:
    """Index each document (title as the header title, text as one chunk); returns seconds taken."""
    started = time.perf_counter()
    for document in corpus:
        text = document.text if document.text.strip() else document.title
        await writer.index_document(
            DocumentHeader(owner=owner, doc_id=document.doc_id, title=document.title, source="corpus.jsonl"),
            [ChunkRecord(chunk_id=f"{document.doc_id}#0", text=text, char_end=len(text))],
        )
    return time.perf_counter() - started


async def evaluate(
    retriever: Retriever,
    owner: str,
    dataset: BeirDataset,
    *,
    k: int = 10,
    mode: SearchMode = SearchMode.KEYWORD,
    index_seconds: float = 0.0,
) -> EvaluationReport:
    """Run every judged query through ``retriever`` and report nDCG@k and query latency."""
    rankings: dict[str, list[str]] = {}
    latencies: list[float] = []
    for query_id in dataset.qrels:
        started = time.perf_counter()
        passages = await retriever.search(owner, dataset.queries[query_id], k, (), mode)
        latencies.append((time.perf_counter() - started) * 1000)
        rankings[query_id] = [passage.doc_id for passage in passages]
    latencies.sort()
    return EvaluationReport(
        ndcg=mean_ndcg(rankings, dataset.qrels, k),
        k=k,
        queries=len(rankings),
        documents=len(dataset.corpus),
        index_seconds=index_seconds,
        query_p50_ms=statistics.median(latencies),
        query_p95_ms=latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)],
    )


async def evaluate_local(folder: Path, index_path: Path, *, title_weight: float | None = None) -> EvaluationReport:
    """Index a BEIR data set into a fresh :class:`LocalIndex` at ``index_path`` and evaluate it."""
    from services.retrieval.backends.local_index import DEFAULT_TITLE_WEIGHT, LocalIndex

    dataset = await asyncio.to_thread(load_beir, folder)
    index = LocalIndex(index_path, title_weight=DEFAULT_TITLE_WEIGHT if title_weight is None else title_weight)
    await index.open()
    try:
        seconds = await index_corpus(index, "eval", dataset.corpus)
        return await evaluate(index, "eval", dataset, index_seconds=seconds)
    finally:
        await index.close()
