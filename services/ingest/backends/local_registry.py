"""The document registry in SQLite (WAL): documents, ingest jobs and their progress events.

One connection, guarded by a lock, used from worker threads (``asyncio.to_thread``) so the
event loop never blocks on the disk. Owner scoping is the caller's job: the registry looks
records up by id and returns them with their owner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from services.common.errors import AlreadyExists
from services.ingest.backends import Document, DocumentStatus, Job, JobEvent, PendingUpload, Stage

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    title TEXT NOT NULL,
    source TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    status TEXT NOT NULL,
    pages INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    summary TEXT NOT NULL DEFAULT '',
    language TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (owner, sha256)
);
CREATE INDEX IF NOT EXISTS documents_by_owner ON documents (owner, created_at);
CREATE INDEX IF NOT EXISTS documents_by_source ON documents (owner, source);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    filename TEXT NOT NULL,
    title TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    blob_key TEXT NOT NULL,
    expires_at REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    doc_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    stage TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    duplicate INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_doc ON jobs (doc_id, created_at);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stage TEXT NOT NULL,
    current INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    summary_delta TEXT NOT NULL DEFAULT '',
    error_code TEXT NOT NULL DEFAULT '',
    document TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, seq)
);
"""

_DOCUMENT_COLUMNS = [field.name for field in dataclasses.fields(Document)]
_UPDATABLE = frozenset(_DOCUMENT_COLUMNS) - {"doc_id", "owner", "sha256", "created_at"}
_TERMINAL = (Stage.DONE.value, Stage.FAILED.value)


def _document(row: sqlite3.Row) -> Document:
    values = {name: row[name] for name in _DOCUMENT_COLUMNS}
    values["status"] = DocumentStatus(values["status"])
    return Document(**values)


def _document_json(document: Document | None) -> str | None:
    return None if document is None else json.dumps(dataclasses.asdict(document), ensure_ascii=False)


def _document_from_json(raw: str | None) -> Document | None:
    if raw is None:
        return None
    values = json.loads(raw)
    values["status"] = DocumentStatus(values["status"])
    return Document(**values)


def _upload(row: sqlite3.Row) -> PendingUpload:
    return PendingUpload(**{field.name: row[field.name] for field in dataclasses.fields(PendingUpload)})


