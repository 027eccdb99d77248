"""Child process for the kill -9 test: indexes and deletes forever, printing each write once acknowledged.

Lines: ``put <doc_id> <n>`` (document ``doc_id`` now holds version ``n``) and ``del <doc_id> <n>``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from services.retrieval.backends import ChunkRecord, DocumentHeader
from services.retrieval.backends.local_index import LocalIndex
from tests.unit.retrieval.retrieval_fakes import HashEmbedder

CHUNKS_PER_DOCUMENT = 40


async def main(path: Path) -> None:
    index = LocalIndex(path, embedder=HashEmbedder(), ann_threshold=200)
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
        n += 1


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
