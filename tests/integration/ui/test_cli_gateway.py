"""``ragchat`` commands through ``main([...])`` against a fake gateway on a real gRPC server."""

from __future__ import annotations

import argparse
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.ui.fake_gateway import ANSWER_TOKENS, RunningGateway, fake_gateway_server
from ui.cli import build_parser, cmd_ask, main
from ui.client import GatewayClient

PASSAGE_KEYS = {"doc_id", "title", "source", "page", "text", "score"}


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningGateway]:
    with fake_gateway_server() as running:
        monkeypatch.setenv("RAGCHAT_GATEWAY", running.target)
        monkeypatch.setenv("RAGCHAT_USER", "env-user")
        monkeypatch.delenv("RAGCHAT_TOKEN", raising=False)
        yield running


def test_ingest_folder_uploads_every_visible_file_in_chunks(
    gateway: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / ".git").mkdir()
    (folder / "alpha.txt").write_text("alpacas", encoding="utf-8")
    big = bytes(range(256)) * 2400  # 600 KiB: three 256 KiB chunks
    (folder / "sub" / "beta.md").write_bytes(big)
    (folder / ".hidden.txt").write_text("secret", encoding="utf-8")
    (folder / ".git" / "config").write_text("x", encoding="utf-8")

    code = main(["ingest", str(folder), "--user", "alice"])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines() == ["doc-1  Alpha", "doc-2  Beta"]
    uploads = gateway.fake.uploads
    assert [u.filename for u in uploads] == ["alpha.txt", "beta.md"]
    assert [u.content_type for u in uploads] == ["text/plain", "text/markdown"]
    assert uploads[1].data == big
    assert uploads[1].size_bytes == len(big)
    assert uploads[1].chunks == 3
    assert set(gateway.fake.users("UploadDocument")) == {"alice"}
    assert set(gateway.fake.users("WatchIngestJob")) == {"alice"}
    # Not a terminal: one plain progress line per stage, no carriage returns.
    assert "\r" not in err
    assert "alpha.txt  extracting  [" in err
    assert "alpha.txt  embedding  [####################] 3/3 chunks" in err
    assert err.count("alpha.txt  extracting") == 1
    assert "alpha.txt  done" in err
    assert "    A summary of Alpha." in err.splitlines(), "each document's summary is shown after it"


