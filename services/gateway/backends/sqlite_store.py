"""SQLite chat history and call log (the local default), one database file in WAL mode."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from services.gateway.backends import CallRecord, ConversationInfo, Passage, TurnRecord

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    owner TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    title TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    turn_count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, conversation_id)
);
CREATE INDEX IF NOT EXISTS conversations_by_time ON conversations (owner, updated_at DESC);
CREATE TABLE IF NOT EXISTS turns (
    owner TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    turn_id TEXT NOT NULL,
    question TEXT NOT NULL,
    condensed_question TEXT NOT NULL,
    answer TEXT NOT NULL,
    references_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (owner, conversation_id, seq)
);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at REAL NOT NULL,
    conversation_id TEXT NOT NULL,
    status TEXT NOT NULL,
    record_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_owner ON calls (owner, created_at DESC);
CREATE INDEX IF NOT EXISTS calls_by_request ON calls (request_id);
CREATE INDEX IF NOT EXISTS calls_by_conversation ON calls (owner, conversation_id, created_at);
"""


class SqliteDatabase:
    """One connection, used from worker threads one call at a time."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(_SCHEMA)
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        def locked() -> _T:
            if self._conn is None:
                raise RuntimeError("database is not open")
            with self._lock:
                return work(self._conn)

        return await asyncio.to_thread(locked)


def _passage_from(item: dict[str, Any]) -> Passage:
    return Passage(**item)


def _info(row: sqlite3.Row | tuple[Any, ...]) -> ConversationInfo:
    return ConversationInfo(
        conversation_id=row[0], title=row[1], created_at=row[2], updated_at=row[3], turn_count=row[4]
    )


class SqliteConversationStore:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def get(self, owner: str, conversation_id: str) -> ConversationInfo | None:
        def work(conn: sqlite3.Connection) -> ConversationInfo | None:
            row = conn.execute(
                "SELECT conversation_id, title, created_at, updated_at, turn_count FROM conversations "
                "WHERE owner = ? AND conversation_id = ?",
                (owner, conversation_id),
            ).fetchone()
            return _info(row) if row else None

        return await self._db.run(work)

    async def recent(self, owner: str, limit: int) -> list[ConversationInfo]:
        def work(conn: sqlite3.Connection) -> list[ConversationInfo]:
            rows = conn.execute(
                "SELECT conversation_id, title, created_at, updated_at, turn_count FROM conversations "
                "WHERE owner = ? ORDER BY updated_at DESC LIMIT ?",
                (owner, limit),
            ).fetchall()
            return [_info(row) for row in rows]

        return await self._db.run(work)

    async def turns(self, owner: str, conversation_id: str) -> list[TurnRecord]:
        def work(conn: sqlite3.Connection) -> list[TurnRecord]:
            rows = conn.execute(
                "SELECT turn_id, question, condensed_question, answer, references_json, created_at FROM turns "
                "WHERE owner = ? AND conversation_id = ? ORDER BY seq",
                (owner, conversation_id),
            ).fetchall()
            return [
                TurnRecord(
                    turn_id=row[0],
                    question=row[1],
                    condensed_question=row[2],
                    answer=row[3],
                    references=[_passage_from(item) for item in json.loads(row[4])],
                    created_at=row[5],
                )
                for row in rows
            ]

        return await self._db.run(work)

    async def add_turn(
        self, owner: str, conversation_id: str, title: str, turn: TurnRecord, record: CallRecord | None = None
    ) -> None:
        references = json.dumps([asdict(p) for p in turn.references], ensure_ascii=False)

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO conversations (owner, conversation_id, title, created_at, updated_at, turn_count) "
                    "VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (owner, conversation_id) DO NOTHING",
                    (owner, conversation_id, title, turn.created_at, turn.created_at),
                )
                (seq,) = conn.execute(
                    "SELECT turn_count FROM conversations WHERE owner = ? AND conversation_id = ?",
                    (owner, conversation_id),
                ).fetchone()
                conn.execute(
                    "INSERT INTO turns (owner, conversation_id, seq, turn_id, question, condensed_question, answer, "
                    "references_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        owner,
                        conversation_id,
                        seq,
                        turn.turn_id,
                        turn.question,
                        turn.condensed_question,
                        turn.answer,
                        references,
                        turn.created_at,
                    ),
                )
                conn.execute(
                    "UPDATE conversations SET turn_count = turn_count + 1, updated_at = ? "
                    "WHERE owner = ? AND conversation_id = ?",
                    (turn.created_at, owner, conversation_id),
                )
                if record is not None:
                    _insert_call(conn, record)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._db.run(work)

    async def rename(self, owner: str, conversation_id: str, title: str) -> ConversationInfo | None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE conversations SET title = ? WHERE owner = ? AND conversation_id = ?",
                (title, owner, conversation_id),
            )

        await self._db.run(work)
        return await self.get(owner, conversation_id)

    async def delete(self, owner: str, conversation_id: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                deleted = conn.execute(
                    "DELETE FROM conversations WHERE owner = ? AND conversation_id = ?", (owner, conversation_id)
                ).rowcount
                conn.execute("DELETE FROM turns WHERE owner = ? AND conversation_id = ?", (owner, conversation_id))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return deleted > 0

        return await self._db.run(work)


class SqliteCallLog:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def record(self, record: CallRecord) -> None:
        await self._db.run(lambda conn: _insert_call(conn, record))

    async def _select(self, where: str, args: tuple[Any, ...]) -> list[CallRecord]:
        def work(conn: sqlite3.Connection) -> list[CallRecord]:
            rows = conn.execute(f"SELECT record_json FROM calls WHERE {where}", args).fetchall()
            return [CallRecord(**json.loads(row[0])) for row in rows]

        return await self._db.run(work)

    async def for_owner(self, owner: str, limit: int) -> list[CallRecord]:
        return await self._select("owner = ? ORDER BY created_at DESC LIMIT ?", (owner, limit))

    async def by_request_id(self, request_id: str) -> list[CallRecord]:
        return await self._select("request_id = ? ORDER BY created_at", (request_id,))

    async def for_conversation(self, owner: str, conversation_id: str) -> list[CallRecord]:
        return await self._select("owner = ? AND conversation_id = ? ORDER BY created_at", (owner, conversation_id))


def _insert_call(conn: sqlite3.Connection, record: CallRecord) -> None:
    """One call record (in the caller's transaction, if one is open)."""
    conn.execute(
        "INSERT INTO calls (call_id, request_id, owner, kind, created_at, conversation_id, status, "
        "record_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.call_id,
            record.request_id,
            record.owner,
            record.kind,
            record.created_at,
            record.conversation_id,
            record.status,
            json.dumps(asdict(record), ensure_ascii=False, default=str),
        ),
    )
