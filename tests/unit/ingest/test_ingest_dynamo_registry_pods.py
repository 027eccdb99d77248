"""The DynamoDB registry between pods: several registry instances (one per pod) over one moto
DynamoDB, racing for the same content and the same lapsed job, reading each other's events,
fencing a pod that lost its lease, and keeping a deleted document deleted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from services.common.errors import AlreadyExists, FailedPrecondition, ResourceExhausted
from services.ingest.backends import DocumentStatus, JobEvent, Stage
from services.ingest.backends.dynamo_registry import DynamoRegistry
from tests.unit.ingest.test_ingest_dynamo_registry import (
    Clock,
    SerialClient,
    document,
    dynamo_registry,
    dynamodb,
    job,
    queued,
)

__all__ = ["dynamodb"]  # the fixture, shared

Pods = Callable[..., DynamoRegistry]


@pytest.fixture
async def pods(dynamodb: SerialClient) -> AsyncIterator[Pods]:
    """Makes registry instances ("pods") over the same tables; opened, and closed at the end."""
    made: list[DynamoRegistry] = []

    def pod(name: str, **options: Any) -> DynamoRegistry:
        registry = dynamo_registry(dynamodb, name, **options)
        made.append(registry)
        return registry

    yield pod
    for registry in made:
        await registry.close()


async def test_two_pods_storing_the_same_bytes_at_once_make_one_document(pods: Pods) -> None:
    a, b = pods("pod-a"), pods("pod-b")
    await a.open()
    await b.open()
    for round_ in range(8):
        sha = f"sha{round_}"
        # Both looked for the content first and found nothing: only the write can decide.
        assert await a.find_by_sha256("alice", sha) is None and await b.find_by_sha256("alice", sha) is None
        results = await asyncio.gather(
            a.create(document(f"a{round_}", sha256=sha), job(f"ja{round_}", f"a{round_}"), queued(f"ja{round_}")),
            b.create(document(f"b{round_}", sha256=sha), job(f"jb{round_}", f"b{round_}"), queued(f"jb{round_}")),
            return_exceptions=True,
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1 and len(losers) == 1, results
        assert isinstance(losers[0], AlreadyExists)
        for pod in (a, b):
            found = await pod.find_by_sha256("alice", sha)
            assert found is not None and found.doc_id == winners[0].doc_id
        assert [d.doc_id for d in await b.list_documents("alice")].count(winners[0].doc_id) == 1
    assert len(await a.list_documents("alice")) == 8


async def test_exactly_one_pod_takes_over_a_job_whose_pod_died(pods: Pods) -> None:
    start = Clock()
    dead = pods("pod-dead", clock=start)
    await dead.open()
    later = Clock(start.now + 61)  # past the 60 s lease
    survivors = [pods(f"pod-{n}", clock=later) for n in range(3)]
    for survivor in survivors:
        await survivor.open()
    for round_ in range(6):
        doc_id, job_id = f"d{round_}", f"j{round_}"
        await dead.create(document(doc_id, sha256=f"s{round_}"), job(job_id, doc_id), queued(job_id, doc_id))
        taken = await asyncio.gather(*(survivor.unfinished_jobs() for survivor in survivors))
        holders = [n for n, jobs in enumerate(taken) if [j.job_id for j in jobs] == [job_id]]
        assert len(holders) == 1, taken
        assert sum(len(jobs) for jobs in taken) == 1
        assert [survivor.holds(job_id) for survivor in survivors].count(True) == 1


async def test_a_live_lease_is_renewed_and_handed_back_on_shutdown(pods: Pods) -> None:
    owner = pods("pod-a", lease_seconds=1.5)
    other = pods("pod-b", lease_seconds=1.5)
    await owner.open()
    await other.open()
    await owner.create(document(), job(), queued())
    await asyncio.sleep(3.5)  # more than two leases: only the renewals (every 0.5 s) keep it
    assert await other.unfinished_jobs() == []
    await owner.close()  # a clean stop hands the lease back: no need to wait for it to lapse
    assert [j.job_id for j in await other.unfinished_jobs()] == ["j1"]
    assert other.holds("j1")


async def test_events_written_by_one_pod_are_read_by_another_and_only_the_holder_writes(pods: Pods) -> None:
    a, b = pods("pod-a"), pods("pod-b")
    await a.open()
    await b.open()
    await a.create(document(), job(), queued())
    await a.append_event(JobEvent("j1", "d1", Stage.EXTRACTING, current=1, total=4))
    seen = await b.events_after("j1", 0)
    assert [(e.seq, e.stage) for e in seen] == [(1, Stage.QUEUED), (2, Stage.STORED), (3, Stage.EXTRACTING)]
    intruder = await b.append_event(JobEvent("j1", "d1", Stage.DONE, message="not mine"))
    assert intruder.seq == 0  # not stored
    assert [e.seq for e in await a.events_after("j1", 0)] == [1, 2, 3]
    current = await b.get_job("j1")
    assert current is not None and current.stage is Stage.EXTRACTING
    await a.append_event(JobEvent("j1", "d1", Stage.DONE, message="ready"))
    assert [e.stage for e in await b.events_after("j1", 3)] == [Stage.DONE]
    assert not a.holds("j1")  # a finished job holds no lease


async def test_a_pod_that_lost_its_lease_stores_nothing_more_and_is_told(pods: Pods) -> None:
    lost: list[tuple[str, str]] = []

    async def record(job_id: str, doc_id: str) -> None:
        lost.append((job_id, doc_id))

    start = Clock()
    stalled = pods("pod-stalled", clock=start, on_lease_lost=record)
    await stalled.open()
    await stalled.create(document(), job(), queued())
    later = Clock(start.now + 61)
    taker = pods("pod-taker", clock=later)
    await taker.open()
    assert [j.job_id for j in await taker.unfinished_jobs()] == ["j1"]
    await taker.restart_job("j1", [JobEvent("j1", "d1", Stage.QUEUED, message="resumed after a restart")])

    # The stalled pod wakes up and carries on: nothing it writes is stored, and it is told to stop.
    late = await stalled.append_event(JobEvent("j1", "d1", Stage.EXTRACTING, message="extracting text"))
    assert late.seq == 0
    for _ in range(50):
        if lost:
            break
        await asyncio.sleep(0.01)
    assert lost == [("j1", "d1")]
    assert not stalled.holds("j1") and taker.holds("j1")
    events = await taker.events_after("j1", 0)
    assert [(e.stage, e.message) for e in events] == [(Stage.QUEUED, "resumed after a restart")]


async def test_a_resumed_job_keeps_counting_so_a_watcher_elsewhere_sees_the_new_run(pods: Pods) -> None:
    start = Clock()
    first = pods("pod-a", clock=start)
    await first.open()
    await first.create(document(), job(), queued())
    for page in (1, 2, 3):
        await first.append_event(JobEvent("j1", "d1", Stage.EXTRACTING, current=page, total=9))
    watcher_position = 5  # a watcher on a third pod has seen events 1..5
    second = pods("pod-b", clock=Clock(start.now + 61))
    await second.open()
    await second.unfinished_jobs()
    await second.restart_job("j1", queued())
    fresh = await second.events_after("j1", watcher_position)
    assert [(e.seq, e.stage) for e in fresh] == [(6, Stage.QUEUED), (7, Stage.STORED)]
    assert [e.seq for e in await second.events_after("j1", 0)] == [6, 7]  # the old run is gone


async def test_a_document_being_deleted_is_not_brought_back_by_a_job_elsewhere(pods: Pods) -> None:
    runner, deleter = pods("pod-runner"), pods("pod-deleter")
    await runner.open()
    await deleter.open()
    await runner.create(document(), job(), queued())
    marked = await deleter.update_document("d1", status=DocumentStatus.DELETING)
    assert marked is not None and marked.status is DocumentStatus.DELETING
    # The job, still running on the other pod, finishes and marks the document ready: refused.
    assert await runner.update_document("d1", status=DocumentStatus.READY, summary="S") is None
    assert await runner.update_document("d1", chunks=7) is None
    current = await deleter.get_document("d1")
    assert current is not None and current.status is DocumentStatus.DELETING and current.chunks == 0
    assert await deleter.update_document("d1", status=DocumentStatus.DELETING) is not None
    await deleter.delete_document("d1")
    assert await runner.get_document("d1") is None


async def test_a_deleted_job_is_dropped_from_the_leases_and_its_pod_told(pods: Pods) -> None:
    lost: list[tuple[str, str]] = []

    async def record(job_id: str, doc_id: str) -> None:
        lost.append((job_id, doc_id))

    runner = pods("pod-runner", lease_seconds=0.3, on_lease_lost=record)
    deleter = pods("pod-deleter")
    await runner.open()
    await deleter.open()
    await runner.create(document(), job(), queued())
    await deleter.update_document("d1", status=DocumentStatus.DELETING)
    await deleter.delete_document("d1")
    for _ in range(100):  # the next renewal (every 0.1 s) finds the job gone
        if lost:
            break
        await asyncio.sleep(0.02)
    assert lost == [("j1", "d1")] and not runner.holds("j1")


def _stubbed(operations: list[tuple[str, str]]) -> tuple[Any, Stubber]:
    client = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    for operation, code in operations:
        stubber.add_client_error(operation, service_error_code=code, http_status_code=400)
    return client, stubber


async def test_missing_tables_throttling_and_denials_become_errors_a_person_can_act_on() -> None:
    client, stubber = _stubbed([("describe_table", "ResourceNotFoundException")])
    with stubber:
        registry = DynamoRegistry(client, documents_table="docs", jobs_table="jobs", uploads_table="uploads")
        with pytest.raises(FailedPrecondition, match="DYNAMO_DOCUMENTS_TABLE"):
            await registry.open()
    client, stubber = _stubbed([("get_item", "ProvisionedThroughputExceededException")])
    with stubber:
        registry = DynamoRegistry(client, documents_table="docs", jobs_table="jobs", uploads_table="uploads")
        with pytest.raises(ResourceExhausted, match="try again"):
            await registry.get_document("d1")
    client, stubber = _stubbed([("query", "AccessDeniedException")])
    with stubber:
        registry = DynamoRegistry(client, documents_table="docs", jobs_table="jobs", uploads_table="uploads")
        with pytest.raises(FailedPrecondition, match="IAM role"):
            await registry.list_documents("alice")
