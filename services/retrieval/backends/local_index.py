"""The local index: SQLite FTS5 with BM25 ranking, persisted in one WAL-mode database file.

Tables: ``owners`` (owner → integer key), ``documents`` (one row per (owner, doc_id) with its
title, source, language), ``chunks`` (the original text and its page, heading, offsets,
language) and ``chunk_fts``, the FTS5 table whose rowid is the chunk's key and whose columns
are the owner key, the document key, the title terms (document title and chunk heading) and
the body terms. The owner and document filters are part of the MATCH, so FTS5 ranks only
the owner's chunks: an owner with three chunks among millions still gets their top-k.

A document is written in one transaction (old chunks out, new chunks in, or nothing at all).
SQLite runs in worker threads: one writer connection behind a lock, a small pool of
read-only connections that see the last committed state.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.text import detect_language
from services.retrieval.backends import (
    ChunkRecord,
    DocumentHeader,
    Passage,
    SearchMode,
    validate_chunk,
    validate_header,
)
from services.retrieval.backends.fts import COLUMNS, TOKENIZER, match_expression, query_terms, term_string

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
DEFAULT_TITLE_WEIGHT = 0.5
_READER_POOL_SIZE = 4

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS owners (
    owner_key INTEGER PRIMARY KEY,
    owner TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS documents (
    doc_key INTEGER PRIMARY KEY,
    owner_key INTEGER NOT NULL REFERENCES owners(owner_key),
    doc_id TEXT NOT NULL,
    title TEXT NOT NULL,
    source TEXT NOT NULL,
    language TEXT NOT NULL,
    chunk_count INTEGER NOT NULL,
    indexed_at REAL NOT NULL,
    UNIQUE (owner_key, doc_id)
);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_key INTEGER PRIMARY KEY,
    doc_key INTEGER NOT NULL REFERENCES documents(doc_key),
    position INTEGER NOT NULL,
    chunk_id TEXT NOT NULL,
    text TEXT NOT NULL,
    page INTEGER NOT NULL,
    heading TEXT NOT NULL,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    language TEXT NOT NULL,
    UNIQUE (doc_key, chunk_id)
);
CREATE VIRTUAL TABLE IF NOT EXISTS chunk_fts USING fts5({", ".join(COLUMNS)}, tokenize='{TOKENIZER}');
"""


@dataclass(frozen=True)
class _PreparedChunk:
    record: ChunkRecord
    language: str
    title_terms: str
    body_terms: str


def prepare_chunks(header: DocumentHeader, chunks: Sequence[ChunkRecord]) -> list[ChunkRecord]:
    """Validated chunks with ids: an empty chunk_id becomes ``<doc_id>#<position>``; duplicates are refused."""
    validate_header(header)
    prepared: list[ChunkRecord] = []
    seen: set[str] = set()
    for position, chunk in enumerate(chunks):
        validate_chunk(chunk, position)
        chunk_id = chunk.chunk_id or f"{header.doc_id}#{position}"
        if chunk_id in seen:
            raise InvalidArgument(f"chunk_id {chunk_id!r} appears more than once in document {header.doc_id!r}")
        seen.add(chunk_id)
        prepared.append(chunk if chunk_id == chunk.chunk_id else _with_id(chunk, chunk_id))
    return prepared


def _with_id(chunk: ChunkRecord, chunk_id: str) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=chunk_id,
        text=chunk.text,
        page=chunk.page,
        heading=chunk.heading,
        char_start=chunk.char_start,
        char_end=chunk.char_end,
    )


