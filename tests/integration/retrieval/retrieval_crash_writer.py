"""Child process for the kill -9 test: indexes and deletes forever, printing each write once acknowledged.

Lines: ``put <doc_id> <n>`` (document ``doc_id`` now holds version ``n``) and ``del <doc_id> <n>``.
Mode ``search``: a keyword search after every write, so the keyword index commits all the time
(a kill lands in the middle of its commits); ``deferred``: no search and no timed commit, so
every write is in SQLite only and the next open must replay them all.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from services.retrieval.backends import ChunkRecord, DocumentHeader, SearchMode
from services.retrieval.backends.local_index import LocalIndex
from tests.unit.retrieval.retrieval_fakes import HashEmbedder

CHUNKS_PER_DOCUMENT = 40
MODES = ("search", "deferred")


async def main(path: Path, mode: str) -> None:
    commit_seconds = 3600.0 if mode == "deferred" else 0.01
    index = LocalIndex(path, embedder=HashEmbedder(), ann_threshold=200, keyword_commit_seconds=commit_seconds)
    await index.open()
    n = 0
    while True:
        doc_id = f"d{n % 25}"  # re-indexes and deletes as well as adds
        if n % 7 == 6:
            await index.delete_document("alice", f"d{(n - 3) % 25}")
            sys.stdout.write(f"del d{(n - 3) % 25} {n}\n")
        chunks = [ChunkRecord(f"{doc_id}-{i}", f"document {n} chunk {i} text") for i in range(CHUNKS_PER_DOCUMENT)]
        await index.index_document(DocumentHeader("alice", doc_id), chunks)
        sys.stdout.write(f"put {doc_id} {n}\n")
        sys.stdout.flush()
        if mode == "search":
            await index.search("alice", f"document {n}", 5, (), SearchMode.KEYWORD)
        n += 1


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in MODES:
        sys.exit(f"usage: retrieval_crash_writer INDEX_PATH {{{','.join(MODES)}}}")
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
