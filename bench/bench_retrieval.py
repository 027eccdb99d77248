"""Retrieval benchmark: the hybrid local index at 10k and 100k chunks, next to a LangChain reference.

Chunks: windows of two consecutive sentences of SciFact abstracts (~40 words). The first 10,000
are embedded for real with the service's model (all-MiniLM-L6-v2, ONNX int8; cached under
``.venv/share/ragchat/bench`` after the first run). The 100k level adds 90,000 chunks made
by joining two real chunks, with the normalised sum of their two vectors plus a little noise as
vector (embedding 100k chunks for real takes ~10 minutes on 2 cores; the index's work per
query does not depend on where a stored vector came from). Query embedding is always live.

Measured per level, ours:
* indexing: documents of 20 chunks through ``LocalIndex.index_document`` (embedding included,
  on a 1,000-chunk sample; the rest with the vectors precomputed: write rate alone);
* search in-process (hybrid, top 5, query embedding included): p50 / p99 over 200 queries;
* over gRPC: the retrieval service started as its own process (``python -m services.retrieval``)
  on the index just built, p50 / p99 sequential, then throughput with 16 concurrent clients
  (16 channels, 8 s), and the service's RSS (VmRSS after the run, VmHWM peak);
Reference, in the same run over the same chunks and the same model: LangChain
``EnsembleRetriever`` (weights 0.5/0.5) of ``BM25Retriever`` (rank_bm25) and an
``InMemoryVectorStore`` retriever; in-process p50 / p99 and throughput with 16 threads.

The keyword leg alone, per level, the same queries through both engines in the same run
(alternating query by query, so both see the same machine load): the previous one (SQLite FTS5
``bm25()``, its exact table, tokenizer and MATCH expression, rebuilt here as the baseline) and
the current one (:class:`~services.retrieval.backends.keyword.KeywordIndex`, tantivy), each
returning the top 100 candidates the hybrid search asks for; p50 / p99 and their ratio.

Also, at 100k: the ANN engine choice (hnswlib vs usearch vs exact numpy): build time, query
p50, recall@10 against exact search.

Targets at 100k: gRPC p50 ≤ 15 ms, p99 ≤ 50 ms; ≥ 5× the reference's throughput; RSS ≤ 1.5 GB.

``.venv/bin/python -m bench retrieval`` (or ``make bench``);
``.venv/bin/python -m bench.bench_retrieval --levels 10000`` for a quicker run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO / ".." / "shared" / "data" / "scifact"
CACHE = Path(sys.prefix) / "share" / "ragchat" / "bench"
REAL_CHUNKS = 10_000
CHUNKS_PER_DOCUMENT = 20
EMBEDDED_SAMPLE = 1_000
QUERIES = 200
REFERENCE_QUERIES = {10_000: 100, 100_000: 40}
CONCURRENCY = 16
THROUGHPUT_SECONDS = 8.0
TOP_K = 5
OWNER = "bench"
# Candidates the hybrid search takes from each leg (local_index.MIN_CANDIDATES).
KEYWORD_POOL = 100
# The previous keyword leg: FTS5 table, tokenizer and bm25() column weights (owner, doc, title, body).
FTS5_TOKENIZER = "porter unicode61 remove_diacritics 2"
FTS5_TITLE_WEIGHT = 0.5


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def load_texts() -> tuple[list[str], list[str]]:
    from services.common.text import sentences
    from services.retrieval.evaluation import load_beir

    dataset = load_beir(SCIFACT)
    chunks: list[str] = []
    for document in dataset.corpus:
        parts = sentences(document.text)
        for i in range(max(1, len(parts) - 1)):
            chunks.append(" ".join(parts[i : i + 2]))
    queries = [dataset.queries[qid] for qid in dataset.qrels]
    return chunks, queries


def real_vectors(embedder: Any, texts: list[str]) -> np.ndarray:
    key = hashlib.sha256(("\n".join(texts) + embedder.model_id).encode()).hexdigest()[:16]
    path = CACHE / f"vectors-{key}.npy"
    if path.is_file():
        cached: np.ndarray = np.load(path)
        return cached
    started = time.perf_counter()
    vectors: np.ndarray = embedder.embed(texts)
    sys.stderr.write(f"embedded {len(texts)} chunks in {time.perf_counter() - started:.0f} s (cached at {path})\n")
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def corpus(level: int, texts: list[str], vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    if level <= len(texts):
        return texts[:level], vectors[:level]
    rng = np.random.default_rng(7)
    extra = level - len(texts)
    left, right = rng.integers(0, len(texts), extra), rng.integers(0, len(texts), extra)
    joined = vectors[left] + vectors[right] + rng.normal(0, 0.05, (extra, vectors.shape[1])).astype(np.float32)
    joined /= np.linalg.norm(joined, axis=1, keepdims=True)
    return texts + [f"{texts[a]} {texts[b]}" for a, b in zip(left, right, strict=True)], np.vstack(
        [vectors, joined.astype(np.float32)]
    )


class CachedEmbedder:
    """The real model for anything it has not been told the vector of (queries, the sample)."""

    def __init__(self, model: Any, known: dict[str, np.ndarray]) -> None:
        self._model = model
        self.known = known

    @property
    def model_id(self) -> str:
        return str(self._model.model_id)

    @property
    def dimension(self) -> int:
        return int(self._model.dimension)

    def load(self) -> None:
        self._model.load()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        unknown = [i for i, text in enumerate(texts) if text not in self.known]
        for i, text in enumerate(texts):
            if text in self.known:
                out[i] = self.known[text]
        if unknown:
            out[unknown] = self._model.embed([texts[i] for i in unknown])
        return out


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def build_index(path: Path, texts: list[str], vectors: np.ndarray, model: Any) -> dict[str, float]:
    from services.retrieval.backends import ChunkRecord, DocumentHeader
    from services.retrieval.backends.local_index import LocalIndex

    sample = min(EMBEDDED_SAMPLE, len(texts))
    embedder = CachedEmbedder(model, {})
    index = LocalIndex(path, embedder=embedder)
    await index.open()
    try:

        async def write(first: int, last: int) -> float:
            started = time.perf_counter()
            for start in range(first, last, CHUNKS_PER_DOCUMENT):
                stop = min(start + CHUNKS_PER_DOCUMENT, last)
                records = [ChunkRecord(f"c{i}", texts[i]) for i in range(start, stop)]
                await index.index_document(DocumentHeader(OWNER, f"doc{start // CHUNKS_PER_DOCUMENT}"), records)
            return time.perf_counter() - started

        embedded_seconds = await write(0, sample)
        embedder.known = {texts[i]: vectors[i] for i in range(sample, len(texts))}
        written_seconds = await write(sample, len(texts))
    finally:
        started = time.perf_counter()
        await index.close()  # saves the HNSW graph for the service process
        close_seconds = time.perf_counter() - started
    return {
        "rate_embedded": sample / embedded_seconds,
        "rate_precomputed": (len(texts) - sample) / max(written_seconds, 1e-9),
        "close_s": close_seconds,
    }


async def in_process(path: Path, model: Any, queries: list[str]) -> tuple[list[float], Any]:
    from services.retrieval.backends import SearchMode
    from services.retrieval.backends.local_index import LocalIndex

    index = LocalIndex(path, embedder=model)
    started = time.perf_counter()
    await index.open()
    open_seconds = time.perf_counter() - started
    latencies: list[float] = []
    try:
        for query in queries:
            started = time.perf_counter()
            await index.search(OWNER, query, TOP_K, (), SearchMode.HYBRID)
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        await index.close()
    return latencies, open_seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def over_grpc(data_dir: Path, queries: list[str]) -> dict[str, float]:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from ragchat.v1 import retrieval_pb2, retrieval_pb2_grpc

    from services.common.channels import open_channel

    port = free_port()
    env = {**os.environ, "PORT": str(port), "DATA_DIR": str(data_dir), "LOG_LEVEL": "warning"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.retrieval", cwd=REPO, env=env)
    channels = [open_channel(f"127.0.0.1:{port}") for _ in range(CONCURRENCY)]
    try:
        health = health_pb2_grpc.HealthStub(channels[0])
        started = time.perf_counter()
        while True:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except Exception:
                pass
            if process.returncode is not None or time.perf_counter() - started > 300:
                raise RuntimeError("the retrieval service did not start")
            await asyncio.sleep(0.2)
        start_seconds = time.perf_counter() - started
        stubs = [retrieval_pb2_grpc.RetrievalServiceStub(channel) for channel in channels]

        def request(query: str) -> Any:
            return retrieval_pb2.SearchRequest(
                owner=OWNER, query=query, top_k=TOP_K, mode=retrieval_pb2.SEARCH_MODE_HYBRID
            )

        for query in queries[:20]:
            await stubs[0].Search(request(query))
        latencies: list[float] = []
        for query in queries:
            begun = time.perf_counter()
            await stubs[0].Search(request(query))
            latencies.append((time.perf_counter() - begun) * 1000)
        done = 0
        deadline = time.perf_counter() + THROUGHPUT_SECONDS

        async def client(n: int) -> None:
            nonlocal done
            i = n
            while time.perf_counter() < deadline:
                await stubs[n].Search(request(queries[i % len(queries)]))
                done += 1
                i += CONCURRENCY

        begun = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(CONCURRENCY)))
        qps = done / (time.perf_counter() - begun)
        rss, peak = rss_mb(process.pid)
    finally:
        for channel in channels:
            await channel.close()
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=60)
    return {
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 99),
        "qps": qps,
        "rss": rss,
        "peak": peak,
        "start_s": start_seconds,
    }


def reference(texts: list[str], vectors: np.ndarray, model: Any, queries: list[str]) -> dict[str, float]:
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from langchain_classic.retrievers import EnsembleRetriever
    from langchain_community.retrievers import BM25Retriever
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import InMemoryVectorStore

    known = {text: vectors[i] for i, text in enumerate(texts)}

    class SameModel(Embeddings):
        """The same MiniLM: stored chunks' vectors precomputed, queries embedded live."""

        def embed_documents(self, batch: list[str]) -> list[list[float]]:
            return [known[text].tolist() if text in known else model.embed([text])[0].tolist() for text in batch]

        def embed_query(self, text: str) -> list[float]:
            return [float(x) for x in model.embed([text])[0]]

    started = time.perf_counter()
    bm25 = BM25Retriever.from_texts(texts, k=TOP_K)
    store = InMemoryVectorStore(SameModel())
    store.add_texts(texts)
    ensemble = EnsembleRetriever(retrievers=[bm25, store.as_retriever(search_kwargs={"k": TOP_K})], weights=[0.5, 0.5])
    build_seconds = time.perf_counter() - started
    latencies: list[float] = []
    for query in queries:
        begun = time.perf_counter()
        ensemble.invoke(query)
        latencies.append((time.perf_counter() - begun) * 1000)
    done = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + THROUGHPUT_SECONDS

    def client(n: int) -> None:
        nonlocal done
        i = n
        while time.perf_counter() < deadline:
            ensemble.invoke(queries[i % len(queries)])
            with lock:
                done += 1
            i += CONCURRENCY

    begun = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(client, range(CONCURRENCY)))
    qps = done / (time.perf_counter() - begun)
    return {
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 99),
        "qps": qps,
        "build_s": build_seconds,
    }


