"""BLOB_BACKEND=s3 against a real moto_server on a loopback port: presigned PUTs over HTTP,
server-side encryption, keys under the owner's prefix, commit checks, delete."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from ragchat.v1 import common_pb2, ingest_pb2

from services.common.aws import AwsConfig, make_client
from services.common.config import Env
from services.common.errors import InvalidArgument
from services.ingest.backends.s3_blob_store import S3BlobStore
from services.ingest.core import owner_key
from tests.integration.ingest.test_ingest_service import Running, rpc_error, start, stop, upload, watch

BUCKET = "ragchat-test-docs"
NOTE = b"Tidal power uses the rise and fall of the sea. Barrages hold water back at high tide.\n"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_environ(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # Fake credentials for boto3's default chain; nothing leaves the loopback interface.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # us-east-1 is where botocore would presign with SigV2 unless told otherwise.
    return {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_REGION": "us-east-1"}


@pytest.fixture
def s3(aws_environ: dict[str, str]) -> Iterator[Any]:
    client = make_client("s3", AwsConfig.from_env(Env(aws_environ)))
    client.create_bucket(Bucket=BUCKET)
    yield client
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


@pytest.fixture
async def ingest_s3(tmp_path: Path, aws_environ: dict[str, str], s3: Any) -> AsyncIterator[Running]:
    running = await start(
        tmp_path,
        BLOB_BACKEND="s3",
        S3_BUCKET=BUCKET,
        S3_PREFIX="docs",
        AWS_ENDPOINT_URL=aws_environ["AWS_ENDPOINT_URL"],
        AWS_REGION=aws_environ["AWS_REGION"],
    )
    yield running
    await stop(running)


def keys(s3: Any) -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


async def create(running: Running, owner: str, filename: str, size: int) -> ingest_pb2.CreateUploadResponse:
    header = ingest_pb2.UploadHeader(owner=owner, filename=filename, size_bytes=size, content_type="text/plain")
    response: ingest_pb2.CreateUploadResponse = await running.stub.CreateUpload(
        ingest_pb2.CreateUploadRequest(header=header), timeout=10
    )
    return response


async def put(created: ingest_pb2.CreateUploadResponse, data: bytes) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.put(created.url, content=data, headers=dict(created.headers))


async def commit(running: Running, owner: str, upload_id: str) -> ingest_pb2.UploadResponse:
    response: ingest_pb2.UploadResponse = await running.stub.CommitUpload(
        ingest_pb2.CommitUploadRequest(owner=owner, upload_id=upload_id), timeout=30
    )
    return response


async def test_a_presigned_put_then_commit_ingests_the_file_encrypted_under_the_owners_prefix(
    ingest_s3: Running, s3: Any
) -> None:
    created = await create(ingest_s3, "alice", "../../tides.txt", len(NOTE))
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in created.url  # SigV4, even in us-east-1
    assert f"/{BUCKET}/docs/{owner_key('alice')}/" in created.url
    assert created.headers["Content-Type"] == "text/plain"
    assert created.headers["x-amz-server-side-encryption"] == "AES256"
    assert created.expires_in_seconds == 900

    response = await put(created, NOTE)
    assert response.status_code == 200, response.text
    committed = await commit(ingest_s3, "alice", created.upload_id)
    assert not committed.duplicate
    assert committed.document.source == "tides.txt"
    assert committed.document.sha256 == hashlib.sha256(NOTE).hexdigest()
    events = await watch(ingest_s3.stub, "alice", committed.job_id)
    assert events[-1].stage == common_pb2.INGEST_STAGE_DONE, events[-1].message
    [key] = keys(s3)
    assert key == f"docs/{owner_key('alice')}/{committed.doc_id}/original"
    assert s3.head_object(Bucket=BUCKET, Key=key)["ServerSideEncryption"] == "AES256"
    [(_, indexed)] = ingest_s3.indexer.documents.items()
    assert "Tidal power" in indexed[0].text
    [call] = ingest_s3.indexer.calls
    assert (call.content_type, call.source_uri) == ("text/plain", f"s3://{BUCKET}/{key}")

    # The upload is used up; committing it again finds nothing.
    again = await rpc_error(commit(ingest_s3, "alice", created.upload_id))
    assert again.code() == grpc.StatusCode.NOT_FOUND

    # Same bytes again: the same document, and the second object is removed at once.
    second = await create(ingest_s3, "alice", "tides-copy.txt", len(NOTE))
    assert (await put(second, NOTE)).status_code == 200
    duplicate = await commit(ingest_s3, "alice", second.upload_id)
    assert (duplicate.duplicate, duplicate.doc_id) == (True, committed.doc_id)
    assert keys(s3) == [key]

    # Delete removes the object too.
    await ingest_s3.stub.DeleteDocument(ingest_pb2.DeleteDocumentRequest(owner="alice", doc_id=committed.doc_id))
    assert keys(s3) == []


async def test_commit_checks_what_was_uploaded(ingest_s3: Running, s3: Any) -> None:
    # Nothing PUT yet.
    created = await create(ingest_s3, "alice", "notes.txt", len(NOTE))
    error = await rpc_error(commit(ingest_s3, "alice", created.upload_id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "nothing was uploaded for notes.txt yet; PUT the file to the upload URL, then commit"

    # Another user cannot commit (or learn about) alice's upload.
    error = await rpc_error(commit(ingest_s3, "mallory", created.upload_id))
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, f"no upload {created.upload_id}")

    # A different size than declared: rejected, and the object removed.
    assert (await put(created, NOTE + b"extra")).status_code == 200
    error = await rpc_error(commit(ingest_s3, "alice", created.upload_id))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"notes.txt: {len(NOTE) + 5} bytes were uploaded but CreateUpload declared")
    assert keys(s3) == []

    # Bytes that are not what the name says: rejected after sniffing, and removed.
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    fake = await create(ingest_s3, "alice", "report.pdf", len(png))
    assert (await put(fake, png)).status_code == 200
    error = await rpc_error(commit(ingest_s3, "alice", fake.upload_id))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("report.pdf is not a PDF: its content looks like a PNG image")
    assert keys(s3) == []
    assert ingest_s3.indexer.calls == []


async def test_create_upload_refuses_what_could_never_be_committed(ingest_s3: Running) -> None:
    error = await rpc_error(create(ingest_s3, "alice", "tool.exe", 100))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("tool.exe: unsupported file type .exe; direct uploads need")
    error = await rpc_error(create(ingest_s3, "alice", "big.pdf", 10**12))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    error = await rpc_error(create(ingest_s3, "alice", "empty.txt", 0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "size_bytes is required" in error.details()


async def test_streamed_uploads_are_stored_encrypted_in_s3_too(ingest_s3: Running, s3: Any) -> None:
    response = await upload(ingest_s3.stub, "bob", "notes.md", b"# Notes\n\nStreamed through gRPC.\n")
    events = await watch(ingest_s3.stub, "bob", response.job_id)
    assert events[-1].stage == common_pb2.INGEST_STAGE_DONE
    [key] = keys(s3)
    assert key.startswith(f"docs/{owner_key('bob')}/{response.doc_id}/")
    assert s3.head_object(Bucket=BUCKET, Key=key)["ServerSideEncryption"] == "AES256"


async def test_kms_encryption_and_safe_keys(aws_environ: dict[str, str], s3: Any) -> None:
    store = S3BlobStore(
        lambda: make_client("s3", AwsConfig.from_env(Env(aws_environ))),
        bucket=BUCKET,
        prefix="p/",
        sse="aws:kms",
        kms_key_id="alias/ragchat",
    )
    await store.put("owner/doc/file", b"secret")
    stored = await store.stat("owner/doc/file")
    assert stored is not None and (stored.size_bytes, stored.encryption) == (6, "aws:kms")
    assert s3.head_object(Bucket=BUCKET, Key="p/owner/doc/file")["SSEKMSKeyId"].endswith("alias/ragchat")
    presigned = await store.presign_put("owner/doc/next", content_type="text/plain", size_bytes=3, expires_in=60)
    assert presigned.headers["x-amz-server-side-encryption-aws-kms-key-id"] == "alias/ragchat"
    assert store.uri("owner/doc/file") == f"s3://{BUCKET}/p/owner/doc/file"
    for bad in ("../escape", "owner/../../x", "/abs", "a//b", ""):
        with pytest.raises(InvalidArgument):
            await store.put(bad, b"x")
    assert await store.get("owner/doc/file") == b"secret"
    assert await store.delete("owner/doc/file") is True
    assert await store.delete("owner/doc/file") is False


async def test_abandoned_uploads_are_removed_at_the_next_start(
    tmp_path: Path, aws_environ: dict[str, str], s3: Any
) -> None:
    environ = {"BLOB_BACKEND": "s3", "S3_BUCKET": BUCKET, **aws_environ}
    running = await start(tmp_path, **environ)  # type: ignore[arg-type]
    try:
        created = await create(running, "alice", "never-committed.txt", len(NOTE))
        assert (await put(created, NOTE)).status_code == 200
        kept = await create(running, "alice", "committed.txt", len(NOTE) + 1)
        assert (await put(kept, NOTE + b"!")).status_code == 200
        committed = await commit(running, "alice", kept.upload_id)
        await watch(running.stub, "alice", committed.job_id)
    finally:
        await stop(running)
    assert len(keys(s3)) == 2
    with sqlite3.connect(tmp_path / "ingest.db") as db:
        db.execute("UPDATE uploads SET expires_at = 0")  # long expired, never committed
    running = await start(tmp_path, **environ)  # type: ignore[arg-type]
    try:
        for _ in range(100):
            if len(keys(s3)) == 1:
                break
            await asyncio.sleep(0.05)
        assert keys(s3) == [f"documents/{owner_key('alice')}/{committed.doc_id}/original"]
        error = await rpc_error(commit(running, "alice", created.upload_id))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await stop(running)
