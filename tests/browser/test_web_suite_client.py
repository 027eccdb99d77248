"""The web app driven over HTTP with gradio_client, against the whole suite (real gateway and services)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import RunningSuite

pytestmark = pytest.mark.browser

QUESTION = "What does XYLayoutLM use Augmented XY Cut for?"
FOLLOW_UP = "And how is it evaluated?"


def text(message: dict[str, Any]) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def answers(messages: list[dict[str, Any]]) -> list[str]:
    return [text(m) for m in messages if m["role"] == "assistant" and not m.get("metadata")]


@pytest.fixture
def client(running_suite: RunningSuite) -> Iterator[Any]:
    from gradio_client import Client

    client = Client(running_suite.url, verbose=False)
    yield client
    client.close()


def chat(client: Any, question: str, history: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Every state of the chat while the turn streams, last one complete."""
    job = client.submit(question, history, "dave", "", True, True, 5, True, api_name="/chat")
    job.result(timeout=60)
    return [messages for messages, _box in job.outputs()]


def test_upload_ask_follow_up_and_manage_conversations(
    running_suite: RunningSuite, client: Any, documents: dict[str, Path]
) -> None:
    from gradio_client import handle_file

    panel = client.predict([handle_file(str(documents["paper"]))], "dave", "", api_name="/upload")
    assert '<div class="rc-file rc-file-done">' in panel
    assert "XYLayoutLM" in panel, "the document's summary is shown once it is ingested"

    table, _picker, notice = client.predict("dave", "", api_name="/documents")
    [row] = table["data"]
    assert row[:4] == ["arxiv-2203.06947", "ready", 10, "2.2 MB"]
    assert notice == ""

    states = chat(client, QUESTION, [])
    streamed = [answers(messages)[0] for messages in states if answers(messages)]
    assert len(set(streamed)) > 3, "the answer arrives in pieces"
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(streamed))
    final = states[-1]
    assert "Augmented XY Cut" in answers(final)[0]
    references = final[-1]
    assert references["metadata"]["title"].startswith("References (")
    assert "arxiv&#45;2203&#46;06947" in text(references) and "<mark>" in text(references)

    follow = chat(client, FOLLOW_UP, final)[-1]
    assert [text(m) for m in follow if m["role"] == "user"] == [QUESTION, FOLLOW_UP]
    searched = [m for m in follow if (m.get("metadata") or {}).get("title") == "Searched for"]
    assert searched and text(searched[0]).startswith(FOLLOW_UP + " ("), "the follow-up was condensed"
    assert len(answers(follow)) == 2

    # One conversation with both turns: listed, renamed, resumed, deleted.
    choices, notice = client.predict("dave", "", api_name="/conversations")
    [(label, conversation_id)] = [tuple(choice) for choice in choices["choices"]]
    assert label.startswith(QUESTION) and "2 turns" in label
    choices, notice = client.predict(conversation_id, "XY Cut notes", "dave", "", api_name="/rename_conversation")
    assert "Renamed to XY Cut notes" in notice
    messages, title, notice = client.predict(conversation_id, "dave", "", True, api_name="/resume")
    assert title == "XY Cut notes"
    assert [text(m) for m in messages if m["role"] == "user"] == [QUESTION, FOLLOW_UP]
    assert answers(messages) == answers(follow)
    choices, notice, *_ = client.predict(conversation_id, "dave", "", api_name="/delete_conversation")
    assert choices["choices"] == []
    assert "Conversation deleted" in notice
    assert [status for kind, status, _ in running_suite.calls("dave") if kind == "chat"] == ["OK", "OK"]