def _fts5_quote(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def keyword_engines(folder: Path, texts: list[str], queries: list[str]) -> dict[str, float]:
    """FTS5 (the previous keyword leg) vs tantivy (the current one): top-100 latency on the same queries."""
    from services.retrieval.backends.keyword import KeywordChunk, KeywordIndex, query_terms, term_string
    from services.retrieval.backends.local_index import DEFAULT_TITLE_WEIGHT

    terms = [term_string(text) for text in texts]
    db = sqlite3.connect(folder / "fts5.db")
    db.execute(f"CREATE VIRTUAL TABLE chunk_fts USING fts5(owner, doc, title, body, tokenize='{FTS5_TOKENIZER}')")
    with db:
        db.executemany(
            "INSERT INTO chunk_fts (rowid, owner, doc, title, body) VALUES (?, '1', ?, '', ?)",
            ((key + 1, str(key // CHUNKS_PER_DOCUMENT + 1), body) for key, body in enumerate(terms)),
        )
    keyword = KeywordIndex(folder / "keyword", title_weight=DEFAULT_TITLE_WEIGHT)
    keyword.open("bench")
    keyword.apply(
        [],
        (KeywordChunk(key + 1, 1, key // CHUNKS_PER_DOCUMENT + 1, "", body) for key, body in enumerate(terms)),
        1,
    )
    keyword.commit()

    def fts5(query_terms_: list[str]) -> int:
        expression = 'owner:"1" AND {title body}:(' + " OR ".join(_fts5_quote(t) for t in query_terms_) + ")"
        rows = db.execute(
            "SELECT rowid, bm25(chunk_fts, 0.0, 0.0, ?, 1.0) AS rank FROM chunk_fts WHERE chunk_fts MATCH ?"
            " ORDER BY rank, rowid LIMIT ?",
            (FTS5_TITLE_WEIGHT, expression, KEYWORD_POOL),
        ).fetchall()
        return len(rows)

    def tantivy(query_terms_: list[str]) -> int:
        return len(keyword.search(1, query_terms_, None, KEYWORD_POOL))

    timings: dict[str, list[float]] = {"fts5": [], "tantivy": []}
    try:
        for query in queries:
            found = query_terms(query)
            if not found:
                continue
            for name, engine in (("fts5", fts5), ("tantivy", tantivy)):
                begun = time.perf_counter()
                engine(found)
                timings[name].append((time.perf_counter() - begun) * 1000)
    finally:
        keyword.close()
        db.close()
    return {
        f"{name}_{stat}": value
        for name, values in timings.items()
        for stat, value in (("p50", statistics.median(values)), ("p99", percentile(values, 99)))
    }


def ann_choice(vectors: np.ndarray, queries: np.ndarray) -> list[str]:
    """hnswlib vs usearch vs exact: build seconds, query p50 (ms), recall@10 against exact."""
    import hnswlib  # type: ignore[import-untyped,unused-ignore]
    from usearch.index import Index  # type: ignore[import-untyped,unused-ignore]

    keys = np.arange(len(vectors), dtype=np.int64)
    exact = [set(np.argsort(-(vectors @ q))[:10].tolist()) for q in queries]

    def timed(search: Callable[[np.ndarray], list[int]]) -> tuple[float, float]:
        latencies, hits = [], 0
        for q, truth in zip(queries, exact, strict=True):
            begun = time.perf_counter()
            found = search(q)
            latencies.append((time.perf_counter() - begun) * 1000)
            hits += len(truth.intersection(found))
        return statistics.median(latencies), hits / (10 * len(queries))

    rows = []
    p50, recall = timed(lambda q: np.argpartition(-(vectors @ q), 10)[:10].tolist())
    rows.append(f"| exact (numpy) | 0 | {p50:.2f} | {recall:.3f} |")
    started = time.perf_counter()
    graph = hnswlib.Index(space="ip", dim=vectors.shape[1])
    graph.init_index(max_elements=len(vectors), ef_construction=100, M=16)
    graph.set_num_threads(2)
    graph.add_items(vectors, keys)
    graph.set_ef(128)
    build = time.perf_counter() - started
    p50, recall = timed(lambda q: graph.knn_query(q[None, :], k=10)[0][0].tolist())
    rows.append(f"| hnswlib 0.8.0 (M 16, ef 100/128) | {build:.1f} | {p50:.2f} | {recall:.3f} |")
    started = time.perf_counter()
    usearch_index = Index(ndim=vectors.shape[1], metric="ip", connectivity=16, expansion_add=100, expansion_search=128)
    usearch_index.add(keys, vectors, threads=2)
    build = time.perf_counter() - started
    p50, recall = timed(lambda q: usearch_index.search(q, 10).keys.tolist())
    rows.append(f"| usearch 2.26.6 (M 16, ef 100/128) | {build:.1f} | {p50:.2f} | {recall:.3f} |")
    return rows


async def run(levels: list[int], with_ann_choice: bool) -> str:
    from services.retrieval.embedding import DEFAULT_MODEL_DIR, OnnxEmbedder

    model = OnnxEmbedder(DEFAULT_MODEL_DIR)
    model.load()
    texts, queries = load_texts()
    real = texts[:REAL_CHUNKS]
    vectors = real_vectors(model, real)
    queries = (queries * (QUERIES // len(queries) + 1))[:QUERIES]
    lines = [
        f"retrieval benchmark (preliminary: shared 2-core machine), top-{TOP_K} hybrid, query embedding included",
        "",
        "| chunks | side | index rate (chunks/s) | p50 in-process (ms) | p99 in-process (ms) | p50 gRPC (ms) "
        "| p99 gRPC (ms) | throughput, 16 clients (q/s) | RSS / peak (MB) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    ratios: list[str] = []
    keyword_rows: list[str] = []
    ann_rows: list[str] = []
    for level in levels:
        level_texts, level_vectors = corpus(level, real, vectors)
        with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as scratch:
            data_dir = Path(scratch)
            indexing = await build_index(data_dir / "index.db", level_texts, level_vectors, model)
            local, open_seconds = await in_process(data_dir / "index.db", model, queries)
            served = await over_grpc(data_dir, queries)
            engines = keyword_engines(data_dir, level_texts, queries)
        ref = reference(level_texts, level_vectors, model, queries[: REFERENCE_QUERIES.get(level, 40)])
        lines.append(
            f"| {level:,} | ours | {indexing['rate_embedded']:.0f} with embedding, "
            f"{indexing['rate_precomputed']:.0f} writes only | {statistics.median(local):.1f} "
            f"| {percentile(local, 99):.1f} | {served['p50']:.1f} | {served['p99']:.1f} | {served['qps']:.0f} "
            f"| {served['rss']:.0f} / {served['peak']:.0f} |"
        )
        lines.append(
            f"| {level:,} | LangChain EnsembleRetriever | build {ref['build_s']:.1f} s | {ref['p50']:.1f} "
            f"| {ref['p99']:.1f} | – | – | {ref['qps']:.1f} (16 threads, in-process) | – |"
        )
        ratios.append(
            f"{level:,} chunks: throughput ours (gRPC) / reference (in-process) = {served['qps'] / ref['qps']:.1f}×; "
            f"p50 reference / ours (in-process) = {ref['p50'] / statistics.median(local):.1f}×; "
            f"service start {served['start_s']:.1f} s, index open in-process {open_seconds:.1f} s"
        )
        keyword_rows.append(
            f"| {level:,} | {engines['fts5_p50']:.2f} / {engines['fts5_p99']:.2f} "
            f"| {engines['tantivy_p50']:.2f} / {engines['tantivy_p99']:.2f} "
            f"| {engines['fts5_p50'] / engines['tantivy_p50']:.1f}× |"
        )
        if with_ann_choice and level >= 100_000:
            ann_rows = ann_choice(level_vectors, model.embed(queries[:100]))
    lines += ["", *ratios]
    lines += [
        "",
        f"Keyword leg alone, top {KEYWORD_POOL} of one owner, the same queries alternating between the engines:",
        "",
        "| chunks | SQLite FTS5 bm25() p50 / p99 (ms) | tantivy p50 / p99 (ms) | p50 ratio |",
        "|---:|---:|---:|---:|",
        *keyword_rows,
    ]
    if ann_rows:
        lines += [
            "",
            "ANN engine at 100k vectors (one owner), 100 queries, top 10:",
            "",
            "| engine | build (s) | query p50 (ms) | recall@10 vs exact |",
            "|---|---:|---:|---:|",
            *ann_rows,
        ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_retrieval", description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="10000,100000", help="comma-separated chunk counts")
    parser.add_argument("--no-ann-choice", action="store_true", help="skip the hnswlib/usearch/exact comparison")
    args = parser.parse_args(argv)
    if not (SCIFACT / "corpus.jsonl").is_file():
        print(f"SciFact not found at {SCIFACT}", file=sys.stderr)
        return 2
    levels = [int(level) for level in args.levels.split(",") if level.strip()]
    print(asyncio.run(run(levels, not args.no_ann_choice)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