def _job(row: sqlite3.Row) -> Job:
    return Job(
        job_id=row["job_id"],
        doc_id=row["doc_id"],
        owner=row["owner"],
        stage=Stage(row["stage"]),
        message=row["message"],
        duplicate=bool(row["duplicate"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _event(row: sqlite3.Row, doc_id: str) -> JobEvent:
    return JobEvent(
        job_id=row["job_id"],
        doc_id=doc_id,
        stage=Stage(row["stage"]),
        seq=row["seq"],
        current=row["current"],
        total=row["total"],
        message=row["message"],
        summary_delta=row["summary_delta"],
        error_code=row["error_code"],
        document=_document_from_json(row["document"]),
    )


class SqliteRegistry:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    # -- plumbing -------------------------------------------------------------------------

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=30)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(_SCHEMA)
        self._connection = connection

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError("the registry is not open")
        return self._connection

    async def _call(self, function: Callable[[sqlite3.Connection], _T]) -> _T:
        def run() -> _T:
            with self._lock:
                return function(self._db())

        return await asyncio.to_thread(run)

    async def _write(self, function: Callable[[sqlite3.Connection], _T]) -> _T:
        def transaction(db: sqlite3.Connection) -> _T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = function(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return await self._call(transaction)

    # -- documents ------------------------------------------------------------------------

    @staticmethod
    def _insert_job(db: sqlite3.Connection, job: Job, events: Iterable[JobEvent]) -> None:
        now = time.time()
        db.execute(
            "INSERT INTO jobs (job_id, doc_id, owner, stage, message, duplicate, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (job.job_id, job.doc_id, job.owner, job.stage.value, job.message, int(job.duplicate), now, now),
        )
        for event in events:
            SqliteRegistry._insert_event(db, event)

    async def create(self, document: Document, job: Job, events: Sequence[JobEvent]) -> Document:
        """Insert a new document with its first job and events, atomically."""
        now = time.time()
        document = dataclasses.replace(document, created_at=now, updated_at=now)

        def insert(db: sqlite3.Connection) -> Document:
            values = dataclasses.asdict(document)
            values["status"] = document.status.value
            placeholders = ", ".join("?" for _ in _DOCUMENT_COLUMNS)
            try:
                db.execute(
                    f"INSERT INTO documents ({', '.join(_DOCUMENT_COLUMNS)}) VALUES ({placeholders})",
                    [values[name] for name in _DOCUMENT_COLUMNS],
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists("the owner already has a document with the same content") from None
            self._insert_job(db, job, events)
            return document

        return await self._write(insert)

    async def add_job(self, job: Job, events: Sequence[JobEvent]) -> None:
        await self._write(lambda db: self._insert_job(db, job, events))

    async def get_document(self, doc_id: str) -> Document | None:
        def get(db: sqlite3.Connection) -> Document | None:
            row = db.execute("SELECT * FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
            return None if row is None else _document(row)

        return await self._call(get)

    async def find_by_sha256(self, owner: str, sha256: str) -> Document | None:
        def find(db: sqlite3.Connection) -> Document | None:
            row = db.execute("SELECT * FROM documents WHERE owner = ? AND sha256 = ?", (owner, sha256)).fetchone()
            return None if row is None else _document(row)

        return await self._call(find)

    async def find_by_source(self, owner: str, source: str) -> list[Document]:
        """The owner's documents (deleting ones excluded) stored from a file of that name, oldest first."""

        def find(db: sqlite3.Connection) -> list[Document]:
            rows = db.execute(
                "SELECT * FROM documents WHERE owner = ? AND source = ? AND status != ? ORDER BY created_at, doc_id",
                (owner, source, DocumentStatus.DELETING.value),
            ).fetchall()
            return [_document(row) for row in rows]

        return await self._call(find)

    # -- direct uploads -------------------------------------------------------------------

    async def add_upload(self, upload: PendingUpload) -> None:
        values = dataclasses.astuple(upload)
        columns = ", ".join(field.name for field in dataclasses.fields(PendingUpload))
        placeholders = ", ".join("?" for _ in values)
        await self._write(lambda db: db.execute(f"INSERT INTO uploads ({columns}) VALUES ({placeholders})", values))

    async def get_upload(self, upload_id: str) -> PendingUpload | None:
        def get(db: sqlite3.Connection) -> PendingUpload | None:
            row = db.execute("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone()
            return None if row is None else _upload(row)

        return await self._call(get)

    async def delete_upload(self, upload_id: str) -> bool:
        def delete(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,)).rowcount > 0

        return await self._write(delete)

    async def uploads_expired_before(self, moment: float) -> list[PendingUpload]:
        def select(db: sqlite3.Connection) -> list[PendingUpload]:
            rows = db.execute("SELECT * FROM uploads WHERE expires_at < ?", (moment,)).fetchall()
            return [_upload(row) for row in rows]

        return await self._call(select)

    async def list_documents(self, owner: str) -> list[Document]:
        def select(db: sqlite3.Connection) -> list[Document]:
            rows = db.execute(
                "SELECT * FROM documents WHERE owner = ? AND status != ? ORDER BY created_at DESC, doc_id",
                (owner, DocumentStatus.DELETING.value),
            ).fetchall()
            return [_document(row) for row in rows]

        return await self._call(select)

    async def documents_with_status(self, status: DocumentStatus) -> list[Document]:
        def select(db: sqlite3.Connection) -> list[Document]:
            rows = db.execute("SELECT * FROM documents WHERE status = ?", (status.value,)).fetchall()
            return [_document(row) for row in rows]

        return await self._call(select)

    async def update_document(self, doc_id: str, **changes: Any) -> Document | None:
        """Apply ``changes`` and return the updated document (None if it no longer exists)."""
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        values = {
            name: (value.value if isinstance(value, DocumentStatus) else value) for name, value in changes.items()
        }
        values["updated_at"] = time.time()

        def update(db: sqlite3.Connection) -> Document | None:
            assignments = ", ".join(f"{name} = ?" for name in values)
            db.execute(f"UPDATE documents SET {assignments} WHERE doc_id = ?", [*values.values(), doc_id])
            row = db.execute("SELECT * FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
            return None if row is None else _document(row)

        return await self._write(update)

    async def delete_document(self, doc_id: str) -> None:
        """Remove the document, its jobs and their events."""

        def delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM events WHERE job_id IN (SELECT job_id FROM jobs WHERE doc_id = ?)", (doc_id,))
            db.execute("DELETE FROM jobs WHERE doc_id = ?", (doc_id,))
            db.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))

        await self._write(delete)

    # -- jobs and events ------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job | None:
        def get(db: sqlite3.Connection) -> Job | None:
            row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            return None if row is None else _job(row)

        return await self._call(get)

    async def latest_job(self, doc_id: str) -> Job | None:
        def get(db: sqlite3.Connection) -> Job | None:
            row = db.execute(
                "SELECT * FROM jobs WHERE doc_id = ? ORDER BY created_at DESC, rowid DESC LIMIT 1", (doc_id,)
            ).fetchone()
            return None if row is None else _job(row)

        return await self._call(get)

    async def unfinished_jobs(self) -> list[Job]:
        """Jobs that had not reached DONE or FAILED, oldest first, of documents not being deleted."""

        def select(db: sqlite3.Connection) -> list[Job]:
            rows = db.execute(
                "SELECT jobs.* FROM jobs JOIN documents USING (doc_id)"
                " WHERE jobs.stage NOT IN (?, ?) AND documents.status != ? ORDER BY jobs.created_at",
                (*_TERMINAL, DocumentStatus.DELETING.value),
            ).fetchall()
            return [_job(row) for row in rows]

        return await self._call(select)

    @staticmethod
    def _insert_event(db: sqlite3.Connection, event: JobEvent) -> JobEvent:
        row = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (event.job_id,)).fetchone()
        event = dataclasses.replace(event, seq=int(row[0]))
        now = time.time()
        db.execute(
            "INSERT INTO events (job_id, seq, stage, current, total, message, summary_delta, error_code, document,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.job_id,
                event.seq,
                event.stage.value,
                event.current,
                event.total,
                event.message,
                event.summary_delta,
                event.error_code,
                _document_json(event.document),
                now,
            ),
        )
        if event.message and not event.summary_delta:
            db.execute(
                "UPDATE jobs SET stage = ?, message = ?, updated_at = ? WHERE job_id = ?",
                (event.stage.value, event.message, now, event.job_id),
            )
        else:
            db.execute(
                "UPDATE jobs SET stage = ?, updated_at = ? WHERE job_id = ?", (event.stage.value, now, event.job_id)
            )
        return event

    async def append_event(self, event: JobEvent) -> JobEvent:
        """Store ``event`` as the job's next one (its ``seq`` filled in) and advance the job's stage."""
        return await self._write(lambda db: self._insert_event(db, event))

    async def events_after(self, job_id: str, seq: int) -> list[JobEvent]:
        def select(db: sqlite3.Connection) -> list[JobEvent]:
            job = db.execute("SELECT doc_id FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if job is None:
                return []
            rows = db.execute(
                "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, seq)
            ).fetchall()
            return [_event(row, job["doc_id"]) for row in rows]

        return await self._call(select)

    async def restart_job(self, job_id: str, events: Sequence[JobEvent]) -> None:
        """Forget a job's events (of an interrupted run) and record ``events`` as its new start."""

        def restart(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            for event in events:
                self._insert_event(db, event)

        await self._write(restart)
