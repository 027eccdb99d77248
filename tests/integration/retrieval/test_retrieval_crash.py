"""kill -9 during indexing: after a restart the index is consistent and nothing acknowledged is lost.

SQLite holds the truth; the keyword index (tantivy) and the vectors are derived from it. The
writer is killed both while the keyword index commits after every write and while it has
committed nothing since its start (every acknowledged write must then be replayed at the next open).
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from services.retrieval.backends import SearchMode
from services.retrieval.backends.keyword import committed_counts
from services.retrieval.backends.local_index import LocalIndex
from tests.integration.retrieval.retrieval_crash_writer import CHUNKS_PER_DOCUMENT
from tests.unit.retrieval.retrieval_fakes import HashEmbedder

REPO = Path(__file__).resolve().parents[3]


def kill_while_writing(path: Path, mode: str, acknowledgements: int) -> dict[str, int | None]:
    """Runs the writer, SIGKILLs it after ``acknowledgements`` acks; each document's last acknowledged
    state (its version, or None when deleted)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.retrieval.retrieval_crash_writer", str(path), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    acked: dict[str, int | None] = {}
    try:
        assert process.stdout is not None
        for _ in range(acknowledgements):
            line = process.stdout.readline()
            assert line, "the writer stopped early"
            action, doc_id, n = line.split()
            acked[doc_id] = int(n) if action == "put" else None
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    return acked


@pytest.mark.parametrize("mode", ["search", "deferred"])
async def test_kill_9_mid_write_leaves_whole_documents_their_vectors_and_keyword_rows(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "index.db"
    acked = kill_while_writing(path, mode, 40)
    with sqlite3.connect(path) as db:
        per_doc = dict(
            db.execute(
                "SELECT d.doc_id, count(c.chunk_key) FROM documents d LEFT JOIN chunks c ON c.doc_key = d.doc_key"
                " GROUP BY d.doc_id"
            ).fetchall()
        )
        doc_keys = dict(db.execute("SELECT doc_key, chunk_count FROM documents").fetchall())
        chunk_rows = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        vector_rows = db.execute("SELECT count(*) FROM chunk_vectors").fetchone()[0]
        orphans = db.execute(
            "SELECT count(*) FROM chunk_vectors v"
            " WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.chunk_key = v.chunk_key)"
        ).fetchone()[0]
    assert set(per_doc.values()) == {CHUNKS_PER_DOCUMENT}, per_doc  # no half-written document
    assert chunk_rows == vector_rows and orphans == 0

    caplog.set_level(logging.INFO, logger="services.retrieval.backends.local_index")
    index = LocalIndex(path, embedder=HashEmbedder(), ann_threshold=200)
    await index.open()
    try:
        last = max(n for n in acked.values() if n is not None)
        in_flight = last + 1
        deleted_in_flight = f"d{(in_flight - 3) % 25}" if in_flight % 7 == 6 else None
        for doc_id, n in acked.items():
            passages = await index.search("alice", "chunk 3", 100, (doc_id,), SearchMode.KEYWORD)
            versions = {int(p.text.split()[1]) for p in passages}
            # The acknowledged state, or the state after the writes in flight at the kill.
            allowed = [{n} if n is not None else set(), {in_flight}]
            if doc_id == deleted_in_flight:
                allowed.append(set())
            assert versions in allowed, (doc_id, n, versions)
            if n is not None and versions == {n}:
                assert len(passages) == CHUNKS_PER_DOCUMENT
        dense = await index.search("alice", "document chunk text", 100, (), SearchMode.DENSE)
        assert len(dense) == min(100, chunk_rows)
        assert {p.doc_id for p in dense} <= set(per_doc)
    finally:
        await index.close()
    # The keyword index holds exactly the chunks SQLite holds: each document's, and nothing of deleted ones.
    keyword = tmp_path / "index.db.keyword"
    assert committed_counts(keyword, "doc", doc_keys) == doc_keys
    assert committed_counts(keyword, "owner", [1]) == {1: chunk_rows}
    if mode == "deferred":  # nothing was committed after the start: every acknowledged write was replayed
        replayed = [
            record.__dict__["chunks"] for record in caplog.records if record.message == "keyword index caught up"
        ]
        assert replayed == [chunk_rows]
