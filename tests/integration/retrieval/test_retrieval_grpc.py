"""The retrieval service as a real gRPC server on port 0, over a real channel, with the local index."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ragchat.v1 import retrieval_pb2, retrieval_pb2_grpc

from services.common.channels import open_channel
from services.common.config import Env
from services.common.server import GrpcServer
from services.retrieval.config import RetrievalConfig
from services.retrieval.server import SERVICE_NAME, build_app

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Running:
    stub: retrieval_pb2_grpc.RetrievalServiceStub
    health: health_pb2_grpc.HealthStub
    server: GrpcServer
    config: RetrievalConfig


def make_config(data_dir: Path, **env: str) -> RetrievalConfig:
    config = RetrievalConfig.from_env(
        Env({"DATA_DIR": str(data_dir), "PORT": "0", "MAX_CHUNKS_PER_DOCUMENT": "5", **env})
    )
    return replace(config, server=replace(config.server, grace_seconds=1.0))


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    config = make_config(tmp_path / "data")
    server = GrpcServer(build_app(config), config.server)
    port = await server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        yield Running(
            retrieval_pb2_grpc.RetrievalServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
            server,
            config,
        )
    finally:
        await channel.close()
        await server.stop(0)


def header(owner: str = "alice", doc_id: str = "d1", title: str = "Fruit Guide") -> retrieval_pb2.IndexDocumentRequest:
    return retrieval_pb2.IndexDocumentRequest(
        header=retrieval_pb2.IndexHeader(owner=owner, doc_id=doc_id, title=title, source="fruit.pdf")
    )


def batch(*texts: str, start: int = 0) -> retrieval_pb2.IndexDocumentRequest:
    return retrieval_pb2.IndexDocumentRequest(
        batch=retrieval_pb2.ChunkBatch(
            chunks=[
                retrieval_pb2.Chunk(
                    chunk_id=f"c{start + i}",
                    text=text,
                    page=start + i + 1,
                    heading=f"Section {start + i}",
                    char_start=100 * (start + i),
                    char_end=100 * (start + i) + len(text),
                )
                for i, text in enumerate(texts)
            ]
        )
    )


async def index(stub: Any, *messages: retrieval_pb2.IndexDocumentRequest) -> retrieval_pb2.IndexDocumentResponse:
    async def requests() -> AsyncIterator[retrieval_pb2.IndexDocumentRequest]:
        for message in messages:
            yield message

    response: retrieval_pb2.IndexDocumentResponse = await stub.IndexDocument(requests())
    return response


async def search(stub: Any, **fields: Any) -> retrieval_pb2.SearchResponse:
    request: dict[str, Any] = {"owner": "alice", "query": "banana"}
    request.update(fields)
    response: retrieval_pb2.SearchResponse = await stub.Search(retrieval_pb2.SearchRequest(**request))
    return response


async def serving(health: Any, service: str = "") -> int:
    response = await health.Check(health_pb2.HealthCheckRequest(service=service))
    status: int = response.status
    return status


async def test_index_then_search_over_grpc(running: Running) -> None:
    assert await serving(running.health) == health_pb2.HealthCheckResponse.SERVING
    assert await serving(running.health, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
    response = await index(
        running.stub,
        header(),
        batch("Bananas are rich in potassium.", "Apples keep the doctor away."),
        batch("A banana bread recipe with ripe bananas.", start=2),
    )
    assert (response.doc_id, response.chunks_indexed) == ("d1", 3)
    found = await search(running.stub, query="banana potassium", top_k=2)
    assert found.backend == "local"
    assert [p.chunk_id for p in found.passages] == ["c0", "c2"]
    top = found.passages[0]
    assert (top.doc_id, top.title, top.source, top.page, top.heading) == (
        "d1",
        "Fruit Guide",
        "fruit.pdf",
        1,
        "Section 0",
    )
    assert (top.text, top.char_start, top.char_end, top.language) == ("Bananas are rich in potassium.", 0, 30, "en")
    assert top.score > found.passages[1].score > 0
    assert (await search(running.stub, query="banana", top_k=0)).passages[0].doc_id == "d1"
    assert (await search(running.stub, owner="bob")).passages == []
    assert [p.chunk_id for p in (await search(running.stub, mode=retrieval_pb2.SEARCH_MODE_KEYWORD)).passages] == [
        "c2",
        "c0",
    ]


async def test_top_k_zero_uses_the_default_of_five(running: Running) -> None:
    await index(running.stub, header(doc_id="d1"), batch(*(f"banana {i}" for i in range(5))))
    await index(running.stub, header(doc_id="d2"), batch("banana 5", "banana 6"))
    assert len((await search(running.stub)).passages) == 5


async def test_nothing_is_visible_until_the_stream_completes(running: Running) -> None:
    call = running.stub.IndexDocument()
    await call.write(header())
    await call.write(batch("banana one", "banana two"))
    await asyncio.sleep(0.3)
    assert (await search(running.stub)).passages == []
    await call.done_writing()
    response = await call
    assert response.chunks_indexed == 2
    assert len((await search(running.stub)).passages) == 2


async def test_cancelled_streams_leave_nothing_and_keep_the_old_version(running: Running) -> None:
    # grpc.aio ends a cancelled request stream like a completed one; the write must still not happen.
    # Without the service's check this commits about half of the streams, so 10 rounds catch it.
    await index(running.stub, header(), batch("banana old version"))
    for round_ in range(10):
        call = running.stub.IndexDocument()
        await call.write(header(doc_id="d1" if round_ % 2 else f"new{round_}"))
        await call.write(batch("banana new version", "banana newer"))
        await asyncio.sleep(0.01 * (round_ % 3))
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await asyncio.sleep(0.3)
    found = await search(running.stub, top_k=50)
    assert [(p.doc_id, p.text) for p in found.passages] == [("d1", "banana old version")]


async def test_reindex_replaces_and_delete_counts(running: Running) -> None:
    await index(running.stub, header(), batch("banana a", "banana b", "banana c"))
    await index(running.stub, header(title="Second"), batch("banana only"))
    found = await search(running.stub)
    assert [(p.text, p.title) for p in found.passages] == [("banana only", "Second")]
    delete = retrieval_pb2.DeleteIndexedDocumentRequest(owner="alice", doc_id="d1")
    assert (await running.stub.DeleteDocument(delete)).chunks_deleted == 1
    assert (await running.stub.DeleteDocument(delete)).chunks_deleted == 0
    assert (await search(running.stub)).passages == []


async def test_doc_ids_filter_over_grpc(running: Running) -> None:
    await index(running.stub, header(doc_id="d1"), batch("banana banana banana"))
    await index(running.stub, header(doc_id="d2"), batch("banana split"))
    assert [p.doc_id for p in (await search(running.stub, doc_ids=["d2"])).passages] == ["d2"]
    assert [p.doc_id for p in (await search(running.stub, doc_ids=["d1", "d2"])).passages] == ["d1", "d2"]


async def test_korean_over_grpc(running: Running) -> None:
    await index(
        running.stub,
        header(doc_id="ko", title="도시"),
        batch("서울은 인구가 가장 많은 도시이다.", "부산은 항구 도시이다."),
    )
    found = await search(running.stub, query="서울의 인구")
    assert found.passages[0].text == "서울은 인구가 가장 많은 도시이다."
    assert found.passages[0].language == "ko"


async def test_dense_and_hybrid_modes_find_a_paraphrase_keyword_search_misses(running: Running) -> None:
    await index(
        running.stub,
        header(doc_id="cars", title="Vehicles"),
        batch(
            "The automobile needs new tyres before the winter trip.",
            "Bananas ripen faster next to apples.",
            "The committee met on Tuesday to approve the budget.",
        ),
    )
    question = "my car requires fresh wheels"
    keyword = await search(running.stub, query=question, mode=retrieval_pb2.SEARCH_MODE_KEYWORD)
    assert keyword.passages == []
    for mode in (
        retrieval_pb2.SEARCH_MODE_DENSE,
        retrieval_pb2.SEARCH_MODE_HYBRID,
        retrieval_pb2.SEARCH_MODE_UNSPECIFIED,
    ):
        found = await search(running.stub, query=question, mode=mode, top_k=3)
        assert found.passages[0].text == "The automobile needs new tyres before the winter trip.", mode
        assert found.passages[0].score > found.passages[1].score >= 0, mode
        assert found.backend == "local"
    other = await search(running.stub, owner="bob", query=question, mode=retrieval_pb2.SEARCH_MODE_DENSE)
    assert other.passages == []


def test_python_dash_m_fails_at_start_when_the_embedding_model_is_missing(
    process_env: dict[str, str], tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.retrieval"],
        cwd=REPO,
        env={
            **process_env,
            "PORT": str(free_port()),
            "DATA_DIR": str(tmp_path / "data"),
            "EMBEDDING_MODEL_DIR": str(tmp_path / "no-model"),
        },
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "the embedding model is missing" in result.stderr.decode() + result.stdout.decode()
    assert "scripts/export_embedding_model.py" in result.stderr.decode() + result.stdout.decode()


SEARCH_ERRORS: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
    ({"owner": ""}, grpc.StatusCode.INVALID_ARGUMENT, "owner is required"),
    ({"query": "   "}, grpc.StatusCode.INVALID_ARGUMENT, "query is empty"),
    (
        {"top_k": 101},
        grpc.StatusCode.INVALID_ARGUMENT,
        "top_k must be between 1 and 100 (0 means the default), got 101",
    ),
    ({"top_k": -3}, grpc.StatusCode.INVALID_ARGUMENT, "top_k must be between 1 and 100 (0 means the default), got -3"),
    ({"mode": 42}, grpc.StatusCode.INVALID_ARGUMENT, "unknown search mode 42"),
    ({"doc_ids": [""]}, grpc.StatusCode.INVALID_ARGUMENT, "doc_ids must not contain an empty id"),
]

INDEX_ERRORS = [
    ([], "the stream carried no header: send the header (owner, doc_id) first"),
    ([batch("banana")], "the first message must carry the header (owner, doc_id)"),
    ([header(), batch("banana"), header()], "header must be sent once, as the first message"),
    ([header(owner="")], "header.owner is required"),
    ([header(doc_id="")], "header.doc_id is required"),
    ([header(), batch("banana", "")], "chunk 1 ('c1') has empty text"),
    (
        [header(), batch("1", "2", "3"), batch("4", "5", "6", start=3)],
        "document 'd1' has more than 5 chunks (MAX_CHUNKS_PER_DOCUMENT); split it or chunk it more coarsely",
    ),
    ([header(), retrieval_pb2.IndexDocumentRequest()], "a message carries neither header nor batch"),
]


async def test_every_bad_input_gets_its_status_and_message_and_the_service_stays_healthy(running: Running) -> None:
    await index(running.stub, header(), batch("banana kept"))
    for fields, code, message in SEARCH_ERRORS:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await search(running.stub, **fields)
        assert (raised.value.code(), raised.value.details()) == (code, message), fields
    for messages, message in INDEX_ERRORS:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await index(running.stub, *messages)
        assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message), message
    for owner, doc_id, message in (("", "d1", "owner is required"), ("alice", "", "doc_id is required")):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await running.stub.DeleteDocument(retrieval_pb2.DeleteIndexedDocumentRequest(owner=owner, doc_id=doc_id))
        assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert await serving(running.health) == health_pb2.HealthCheckResponse.SERVING
    assert [p.text for p in (await search(running.stub)).passages] == ["banana kept"]


async def test_the_index_persists_across_server_restarts(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    for round_ in range(2):
        server = GrpcServer(build_app(config), config.server)
        port = await server.start()
        channel = open_channel(f"127.0.0.1:{port}")
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        try:
            if round_ == 0:
                await index(stub, header(), batch("banana durable"))
            assert [p.text for p in (await search(stub)).passages] == ["banana durable"]
        finally:
            await channel.close()
            await server.stop(0)
    assert (tmp_path / "data" / "index.db").is_file()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def process_env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in {"RETRIEVAL_BACKEND", "RETRIEVAL_TOP_K"}}
    env.update({"DATA_DIR": str(tmp_path / "proc"), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}"})
    return env


async def test_python_dash_m_serves_and_stops_on_sigterm(process_env: dict[str, str]) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.retrieval",
        cwd=REPO,
        env={**process_env, "PORT": str(port)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        channel = open_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        status = None
        for _ in range(100):
            try:
                status = await serving(health)
            except grpc.aio.AioRpcError:
                status = None
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.1)
        assert status == health_pb2.HealthCheckResponse.SERVING
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        await index(stub, header(), batch("banana from a process"))
        assert [p.text for p in (await search(stub)).passages] == ["banana from a process"]
        await channel.close()
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
        assert process.returncode == 0, output.decode()
        assert b'"msg": "stopped"' in output
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_python_dash_m_fails_at_start_naming_a_bad_backend(process_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.retrieval"],
        cwd=REPO,
        env={**process_env, "PORT": str(free_port()), "RETRIEVAL_BACKEND": "elastic"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert re.search(
        r"RETRIEVAL_BACKEND='elastic' is not available; available backends: local, kendra, bedrock-kb",
        result.stderr.decode(),
    )
