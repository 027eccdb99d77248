"""A new version of a file (same owner, same file name, other bytes) replaces the old one cleanly."""

from __future__ import annotations

import grpc
from ragchat.v1 import common_pb2, ingest_pb2

from tests.integration.ingest.test_ingest_service import (
    Running,
    blob_files,
    ingest,  # noqa: F401 - the fixture
    rpc_error,
    upload,
    watch,
)

V1 = b"Version one says the meeting is on Monday. Bring the old slides.\n"
V2 = b"Version two says the meeting moved to Friday. Bring the new slides.\n"


async def ingest_file(running: Running, owner: str, name: str, data: bytes) -> common_pb2.IngestEvent:
    response = await upload(running.stub, owner, name, data)
    events = await watch(running.stub, owner, response.job_id)
    return events[-1]


async def listed(running: Running, owner: str) -> list[common_pb2.Document]:
    response = await running.stub.ListDocuments(ingest_pb2.ListDocumentsRequest(owner=owner))
    return list(response.documents)


async def test_a_new_version_replaces_the_old_one_everywhere(ingest: Running) -> None:  # noqa: F811
    first = await ingest_file(ingest, "alice", "minutes.txt", V1)
    second = await ingest_file(ingest, "alice", "../other/minutes.txt", V2)  # same sanitised name
    assert second.stage == common_pb2.INGEST_STAGE_DONE
    assert second.message == "ready; replaced the earlier version of minutes.txt"
    old, new = first.doc_id, second.doc_id
    assert old != new

    assert [document.doc_id for document in await listed(ingest, "alice")] == [new]
    assert ("alice", old) not in ingest.indexer.documents
    assert "Friday" in ingest.indexer.documents[("alice", new)][0].text
    assert [path.read_bytes() for path in blob_files(ingest.data_dir)] == [V2]
    error = await rpc_error(ingest.stub.GetDocument(ingest_pb2.GetDocumentRequest(owner="alice", doc_id=old)))
    assert error.code() == grpc.StatusCode.NOT_FOUND

    # The old bytes again are a newer version now (the old document is gone for good).
    third = await ingest_file(ingest, "alice", "minutes.txt", V1)
    assert third.doc_id not in (old, new)
    assert [document.doc_id for document in await listed(ingest, "alice")] == [third.doc_id]


async def test_versions_are_per_owner_and_per_name(ingest: Running) -> None:  # noqa: F811
    await ingest_file(ingest, "alice", "minutes.txt", V1)
    await ingest_file(ingest, "bob", "minutes.txt", V2)
    await ingest_file(ingest, "alice", "agenda.txt", V2)
    assert len(await listed(ingest, "alice")) == 2
    assert len(await listed(ingest, "bob")) == 1
    assert len(ingest.indexer.documents) == 3


async def test_a_failed_new_version_leaves_the_old_one_in_place(ingest: Running) -> None:  # noqa: F811
    first = await ingest_file(ingest, "alice", "minutes.txt", V1)
    broken = await ingest_file(ingest, "alice", "minutes.txt", b"   \n\t\n" + b"\n" * 10 + b".")
    assert broken.stage == common_pb2.INGEST_STAGE_FAILED
    documents = {document.doc_id: document.status for document in await listed(ingest, "alice")}
    assert documents[first.doc_id] == common_pb2.DOCUMENT_STATUS_READY
    assert ("alice", first.doc_id) in ingest.indexer.documents


async def test_re_uploading_the_same_bytes_is_not_a_new_version(ingest: Running) -> None:  # noqa: F811
    first = await ingest_file(ingest, "alice", "minutes.txt", V1)
    response = await upload(ingest.stub, "alice", "minutes.txt", V1)
    assert (response.duplicate, response.doc_id) == (True, first.doc_id)
    assert [document.doc_id for document in await listed(ingest, "alice")] == [first.doc_id]
