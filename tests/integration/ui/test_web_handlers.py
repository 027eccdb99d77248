"""The web app's handlers, called directly against the fake gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ui.fake_gateway import ANSWER_TOKENS, RunningGateway, fake_gateway_server
from ui.client import GatewayClient
from ui.web import ClientPool, Handlers, build_app


@pytest.fixture
def gateway() -> Iterator[RunningGateway]:
    with fake_gateway_server() as running:
        yield running


@pytest.fixture
async def handlers(gateway: RunningGateway) -> AsyncIterator[Handlers]:
    pool = ClientPool(gateway.target)
    yield Handlers(pool)
    await pool.close()


def text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


async def test_chat_streams_the_answer_then_shows_references(handlers: Handlers, gateway: RunningGateway) -> None:
    updates = [u async for u in handlers.chat("Where do alpacas live?", [], "", "alice")]

    answers = [text_of(messages[1]) for messages, _, _ in updates if len(messages) > 1]
    # The answer grows token by token in the same message.
    assert answers[: len(ANSWER_TOKENS)] == ["".join(ANSWER_TOKENS[: i + 1]) for i in range(len(ANSWER_TOKENS))]
    messages, conversation_id, box = updates[-1]
    assert conversation_id == "conv-1"
    assert box == ""
    assert [m["role"] for m in messages] == ["user", "assistant", "assistant"]
    assert text_of(messages[0]) == "Where do alpacas live?"
    assert text_of(messages[1]) == "Alpacas live in herds [1]."
    references = messages[2]
    assert references["metadata"]["title"] == "References (2)"
    body = text_of(references)
    assert "**1. Alpaca Handbook** · p. 3 · score 0.910" in body
    assert "> Alpacas are kept in herds" in body
    assert "**2. Llama Notes** · no page · score 0.420" in body
    assert gateway.fake.users("Chat") == ["alice"]


async def test_follow_up_keeps_history_and_shows_the_condensed_question(
    handlers: Handlers, gateway: RunningGateway
) -> None:
    history = [{"role": "user", "content": [{"text": "first", "type": "text"}]}]
    *_, (messages, conversation_id, _) = [
        u async for u in handlers.chat("and then?", history, "conv-9", "alice", True, False)
    ]
    assert conversation_id == "conv-9"
    assert messages[0] == history[0]
    condensed = messages[2]
    assert condensed["metadata"]["title"] == "Searched for"
    assert text_of(condensed) == "and then? (about alpacas)"
    assert text_of(messages[3]) == "".join(ANSWER_TOKENS)
    assert len(messages) == 4, "no references block when they are turned off"
    request = gateway.fake.chat_requests[-1]
    assert request.conversation_id == "conv-9"
    assert request.options.references is False


async def test_chat_errors_are_shown_as_a_message(handlers: Handlers) -> None:
    *_, (messages, _, _) = [u async for u in handlers.chat("fail", [], "", "alice")]
    assert text_of(messages[1]) == ANSWER_TOKENS[0]
    assert text_of(messages[-1]) == "⚠️ the model endpoint stopped answering"

    *_, (messages, _, _) = [u async for u in handlers.chat("hello", [], "", "  ")]
    assert text_of(messages[-1]) == "⚠️ enter a user id first"


async def test_upload_shows_live_progress_then_summaries(
    handlers: Handlers, gateway: RunningGateway, tmp_path: Path
) -> None:
    good = tmp_path / "alpha.txt"
    good.write_text("alpacas", encoding="utf-8")
    bad = tmp_path / "broken.bad"
    bad.write_text("?", encoding="utf-8")

    updates = [u async for u in handlers.upload([str(good), str(bad)], "alice")]

    assert any("⏳ alpha\\.txt  extracting  \\[" in u for u in updates), updates
    final = updates[-1]
    assert "✅ **Alpha** (`doc-1`)" in final
    assert "A summary of Alpha\\." in final
    assert "❌ **broken\\.bad**: unsupported file type: \\.bad" in final
    assert "⏳" not in final
    assert set(gateway.fake.users("UploadDocument")) == {"alice"}

    rows, status = await handlers.documents("alice")
    assert rows == [["Alpha", "ready", 2, 3, "doc-1", "alpha.txt"]]
    assert status == ""
    rows, status = await handlers.delete("doc-1", "alice")
    assert rows == []
    assert status == "Deleted doc\\-1."
    rows, status = await handlers.delete("doc-1", "alice")
    assert status == "⚠️ no document doc-1"


async def test_documents_without_a_gateway_say_so(tmp_path: Path) -> None:
    pool = ClientPool("127.0.0.1:1")
    try:
        rows, status = await Handlers(pool).documents("alice")
    finally:
        await pool.close()
    assert rows == []
    assert status.startswith("⚠️ cannot reach the gateway at 127.0.0.1:1")


def test_build_app_wires_components_without_calling_the_gateway() -> None:
    import gradio as gr

    made: list[str] = []

    def factory(user: str) -> GatewayClient:
        made.append(user)
        return GatewayClient("127.0.0.1:1", user=user)

    app = build_app(factory, default_user_id="alice")
    assert isinstance(app, gr.Blocks)
    assert made == []
    chatbots = [block for block in app.blocks.values() if isinstance(block, gr.Chatbot)]
    assert len(chatbots) == 1
    # What the chat handler yields is accepted by the Chatbot component.
    messages: list[Any] = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "assistant", "content": "refs", "metadata": {"title": "References (1)", "status": "done"}},
    ]
    shown = chatbots[0].postprocess(messages)
    assert [m.metadata for m in shown.root] == [None, None, {"title": "References (1)", "status": "done"}]