class LocalIndex:
    """SQLite FTS5 keyword index implementing both ``Retriever`` and ``IndexWriter``."""

    def __init__(self, path: Path, *, title_weight: float = DEFAULT_TITLE_WEIGHT) -> None:
        self._path = path
        self._title_weight = title_weight
        self._writer: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()
        self._readers_lock = threading.Lock()
        self._idle_readers: list[sqlite3.Connection] = []
        self._is_open = False

    @property
    def backend(self) -> str:
        return "local"

    @property
    def path(self) -> Path:
        return self._path

    # Lifecycle

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _open(self) -> None:
        if self._writer is not None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        writer = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            mode = writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise FailedPrecondition(f"the index at {self._path} cannot use WAL journaling (got {mode!r})")
            writer.execute("PRAGMA synchronous=FULL")
            writer.execute("PRAGMA foreign_keys=ON")
            writer.execute("PRAGMA busy_timeout=10000")
            writer.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_statements(_SCHEMA):
                    writer.execute(statement)
                row = writer.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    writer.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
                elif row[0] != SCHEMA_VERSION:
                    raise FailedPrecondition(
                        f"the index at {self._path} has schema version {row[0]}, this service expects "
                        f"{SCHEMA_VERSION}; re-create it (move the file away and re-index)"
                    )
                writer.execute("COMMIT")
            except BaseException:
                if writer.in_transaction:
                    writer.execute("ROLLBACK")
                raise
        except BaseException:
            writer.close()
            raise
        self._writer = writer
        with self._readers_lock:
            self._is_open = True
        log.info("index opened", extra={"path": str(self._path)})

    def _close(self) -> None:
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        with self._readers_lock:
            self._is_open = False
            idle, self._idle_readers = self._idle_readers, []
        for connection in idle:
            connection.close()

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection from the pool (opened on demand), returned to it afterwards."""
        with self._readers_lock:
            if not self._is_open:
                raise FailedPrecondition("the local index is not open")
            connection = self._idle_readers.pop() if self._idle_readers else None
        if connection is None:
            connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA query_only=1")
            connection.execute("PRAGMA busy_timeout=10000")
        try:
            yield connection
        finally:
            with self._readers_lock:
                keep = self._is_open and len(self._idle_readers) < _READER_POOL_SIZE
                if keep:
                    self._idle_readers.append(connection)
            if not keep:
                connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            writer = self._writer
            if writer is None:
                raise FailedPrecondition("the local index is not open")
            writer.execute("BEGIN IMMEDIATE")
            try:
                yield writer
                writer.execute("COMMIT")
            except BaseException:
                if writer.in_transaction:
                    writer.execute("ROLLBACK")
                raise

    # IndexWriter

    async def index_document(self, header: DocumentHeader, chunks: Sequence[ChunkRecord]) -> int:
        return await asyncio.to_thread(self._index_document, header, chunks)

    def _index_document(self, header: DocumentHeader, chunks: Sequence[ChunkRecord]) -> int:
        records = prepare_chunks(header, chunks)
        heading_terms: dict[str, str] = {}
        title_terms = term_string(header.title)
        prepared: list[_PreparedChunk] = []
        for record in records:
            if record.heading not in heading_terms:
                heading_terms[record.heading] = term_string(record.heading)
            prepared.append(
                _PreparedChunk(
                    record=record,
                    language=header.language or detect_language(record.text),
                    title_terms=f"{title_terms} {heading_terms[record.heading]}".strip(),
                    body_terms=term_string(record.text),
                )
            )
        language = header.language or detect_language(" ".join(record.text for record in records[:20]))
        started = time.perf_counter()
        with self._transaction() as db:
            owner_key = self._find_owner(db, header.owner)
            if owner_key is None:
                owner_key = _inserted_key(db.execute("INSERT INTO owners (owner) VALUES (?)", (header.owner,)))
            row = db.execute(
                "SELECT doc_key FROM documents WHERE owner_key = ? AND doc_id = ?", (owner_key, header.doc_id)
            ).fetchone()
            if row is None:
                doc_key = _inserted_key(
                    db.execute(
                        "INSERT INTO documents (owner_key, doc_id, title, source, language, chunk_count, indexed_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (owner_key, header.doc_id, header.title, header.source, language, len(prepared), time.time()),
                    )
                )
            else:
                doc_key = int(row[0])
                self._delete_chunks(db, doc_key)
                db.execute(
                    "UPDATE documents SET title = ?, source = ?, language = ?, chunk_count = ?, indexed_at = ?"
                    " WHERE doc_key = ?",
                    (header.title, header.source, language, len(prepared), time.time(), doc_key),
                )
            owner_token, doc_token = str(owner_key), str(doc_key)
            for position, chunk in enumerate(prepared):
                record = chunk.record
                chunk_key = db.execute(
                    "INSERT INTO chunks (doc_key, position, chunk_id, text, page, heading, char_start, char_end,"
                    " language) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        doc_key,
                        position,
                        record.chunk_id,
                        record.text,
                        record.page,
                        record.heading,
                        record.char_start,
                        record.char_end,
                        chunk.language,
                    ),
                ).lastrowid
                db.execute(
                    "INSERT INTO chunk_fts (rowid, owner, doc, title, body) VALUES (?, ?, ?, ?, ?)",
                    (chunk_key, owner_token, doc_token, chunk.title_terms, chunk.body_terms),
                )
        log.debug(
            "document indexed",
            extra={
                "doc_id": header.doc_id,
                "chunks": len(prepared),
                "write_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        return len(prepared)

    async def delete_document(self, owner: str, doc_id: str) -> int:
        return await asyncio.to_thread(self._delete_document, owner, doc_id)

    def _delete_document(self, owner: str, doc_id: str) -> int:
        with self._transaction() as db:
            owner_key = self._find_owner(db, owner)
            if owner_key is None:
                return 0
            row = db.execute(
                "SELECT doc_key FROM documents WHERE owner_key = ? AND doc_id = ?", (owner_key, doc_id)
            ).fetchone()
            if row is None:
                return 0
            deleted = self._delete_chunks(db, int(row[0]))
            db.execute("DELETE FROM documents WHERE doc_key = ?", (row[0],))
            return deleted

    @staticmethod
    def _delete_chunks(db: sqlite3.Connection, doc_key: int) -> int:
        db.execute("DELETE FROM chunk_fts WHERE rowid IN (SELECT chunk_key FROM chunks WHERE doc_key = ?)", (doc_key,))
        return db.execute("DELETE FROM chunks WHERE doc_key = ?", (doc_key,)).rowcount

    @staticmethod
    def _find_owner(db: sqlite3.Connection, owner: str) -> int | None:
        row = db.execute("SELECT owner_key FROM owners WHERE owner = ?", (owner,)).fetchone()
        return None if row is None else int(row[0])

    # Retriever

    async def search(
        self, owner: str, query: str, top_k: int, doc_ids: Sequence[str], mode: SearchMode
    ) -> list[Passage]:
        if mode in (SearchMode.DENSE, SearchMode.HYBRID):
            raise FailedPrecondition("dense retrieval is not available yet; use KEYWORD")
        if top_k < 1:
            raise InvalidArgument(f"top_k must be at least 1, got {top_k}")
        return await asyncio.to_thread(self._search, owner, query, top_k, tuple(doc_ids))

    def _search(self, owner: str, query: str, top_k: int, doc_ids: tuple[str, ...]) -> list[Passage]:
        terms = query_terms(query)
        if not terms:
            return []
        with self._reader() as db:
            db.execute("BEGIN")
            try:
                return self._ranked(db, owner, terms, top_k, doc_ids)
            finally:
                db.execute("COMMIT")

    def _ranked(
        self, db: sqlite3.Connection, owner: str, terms: list[str], top_k: int, doc_ids: tuple[str, ...]
    ) -> list[Passage]:
        owner_key = self._find_owner(db, owner)
        if owner_key is None:
            return []
        doc_keys: list[int] | None = None
        if doc_ids:
            placeholders = ", ".join("?" * len(doc_ids))
            doc_keys = [
                int(row[0])
                for row in db.execute(
                    f"SELECT doc_key FROM documents WHERE owner_key = ? AND doc_id IN ({placeholders})",
                    (owner_key, *doc_ids),
                )
            ]
            if not doc_keys:
                return []
        expression = match_expression(owner_key, terms, doc_keys)
        rows = db.execute(
            """
            WITH hits AS (
                SELECT rowid AS chunk_key, bm25(chunk_fts, 0.0, 0.0, ?, 1.0) AS rank
                FROM chunk_fts WHERE chunk_fts MATCH ?
                ORDER BY rank, rowid LIMIT ?
            )
            SELECT c.chunk_id, d.doc_id, d.title, d.source, c.page, c.text, -h.rank, c.heading,
                   c.char_start, c.char_end, c.language
            FROM hits h
            JOIN chunks c ON c.chunk_key = h.chunk_key
            JOIN documents d ON d.doc_key = c.doc_key
            ORDER BY h.rank, h.chunk_key
            """,
            (self._title_weight, expression, top_k),
        ).fetchall()
        return [
            Passage(
                chunk_id=row[0],
                doc_id=row[1],
                title=row[2],
                source=row[3],
                page=row[4],
                text=row[5],
                score=float(row[6]),
                heading=row[7],
                char_start=row[8],
                char_end=row[9],
                language=row[10],
            )
            for row in rows
        ]


def _inserted_key(cursor: sqlite3.Cursor) -> int:
    if cursor.lastrowid is None:
        raise RuntimeError("SQLite reported no rowid for an INSERT")
    return cursor.lastrowid


def _split_statements(script: str) -> list[str]:
    return [statement.strip() for statement in script.split(";\n") if statement.strip()]
