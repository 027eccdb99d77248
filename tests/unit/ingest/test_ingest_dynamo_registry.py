"""The document registry contract, run against both adapters: SQLite (one process) and DynamoDB (moto,
shared by every ingest pod). The DynamoDB-only behaviour between pods is in
``test_ingest_dynamo_registry_pods.py``; the helpers here are shared with it and with the
integration tests."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from services.common.config import ConfigError, Env
from services.common.errors import AlreadyExists
from services.ingest.backends import Document, DocumentStatus, Job, JobEvent, PendingUpload, Stage
from services.ingest.backends import dynamo_schema as schema
from services.ingest.backends.dynamo_registry import DynamoRegistry
from services.ingest.backends.local_registry import SqliteRegistry
from services.ingest.backends.registry import Registry
from services.ingest.config import IngestConfig

DOCUMENTS, JOBS, UPLOADS = "documents", "jobs", "uploads"


class SerialClient:
    """A boto3 client that makes one call at a time.

    DynamoDB applies every request atomically; moto's in-memory DynamoDB, called from several
    threads, does not (a failed transaction restores a copy of the whole table taken when it
    began, undoing what other threads wrote meanwhile). Serialising the calls gives moto the
    server's atomicity, while the registries' own steps still interleave freely between calls.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def serialised(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attribute(*args, **kwargs)

        return serialised


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[SerialClient]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        schema.create_tables(client, DOCUMENTS, JOBS, UPLOADS)
        yield SerialClient(client)


class Clock:
    """A clock the test moves by hand (lease expiry without waiting)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def dynamo_registry(client: SerialClient, name: str, **options: Any) -> DynamoRegistry:
    return DynamoRegistry(
        client, documents_table=DOCUMENTS, jobs_table=JOBS, uploads_table=UPLOADS, holder=name, **options
    )


def document(
    doc_id: str = "d1", owner: str = "alice", sha256: str = "abc", source: str = "t.txt", **changes: Any
) -> Document:
    values: dict[str, Any] = {
        "doc_id": doc_id,
        "owner": owner,
        "title": "T",
        "source": source,
        "content_type": "text/plain",
        "size_bytes": 3,
        "sha256": sha256,
        "blob_key": f"o/{doc_id}/{sha256}",
        "status": DocumentStatus.PENDING,
        **changes,
    }
    return Document(**values)


def job(job_id: str = "j1", doc_id: str = "d1", owner: str = "alice") -> Job:
    return Job(job_id=job_id, doc_id=doc_id, owner=owner, stage=Stage.QUEUED)


def queued(job_id: str = "j1", doc_id: str = "d1") -> list[JobEvent]:
    return [
        JobEvent(job_id, doc_id, Stage.QUEUED, message="queued"),
        JobEvent(job_id, doc_id, Stage.STORED, current=3, total=3, message="stored t.txt (3 B)"),
    ]


OpenRegistry = Callable[[str], Awaitable[Registry]]


@pytest.fixture(params=["sqlite", "dynamodb"])
async def open_registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenRegistry]:
    """Opens registry instances over one store: one per process (pod) that shares it."""
    opened: list[Registry] = []

    async def open_one(name: str) -> Registry:
        registry: Registry
        if request.param == "sqlite":
            registry = SqliteRegistry(tmp_path / "ingest.db")
        else:
            registry = dynamo_registry(request.getfixturevalue("dynamodb"), name)
        await registry.open()
        opened.append(registry)
        return registry

    yield open_one
    for registry in opened:
        await registry.close()


async def test_the_same_content_is_unique_per_owner(open_registry: OpenRegistry) -> None:
    registry = await open_registry("pod-a")
    created = await registry.create(document(), job(), queued())
    assert created.created_at > 0 and created.updated_at == created.created_at
    with pytest.raises(AlreadyExists):
        await registry.create(document("d2"), job("j2", "d2"), [])
    await registry.create(document("d3", owner="bob"), job("j3", "d3", "bob"), [])
    found = await registry.find_by_sha256("alice", "abc")
    assert found == created
    assert await registry.find_by_sha256("alice", "other") is None
    assert await registry.get_document("d2") is None
    assert [d.doc_id for d in await registry.list_documents("bob")] == ["d3"]


async def test_events_are_numbered_and_move_the_job(open_registry: OpenRegistry) -> None:
    registry = await open_registry("pod-a")
    await registry.create(document(), job(), [JobEvent("j1", "d1", Stage.QUEUED, message="queued")])
    stored = await registry.append_event(JobEvent("j1", "d1", Stage.EXTRACTING, current=1, total=3))
    assert stored.seq == 2
    summary = await registry.append_event(JobEvent("j1", "d1", Stage.SUMMARISING, summary_delta="요약 "))
    assert summary.seq == 3
    done = await registry.update_document("d1", status=DocumentStatus.READY, summary="요약")
    assert done is not None and done.status is DocumentStatus.READY and done.summary == "요약"
    await registry.append_event(JobEvent("j1", "d1", Stage.DONE, message="ready", document=done))
    events = await registry.events_after("j1", 0)
    assert [(e.seq, e.stage) for e in events] == [
        (1, Stage.QUEUED),
        (2, Stage.EXTRACTING),
        (3, Stage.SUMMARISING),
        (4, Stage.DONE),
    ]
    assert (events[1].current, events[1].total, events[2].summary_delta) == (1, 3, "요약 ")
    assert all(e.doc_id == "d1" for e in events)
    assert events[-1].document == done
    assert [e.seq for e in await registry.events_after("j1", 2)] == [3, 4]
    assert await registry.events_after("unknown", 0) == []
    current = await registry.get_job("j1")
    assert current is not None and (current.stage, current.message, current.owner) == (Stage.DONE, "ready", "alice")
    assert await registry.get_job("unknown") is None


async def test_lists_versions_and_status_leave_deleting_documents_out(open_registry: OpenRegistry) -> None:
    registry = await open_registry("pod-a")
    await registry.create(document("d1", sha256="a", source="report.pdf"), job("j1", "d1"), [])
    await registry.create(document("d2", sha256="b", source="report.pdf"), job("j2", "d2"), [])
    await registry.create(document("d3", sha256="c", source="notes.md"), job("j3", "d3"), [])
    await registry.create(document("d4", sha256="d", source="report.pdf"), job("j4", "d4"), [])
    await registry.update_document("d4", status=DocumentStatus.DELETING)
    assert [d.doc_id for d in await registry.list_documents("alice")] == ["d3", "d2", "d1"]
    assert [d.doc_id for d in await registry.find_by_source("alice", "report.pdf")] == ["d1", "d2"]
    assert await registry.find_by_source("bob", "report.pdf") == []
    assert [d.doc_id for d in await registry.documents_with_status(DocumentStatus.DELETING)] == ["d4"]
    assert {d.doc_id for d in await registry.documents_with_status(DocumentStatus.PENDING)} == {"d1", "d2", "d3"}


async def test_updates_change_the_named_fields_only(open_registry: OpenRegistry) -> None:
    registry = await open_registry("pod-a")
    created = await registry.create(document(), job(), [])
    updated = await registry.update_document("d1", title="Tides", pages=12, chunks=40, language="ko")
    assert updated is not None
    assert (updated.title, updated.pages, updated.chunks, updated.language) == ("Tides", 12, 40, "ko")
    assert (updated.sha256, updated.owner, updated.created_at) == (created.sha256, "alice", created.created_at)
    assert updated.updated_at >= created.updated_at
    assert await registry.get_document("d1") == updated
    assert await registry.update_document("missing", status=DocumentStatus.READY) is None
    with pytest.raises(ValueError, match="owner"):
        await registry.update_document("d1", owner="mallory")


async def test_deleting_a_document_removes_its_jobs_events_and_content(open_registry: OpenRegistry) -> None:
    registry = await open_registry("pod-a")
    await registry.create(document(), job(), queued())
    await registry.add_job(job("j2"), queued("j2"))
    await registry.delete_document("d1")
    assert await registry.get_document("d1") is None
    assert await registry.get_job("j1") is None and await registry.get_job("j2") is None
    assert await registry.events_after("j1", 0) == [] and await registry.events_after("j2", 0) == []
    assert await registry.find_by_sha256("alice", "abc") is None
    assert await registry.latest_job("d1") is None
    await registry.delete_document("d1")  # again: nothing left, nothing fails
    # The same bytes can be stored again once the document is gone.
    again = await registry.create(document("d5"), job("j5", "d5"), [])
    assert await registry.find_by_sha256("alice", "abc") == again


async def test_a_retry_job_becomes_the_documents_latest(open_registry: OpenRegistry) -> None:
    registry = await open_registry("pod-a")
    await registry.create(document(), job(), queued())
    first = await registry.latest_job("d1")
    assert first is not None and first.job_id == "j1"
    await registry.add_job(job("j2"), queued("j2"))
    latest = await registry.latest_job("d1")
    assert latest is not None and latest.job_id == "j2" and latest.stage is Stage.STORED
    assert [e.seq for e in await registry.events_after("j2", 0)] == [1, 2]


async def test_pending_uploads(open_registry: OpenRegistry) -> None:
    registry = await open_registry("pod-a")
    upload = PendingUpload("u1", "alice", "d1", "a.pdf", "A", "application/pdf", 1234, "k/d1/original", 1000.5, 100.25)
    await registry.add_upload(upload)
    await registry.add_upload(
        PendingUpload("u2", "bob", "d2", "b.txt", "", "text/plain", 5, "k/d2/original", 3000.0, 200.0)
    )
    assert await registry.get_upload("u1") == upload
    assert [u.upload_id for u in await registry.uploads_expired_before(2000.0)] == ["u1"]
    assert await registry.delete_upload("u1") is True
    assert await registry.delete_upload("u1") is False
    assert await registry.get_upload("u1") is None


async def test_after_a_restart_unfinished_jobs_are_resumed_from_a_new_start(open_registry: OpenRegistry) -> None:
    first = await open_registry("pod-a")
    await first.create(document(), job(), queued())
    await first.append_event(JobEvent("j1", "d1", Stage.EXTRACTING, current=2, total=9))
    await first.create(document("d2", sha256="b"), job("j2", "d2"), queued("j2", "d2"))
    await first.append_event(JobEvent("j2", "d2", Stage.DONE, message="ready"))
    await first.create(document("d3", sha256="c"), job("j3", "d3"), queued("j3", "d3"))
    await first.update_document("d3", status=DocumentStatus.DELETING)
    await first.close()  # the process stops (cleanly) with j1 unfinished

    second = await open_registry("pod-b")
    assert [j.job_id for j in await second.unfinished_jobs()] == ["j1"]
    before = await second.events_after("j1", 0)
    await second.restart_job("j1", [JobEvent("j1", "d1", Stage.QUEUED, message="resumed after a restart")])
    events = await second.events_after("j1", 0)
    assert [(e.stage, e.message) for e in events] == [(Stage.QUEUED, "resumed after a restart")]
    resumed = await second.get_job("j1")
    assert resumed is not None and resumed.stage is Stage.QUEUED
    # Whatever the numbering, a watcher that had seen the old events sees the new ones in order.
    assert [e.seq for e in await second.events_after("j1", 0)] == [e.seq for e in events]
    assert before and all(e.seq for e in events)


def test_the_registry_is_chosen_by_configuration_and_bad_values_name_their_variable() -> None:
    assert IngestConfig.from_env(Env({})).dynamo is None
    config = IngestConfig.from_env(
        Env({"INGEST_REGISTRY": "DynamoDB", "DYNAMO_JOBS_TABLE": "prod-jobs", "INGEST_LEASE_SECONDS": "30"})
    )
    assert config.registry == "dynamodb" and config.dynamo is not None
    assert (config.dynamo.documents_table, config.dynamo.jobs_table) == ("ragchat-ingest-documents", "prod-jobs")
    assert config.dynamo.lease_seconds == 30.0
    with pytest.raises(ConfigError, match="INGEST_REGISTRY"):
        IngestConfig.from_env(Env({"INGEST_REGISTRY": "redis"}))
    with pytest.raises(ConfigError, match="DYNAMO_UPLOADS_TABLE"):
        IngestConfig.from_env(Env({"INGEST_REGISTRY": "dynamodb", "DYNAMO_UPLOADS_TABLE": "no spaces"}))
    with pytest.raises(ConfigError, match="INGEST_LEASE_SECONDS"):
        IngestConfig.from_env(Env({"INGEST_REGISTRY": "dynamodb", "INGEST_LEASE_SECONDS": "1"}))