def test_ingest_reports_each_failure_and_exits_nonzero(
    gateway: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.txt"
    good.write_text("fine", encoding="utf-8")
    broken = tmp_path / "broken.bad"
    broken.write_text("???", encoding="utf-8")
    huge = tmp_path / "huge.txt"
    huge.write_text("big", encoding="utf-8")

    code = main(["ingest", str(good), str(broken), str(huge)])

    out, err = capsys.readouterr()
    assert code == 1
    assert out.splitlines() == ["doc-1  Good"]
    assert f"error: {broken}: unsupported file type: .bad (INVALID_ARGUMENT)" in err
    assert f"error: {huge}: huge.txt is larger than the 1 MiB upload limit" in err
    assert "1 ingested, 2 failed" in err
    assert "Traceback" not in err


def test_ingest_of_the_same_bytes_twice_says_duplicate(
    gateway: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "note.txt"
    path.write_text("same", encoding="utf-8")
    assert main(["ingest", str(path)]) == 0
    assert main(["ingest", str(path)]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines() == ["doc-1  Note", "doc-1  Note  (duplicate)"]


def test_ingest_of_a_missing_path_is_a_usage_error(
    gateway: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ingest", str(tmp_path / "nope.pdf")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert gateway.fake.uploads == []


def test_search_json_is_an_array_of_passages_best_first(
    gateway: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", "alpaca herds", "--json"]) == 0
    passages = json.loads(capsys.readouterr().out)
    assert len(passages) == 2
    assert all(set(p) >= PASSAGE_KEYS for p in passages)
    assert passages[0]["doc_id"] == "doc-a"
    assert passages[0]["page"] == 3
    assert passages[0]["score"] == pytest.approx(0.91)
    assert [p["score"] for p in passages] == sorted((p["score"] for p in passages), reverse=True)
    # No --user: RAGCHAT_USER is the identity.
    assert gateway.fake.users("Search") == ["env-user"]

    assert main(["search", "alpaca", "--top-k", "1", "--user", "bob"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[1] Alpaca Handbook, p. 3 (score 0.910)\n    Alpacas are kept in herds.")
    assert gateway.fake.search_requests[-1].top_k == 1
    assert gateway.fake.users("Search")[-1] == "bob"


def test_ask_streams_the_answer_then_references(gateway: RunningGateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "Where do alpacas live?", "--top-k", "5", "--no-rag"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Alpacas live in herds [1].\n\nReferences:\n[1] Alpaca Handbook, p. 3 (score 0.910)\n")
    assert "[2] Llama Notes, no page (score 0.420)\n    Llamas hum." in out
    assert "conversation: conv-1" in err
    request = gateway.fake.chat_requests[-1]
    assert request.question == "Where do alpacas live?"
    assert request.conversation_id == ""
    assert request.options.HasField("rag") and request.options.rag is False
    assert request.options.top_k == 5
    assert not request.options.HasField("references")
    assert gateway.fake.users("Chat") == ["env-user"]


async def test_ask_writes_each_token_as_it_arrives(gateway: RunningGateway) -> None:
    class Recording(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return super().write(text)

    args = build_parser().parse_args(["ask", "Where?", "--no-references"])
    out, err = Recording(), io.StringIO()
    client = GatewayClient(gateway.target, user="alice")
    try:
        assert await cmd_ask(client, args, out, err) == 0
    finally:
        await client.close()
    assert out.writes[: len(ANSWER_TOKENS)] == ANSWER_TOKENS
    assert "References" not in out.getvalue()
    assert gateway.fake.chat_requests[-1].options.references is False


def test_ask_json_follow_up(gateway: RunningGateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "And the second?", "--conversation", "conv-7", "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert set(result) == {"answer", "references", "conversation_id", "condensed_question"}
    assert result["answer"] == "".join(ANSWER_TOKENS)
    assert result["conversation_id"] == "conv-7"
    assert result["condensed_question"] == "And the second? (about alpacas)"
    assert [p["doc_id"] for p in result["references"]] == ["doc-a", "doc-b"]
    assert all(set(p) >= PASSAGE_KEYS for p in result["references"])
    assert gateway.fake.chat_requests[-1].conversation_id == "conv-7"
    assert "--conversation conv-7" in err


def test_ask_failing_mid_answer_prints_the_reason_and_exits_1(
    gateway: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ask", "fail"]) == 1
    out, err = capsys.readouterr()
    assert out == ANSWER_TOKENS[0] + "\n"
    assert err.strip().endswith("error: the model endpoint stopped answering")
    assert "Traceback" not in err


def test_ask_rejected_question_exits_1_with_the_server_message(
    gateway: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ask", "   "]) == 1
    assert capsys.readouterr().err == "error: the question is empty\n"


def test_docs_and_delete(gateway: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "alpaca.txt"
    path.write_text("alpacas", encoding="utf-8")
    assert main(["ingest", str(path), "--user", "carol"]) == 0
    capsys.readouterr()

    assert main(["docs", "--json", "--user", "carol"]) == 0
    [doc] = json.loads(capsys.readouterr().out)
    assert {"doc_id", "title", "source", "pages", "status"} <= set(doc)
    assert doc["doc_id"] == "doc-1"
    assert doc["status"] == "ready"
    assert doc["source"] == "alpaca.txt"
    assert doc["pages"] == 2

    assert main(["docs", "--user", "dave", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    assert main(["docs", "--user", "carol"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["DOC_ID", "STATUS", "PAGES", "TITLE"]
    assert table[1].split() == ["doc-1", "ready", "2", "Alpaca"]

    assert main(["delete", "doc-1", "--user", "carol"]) == 0
    assert capsys.readouterr().out == "deleted doc-1\n"
    assert main(["delete", "doc-1", "--user", "carol"]) == 1
    assert capsys.readouterr().err == "error: no document doc-1\n"
    assert set(gateway.fake.users("DeleteDocument")) == {"carol"}


def test_conversations_json(gateway: RunningGateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conversations", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {
            "conversation_id": "conv-1",
            "title": "About alpacas",
            "turn_count": 2,
            "created_at": None,
            "updated_at": "2023-11-14T22:13:20Z",
        }
    ]


def test_unavailable_from_the_gateway_is_exit_1_not_unreachable(
    gateway: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", "backend down"]) == 1
    assert capsys.readouterr().err == "error: the retrieval service is unavailable; try again shortly\n"


def test_token_is_sent_as_bearer(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGCHAT_TOKEN", "s3cret")
    assert main(["docs"]) == 0
    assert [call.authorization for call in gateway.fake.calls] == ["Bearer s3cret"]


def test_unreachable_gateway_exits_3_and_says_how_to_start_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("RAGCHAT_GATEWAY", f"127.0.0.1:{port}")
    assert main(["docs", "--user", "alice"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach the gateway at 127.0.0.1:{port}")
    assert "make run" in err and "ragchat up" in err
    assert err.count("\n") == 1


def test_parser_has_every_command() -> None:
    parser = build_parser()
    for argv in (["docs"], ["conversations"], ["delete", "d"], ["search", "q"], ["ask", "q"], ["ingest", "p"], ["up"]):
        assert isinstance(parser.parse_args(argv), argparse.Namespace)
