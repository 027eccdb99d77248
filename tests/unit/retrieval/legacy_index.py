"""Index files as earlier versions of the local index wrote them (schema versions 1 and 2, FTS5 keyword leg).

The DDL is the earlier versions' own, so a migration is tested against what users actually have on disk.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE owners (owner_key INTEGER PRIMARY KEY, owner TEXT NOT NULL UNIQUE);
CREATE TABLE documents (
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
CREATE TABLE chunks (
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
CREATE VIRTUAL TABLE chunk_fts USING fts5(owner, doc, title, body, tokenize='porter unicode61 remove_diacritics 2');
"""
_V2 = """
ALTER TABLE chunks ADD COLUMN english REAL NOT NULL DEFAULT 1.0;
CREATE TABLE chunk_vectors (chunk_key INTEGER PRIMARY KEY REFERENCES chunks(chunk_key), vector BLOB NOT NULL);
"""

# (owner, doc_id, title, [(chunk_id, text, heading, language, english)])
DOCUMENTS = [
    ("alice", "garden", "Garden Notes", [("g0", "Tomatoes need sun.", "Tomatoes", "en", 1.0)]),
    (
        "alice",
        "seoul",
        "서울 안내",
        [("s0", "서울은 대한민국의 수도이다.", "", "ko", 0.0), ("s1", "red apple", "", "en", 1.0)],
    ),
    ("bob", "garden", "Bob's garden", [("b0", "Tomatoes and basil.", "", "en", 1.0)]),
]


def write_legacy_index(path: Path, version: int) -> int:
    """An index file of schema ``version`` (1 or 2) holding :data:`DOCUMENTS`; returns its chunk count."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_V1 if version == 1 else _V1 + _V2)
        db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(version),))
        db.execute("INSERT INTO meta (key, value) VALUES ('generation', '7')")
        chunks = 0
        for owner, doc_id, title, records in DOCUMENTS:
            db.execute("INSERT OR IGNORE INTO owners (owner) VALUES (?)", (owner,))
            (owner_key,) = db.execute("SELECT owner_key FROM owners WHERE owner = ?", (owner,)).fetchone()
            doc_key = db.execute(
                "INSERT INTO documents (owner_key, doc_id, title, source, language, chunk_count, indexed_at)"
                " VALUES (?, ?, ?, '', ?, ?, 0)",
                (owner_key, doc_id, title, records[0][3], len(records)),
            ).lastrowid
            for position, (chunk_id, text, heading, language, english) in enumerate(records):
                columns = "doc_key, position, chunk_id, text, page, heading, char_start, char_end, language"
                values: tuple[object, ...] = (doc_key, position, chunk_id, text, 0, heading, 0, len(text), language)
                if version >= 2:
                    columns, values = columns + ", english", (*values, english)
                placeholders = ", ".join("?" * len(values))
                chunk_key = db.execute(f"INSERT INTO chunks ({columns}) VALUES ({placeholders})", values).lastrowid
                db.execute(
                    "INSERT INTO chunk_fts (rowid, owner, doc, title, body) VALUES (?, ?, ?, ?, ?)",
                    (chunk_key, str(owner_key), str(doc_key), f"{title} {heading}".lower(), text.lower()),
                )
                chunks += 1
        return chunks
    finally:
        db.close()
