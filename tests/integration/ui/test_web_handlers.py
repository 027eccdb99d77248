"""The web app's handlers, called directly against the fake gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ui.fake_gateway import ANSWER_TOKENS, RunningGateway, fake_gateway_server
from ui.client import GatewayClient
from ui.web import build_app
from ui.web_handlers import Caller, ChatSettings, ClientPool, Handlers

ALICE = Caller(user="alice")


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
    updates = [u async for u in handlers.chat("Where do alpacas live?", [], "", ALICE)]

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
    assert '<span class="rc-ref-n">[1]</span> <strong>Alpaca Handbook</strong> · p&#46; 3 · score 0.910' in body
    assert "<mark>Alpacas</mark> are kept in herds&#46;" in body, "the question's words are highlighted"
    assert "<details><summary>Open the full passage</summary>" in body, "the long passage opens in full"
    assert "<strong>Llama Notes</strong> · no page · score 0.420" in body
    assert gateway.fake.users("Chat") == ["alice"]


async def test_settings_are_sent_with_the_question(handlers: Handlers, gateway: RunningGateway) -> None:
    settings = ChatSettings(rag=False, references=False, top_k=7, conversation_mode=False)
    *_, (messages, _, _) = [u async for u in handlers.chat("hello", [], "", ALICE, settings)]
    options = gateway.fake.chat_requests[-1].options
    assert (options.rag, options.references, options.top_k, options.conversation_mode) == (False, False, 7, False)
    assert len(messages) == 2, "no references block when they are turned off"


async def test_follow_up_keeps_history_and_shows_the_condensed_question(
    handlers: Handlers, gateway: RunningGateway
) -> None:
    history = [{"role": "user", "content": [{"text": "first", "type": "text"}]}]
    *_, (messages, conversation_id, _) = [u async for u in handlers.chat("and then?", history, "conv-9", ALICE)]
    assert conversation_id == "conv-9"
    assert messages[0] == history[0]
    condensed = messages[2]
    assert condensed["metadata"]["title"] == "Searched for"
    assert text_of(condensed) == "and then? (about alpacas)"
    assert text_of(messages[3]) == "".join(ANSWER_TOKENS)
    assert messages[4]["metadata"]["title"] == "References (2)"
    assert gateway.fake.chat_requests[-1].conversation_id == "conv-9"


async def test_chat_errors_are_shown_as_a_message(handlers: Handlers) -> None:
    *_, (messages, _, _) = [u async for u in handlers.chat("fail", [], "", ALICE)]
    assert text_of(messages[1]) == ANSWER_TOKENS[0]
    assert text_of(messages[-1]) == '<div class="rc-error" role="alert">⚠ the model endpoint stopped answering</div>'

    *_, (messages, _, _) = [u async for u in handlers.chat("hello", [], "", Caller(user="  ", language="ko"))]
    assert "먼저 사용자 ID를 입력하세요&#46;" in text_of(messages[-1])


async def test_token_mode_sends_the_token_not_a_user(gateway: RunningGateway) -> None:
    pool = ClientPool(gateway.target)
    handlers = Handlers(pool, auth_mode="jwt")
    try:
        view = await handlers.sign_in(Caller(user="mallory", token=""))
        assert "Sign in first" in view.notice
        assert gateway.fake.calls == []
        view = await handlers.sign_in(Caller(user="mallory", token="tok-123"))
        assert "Signed in" in view.notice
        assert view.choices == [("About alpacas · 2 turns · 2023-11-14 22:13", "conv-1")]
    finally:
        await pool.close()
    [call] = gateway.fake.calls
    assert (call.user, call.authorization) == (None, "Bearer tok-123")


def test_stop_marks_the_cut_answer_and_forgets_an_unsaved_conversation() -> None:
    history = [
        {"role": "user", "content": [{"text": "q", "type": "text"}], "metadata": None},
        {"role": "assistant", "content": [{"text": "half an ans", "type": "text"}], "metadata": None},
    ]
    messages, conversation_id = Handlers.stopped(history, "conv-1", ALICE)
    assert text_of(messages[1]) == "half an ans\n\n*(stopped)*"
    assert conversation_id == "", "a stopped first turn is not saved by the gateway"

    earlier = [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}]
    messages, conversation_id = Handlers.stopped([*earlier, history[0]], "conv-1", Caller(language="ko"))
    assert text_of(messages[-1]) == "*(중지됨)*"
    assert conversation_id == "conv-1"


async def test_upload_shows_a_live_line_per_file_then_summaries(
    handlers: Handlers, gateway: RunningGateway, tmp_path: Path
) -> None:
    good = tmp_path / "alpha.txt"
    good.write_text("alpacas", encoding="utf-8")
    bad = tmp_path / "broken.bad"
    bad.write_text("?", encoding="utf-8")
    missing = tmp_path / "gone.txt"

    updates = [u async for u in handlers.upload([str(good), str(bad), str(missing)], ALICE)]

    # One live line per file from the start (the stages that follow are drawn as they come; the
    # fake sends them all at once, so they are coalesced here: see the unit tests and the browser test).
    assert updates[0].count("rc-file-live") == 3
    assert updates[0].count('<span class="rc-file-stage">uploading</span>') == 3
    final = updates[-1]
    assert "rc-file-live" not in final
    [doc_id] = gateway.fake.documents["alice"]  # the files go up together: ids follow their arrival
    shown_id = doc_id.replace("-", "&#45;")
    assert f'<span class="rc-file-name">Alpha</span> <code class="rc-file-id">{shown_id}</code>' in final
    assert '<div class="rc-file-summary">A summary of Alpha&#46;</div>' in final
    assert "broken&#46;bad</span>: unsupported file type&#58; &#46;bad" in final
    assert "gone&#46;txt</span>: cannot read the file &#40;No such file or directory&#41;" in final
    assert set(gateway.fake.users("UploadDocument")) == {"alice"}

    view = await handlers.documents(ALICE)
    assert view.headers[:3] == ["Title", "Status", "Pages"]
    assert view.rows == [["Alpha", "ready", 2, "7 B", 3, "-", doc_id]]
    assert view.choices == [(f"Alpha ({doc_id})", doc_id)]
    assert view.notice == ""
    view = await handlers.delete_document(doc_id, ALICE)
    assert view.rows == []
    assert f"Deleted {shown_id}&#46;" in view.notice
    view = await handlers.delete_document(doc_id, ALICE)
    assert f"⚠ no document {shown_id}" in view.notice


async def test_conversation_errors_are_messages(handlers: Handlers) -> None:
    resumed = await handlers.resume("conv-404", ALICE, references=True)
    assert (resumed.messages, resumed.conversation_id) == ([], "")
    assert "no conversation conv&#45;404" in resumed.notice
    view = await handlers.rename("conv-1", "   ", ALICE)
    assert "Type the new title first" in view.notice
    view = await handlers.delete_conversation("conv-404", ALICE)
    assert "no conversation conv&#45;404" in view.notice
    assert view.choices == [("About alpacas · 2 turns · 2023-11-14 22:13", "conv-1")]


async def test_an_unreachable_gateway_is_a_message() -> None:
    pool = ClientPool("127.0.0.1:1")
    try:
        view = await Handlers(pool).documents(ALICE)
    finally:
        await pool.close()
    assert view.rows == []
    assert "cannot reach the gateway at 127&#46;0&#46;0&#46;1&#58;1" in view.notice


def test_build_app_wires_components_without_calling_the_gateway() -> None:
    import gradio as gr

    made: list[tuple[str | None, str | None]] = []

    def factory(user: str | None, token: str | None) -> GatewayClient:
        made.append((user, token))
        return GatewayClient("127.0.0.1:1", user=user)

    app = build_app(factory, default_user_id="alice")
    assert isinstance(app, gr.Blocks)
    assert made == []
    names = {dep.get("api_name") for dep in app.config["dependencies"]}
    assert {"chat", "stop", "upload", "documents", "delete_document", "conversations", "resume"} <= names
    [chatbot] = [block for block in app.blocks.values() if isinstance(block, gr.Chatbot)]
    messages: list[Any] = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "assistant", "content": "refs", "metadata": {"title": "References (1)", "status": "done"}},
    ]
    shown = chatbot.postprocess(messages)
    assert [m.metadata for m in shown.root] == [None, None, {"title": "References (1)", "status": "done"}]
    with pytest.raises(ValueError, match="auth_mode"):
        build_app(factory, auth_mode="basic")
