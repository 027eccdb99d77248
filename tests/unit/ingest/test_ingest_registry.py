"""The SQLite registry: documents unique per owner and content, ordered events, deletion of everything."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.errors import AlreadyExists
from services.ingest.backends import Document, DocumentStatus, Job, JobEvent, Stage
from services.ingest.backends.local_registry import SqliteRegistry


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[SqliteRegistry]:
    registry = SqliteRegistry(tmp_path / "ingest.db")
    await registry.open()
    yield registry
    await registry.close()


def document(doc_id: str = "d1", owner: str = "alice", sha256: str = "abc") -> Document:
    return Document(
        doc_id=doc_id,
        owner=owner,
        title="T",
        source="t.txt",
        content_type="text/plain",
        size_bytes=3,
        sha256=sha256,
        blob_key=f"o/{doc_id}/{sha256}",
        status=DocumentStatus.PENDING,
    )


def job(job_id: str = "j1", doc_id: str = "d1", owner: str = "alice") -> Job:
    return Job(job_id=job_id, doc_id=doc_id, owner=owner, stage=Stage.QUEUED)


async def test_the_same_content_is_unique_per_owner(registry: SqliteRegistry) -> None:
    await registry.create(document(), job(), [])
    with pytest.raises(AlreadyExists):
        await registry.create(document("d2"), job("j2", "d2"), [])
    await registry.create(document("d3", owner="bob"), job("j3", "d3", "bob"), [])
    found = await registry.find_by_sha256("alice", "abc")
    assert found is not None and found.doc_id == "d1"
    assert [d.doc_id for d in await registry.list_documents("bob")] == ["d3"]


async def test_events_are_numbered_and_move_the_job(registry: SqliteRegistry) -> None:
    await registry.create(document(), job(), [JobEvent("j1", "d1", Stage.QUEUED, message="queued")])
    stored = await registry.append_event(JobEvent("j1", "d1", Stage.EXTRACTING, current=1, total=3))
    assert stored.seq == 2
    done = await registry.update_document("d1", status=DocumentStatus.READY, summary="S")
    await registry.append_event(JobEvent("j1", "d1", Stage.DONE, message="ready", document=done))
    events = await registry.events_after("j1", 0)
    assert [(event.seq, event.stage) for event in events] == [(1, Stage.QUEUED), (2, Stage.EXTRACTING), (3, Stage.DONE)]
    assert events[-1].document == done
    assert [event.seq for event in await registry.events_after("j1", 2)] == [3]
    current = await registry.get_job("j1")
    assert current is not None and (current.stage, current.message) == (Stage.DONE, "ready")
    assert await registry.unfinished_jobs() == []


async def test_unfinished_jobs_skip_documents_being_deleted(registry: SqliteRegistry) -> None:
    await registry.create(document(), job(), [])
    await registry.create(document("d2", sha256="def"), job("j2", "d2"), [])
    await registry.update_document("d2", status=DocumentStatus.DELETING)
    assert [j.job_id for j in await registry.unfinished_jobs()] == ["j1"]
    assert [d.doc_id for d in await registry.list_documents("alice")] == ["d1"]


async def test_deleting_a_document_removes_its_jobs_and_events(registry: SqliteRegistry) -> None:
    await registry.create(document(), job(), [JobEvent("j1", "d1", Stage.QUEUED)])
    await registry.delete_document("d1")
    assert await registry.get_document("d1") is None
    assert await registry.get_job("j1") is None
    assert await registry.events_after("j1", 0) == []
