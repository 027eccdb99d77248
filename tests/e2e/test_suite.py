"""The whole suite, started the way `ragchat up` starts it, driven through the `ragchat` CLI and
the gateway client: a real PDF in, a grounded streamed answer with references out."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.common.channels import open_channel
from ui.client import GatewayClient
from ui.supervisor import Suite, SuiteConfig, SuitePorts

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

REPO = Path(__file__).resolve().parents[2]
PDFS = REPO.parent / "shared" / "data" / "pdfs"
PAPER = PDFS / "arxiv-2203.06947.pdf"
RAGCHAT = Path(sys.executable).parent / "ragchat"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def suite(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Suite]:
    if not PAPER.exists():
        pytest.skip(f"shared data missing: {PAPER}")
    home = tmp_path_factory.mktemp("ragchat-home")
    config = SuiteConfig(home=home, ports=SuitePorts.free(), start_timeout=90.0, grace_seconds=10.0)
    suite = Suite.for_config(config, dict(os.environ, SHUTDOWN_GRACE_SECONDS="5"))
    await suite.start()
    await suite.wait_ready()
    yield suite
    await suite.stop()


def cli(suite: Suite, *args: str, user: str = "alice") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RAGCHAT_GATEWAY=f"127.0.0.1:{suite.config.ports.gateway}")
    return subprocess.run(
        [str(RAGCHAT), *args, "--user", user], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def paper_id(suite: Suite) -> str:
    result = cli(suite, "ingest", str(PAPER))
    assert result.returncode == 0, result.stderr
    docs = json.loads(cli(suite, "docs", "--json").stdout)
    [doc] = [d for d in docs if d["source"] == PAPER.name]
    assert doc["status"] == "ready"
    assert doc["pages"] == 10
    assert doc["doc_id"] in result.stdout
    return str(doc["doc_id"])


async def test_every_service_is_serving(suite: Suite) -> None:
    for name in ("gateway", "ingest", "retrieval", "generation"):
        channel = open_channel(f"127.0.0.1:{suite.config.ports.of(name)}")
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, name
        await channel.close()
    # Reflection: tools like grpcurl can discover the API without the protos.
    sync_channel = grpc.insecure_channel(f"127.0.0.1:{suite.config.ports.gateway}")
    services = ProtoReflectionDescriptorDatabase(sync_channel).get_services()
    sync_channel.close()
    assert "ragchat.v1.GatewayService" in services
    assert "grpc.health.v1.Health" in services


async def test_ask_streams_a_grounded_answer_with_references(suite: Suite, paper_id: str) -> None:
    client = GatewayClient(f"127.0.0.1:{suite.config.ports.gateway}", user="alice")
    question = "Which module is proposed to deal with input sequences of variable lengths?"
    events = [event async for event in client.chat(question)]
    await client.close()

    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "started"
    assert kinds[1] == "condensed"
    assert kinds.count("token") > 3, "the answer arrives as a stream of tokens"
    assert kinds[-2:] == ["references", "done"]
    answer = "".join(e.token.text for e in events if e.WhichOneof("event") == "token")
    assert "Dilated Conditional Position Encoding" in answer
    assert events[-1].done.answer == answer
    references = events[-2].references.passages
    assert references, "the answer names its sources"
    assert all(p.doc_id == paper_id for p in references)
    assert all(p.source == PAPER.name and 1 <= p.page <= 10 for p in references)
    assert any("Dilated Conditional Position Encoding" in p.text for p in references)
    assert {"retrieval", "first_token", "total"} <= set(events[-1].done.latency_ms)

    # One request id follows the call through every service's JSON log.
    request_id = events[0].started.request_id
    for name in ("gateway", "retrieval", "generation"):
        lines = [
            json.loads(line)
            for line in suite.log_path(name).read_text(encoding="utf-8").splitlines()
            if line.startswith("{")
        ]
        assert any(line.get("request_id") == request_id for line in lines), name


async def test_follow_up_and_json_output_and_isolation(suite: Suite, paper_id: str) -> None:
    first = json.loads(cli(suite, "ask", "What does XYLayoutLM use Augmented XY Cut for?", "--json").stdout)
    assert first["references"]
    assert first["references"][0]["doc_id"] == paper_id
    follow = cli(suite, "ask", "And what is it evaluated on?", "--conversation", first["conversation_id"], "--json")
    assert follow.returncode == 0, follow.stderr
    second = json.loads(follow.stdout)
    assert second["conversation_id"] == first["conversation_id"]
    assert second["condensed_question"].startswith("And what is it evaluated on? (")

    # Another user sees none of alice's documents, passages or conversations.
    assert json.loads(cli(suite, "docs", "--json", user="bob").stdout) == []
    assert json.loads(cli(suite, "search", "Dilated Conditional Position Encoding", "--json", user="bob").stdout) == []
    stolen = cli(suite, "ask", "And then?", "--conversation", first["conversation_id"], user="bob")
    assert stolen.returncode == 1
    assert "no conversation" in stolen.stderr


async def test_search_json_and_call_log(suite: Suite, paper_id: str) -> None:
    result = cli(suite, "search", "augmented XY cut reading order", "--json", "--top-k", "3")
    passages = json.loads(result.stdout)
    assert 1 <= len(passages) <= 3
    assert {"doc_id", "title", "source", "page", "text", "score"} <= set(passages[0])
    assert passages == sorted(passages, key=lambda p: -p["score"])
    assert passages[0]["doc_id"] == paper_id

    import sqlite3

    db = sqlite3.connect(suite.config.home / "gateway" / "gateway.db")
    kinds = [row[0] for row in db.execute("SELECT kind FROM calls WHERE owner = 'alice'")]
    db.close()
    assert "upload" in kinds
    assert kinds.count("chat") >= 2


async def test_bad_input_gets_a_precise_status_and_breaks_nothing(suite: Suite, paper_id: str, tmp_path: Path) -> None:
    cases = {
        "empty.txt": b"",
        "image.pdf": b"\x89PNG\r\n\x1a\n" + b"\x00" * 200,
        "program.exe": b"MZ\x90\x00" + b"\x00" * 200,
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        result = cli(suite, "ingest", str(path))
        assert result.returncode != 0, name
        assert name in result.stderr or "error" in result.stderr.lower(), result.stderr

    client = GatewayClient(f"127.0.0.1:{suite.config.ports.gateway}", user="alice")
    stub_errors = []
    for question in ("", "   "):
        try:
            [e async for e in client.chat(question)]
        except Exception as error:
            stub_errors.append(error)
    assert len(stub_errors) == 2
    assert all(getattr(e, "code", None) in ("INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT) for e in stub_errors)
    await client.close()

    unknown = cli(suite, "delete", "no-such-document")
    assert unknown.returncode == 1
    assert "no document" in unknown.stderr

    # Nothing else was lost: the paper is still there and answers.
    docs = json.loads(cli(suite, "docs", "--json").stdout)
    assert [d["doc_id"] for d in docs] == [paper_id]
    assert not suite.failed


async def test_delete_removes_the_document_everywhere(suite: Suite, paper_id: str, tmp_path: Path) -> None:
    note = tmp_path / "note.md"
    note.write_text("# Llamas\n\nThe alpaca named Quillon lives on a farm near Cusco.\n", encoding="utf-8")
    result = cli(suite, "ingest", str(note))
    assert result.returncode == 0, result.stderr
    [note_doc] = [d for d in json.loads(cli(suite, "docs", "--json").stdout) if d["source"] == "note.md"]
    hits = json.loads(cli(suite, "search", "Quillon alpaca", "--json").stdout)
    assert hits[0]["doc_id"] == note_doc["doc_id"]

    assert cli(suite, "delete", note_doc["doc_id"]).returncode == 0
    after = json.loads(cli(suite, "search", "Quillon alpaca", "--json").stdout)
    assert note_doc["doc_id"] not in {p["doc_id"] for p in after}, "a deleted document never comes back"
    assert not any("Quillon" in p["text"] for p in after)
    assert [d["doc_id"] for d in json.loads(cli(suite, "docs", "--json").stdout)] == [paper_id]


async def test_sigterm_stops_a_service_cleanly(suite: Suite) -> None:
    """A service drains and stops on SIGTERM; the supervisor reports it and brings it back."""
    pid = suite.pids["generation"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while suite.pids.get("generation") in (pid, None):
        assert time.monotonic() < deadline, "the supervisor did not restart the stopped service"
        await asyncio.sleep(0.1)
    await suite.wait_ready(timeout=60)
    log = suite.log_path("generation").read_text(encoding="utf-8")
    assert '"msg": "stopped"' in log, "the service logged its graceful stop"
    client = GatewayClient(f"127.0.0.1:{suite.config.ports.gateway}", user="alice")
    events = [e async for e in client.chat("What is XYLayoutLM?")]
    await client.close()
    assert events[-1].WhichOneof("event") == "done"
