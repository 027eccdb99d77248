"""``python -m ui.web`` as a process, driven over HTTP with gradio_client against the fake gateway."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ui.fake_gateway import RunningGateway, fake_gateway_server
from ui.supervisor import SuitePorts

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, RunningGateway]]:
    with fake_gateway_server() as gateway:
        port = SuitePorts.free().ui
        env = dict(
            os.environ,
            GATEWAY_ADDR=gateway.target,
            UI_PORT=str(port),
            RAGCHAT_USER="alice",
            GRADIO_ANALYTICS_ENABLED="False",
            GRADIO_TEMP_DIR=str(tmp_path / "gradio"),
        )
        log = (tmp_path / "web.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "ui.web"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError((tmp_path / "web.log").read_text()) from None
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}/", gateway
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0, "SIGTERM closes the app cleanly"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()


def texts(messages: list[dict[str, Any]]) -> list[str]:
    return ["".join(part["text"] for part in m["content"]) for m in messages]


def test_the_served_app_chats_uploads_and_lists(web: tuple[str, RunningGateway], tmp_path: Path) -> None:
    from gradio_client import Client

    url, gateway = web
    client = Client(url, verbose=False)
    try:
        check_app(client, gateway, tmp_path)
    finally:
        client.close()


def check_app(client: Any, gateway: RunningGateway, tmp_path: Path) -> None:
    from gradio_client import handle_file

    assert {"/chat", "/stop", "/upload", "/documents", "/delete_document", "/new_conversation", "/resume"} <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    )

    history, box = client.predict("Where do alpacas live?", [], "alice", "", True, True, 5, True, api_name="/chat")
    assert texts(history)[:2] == ["Where do alpacas live?", "Alpacas live in herds [1]."]
    assert history[2]["metadata"]["title"] == "References (2)"
    assert box == ""

    note = tmp_path / "alpaca.txt"
    note.write_text("alpacas", encoding="utf-8")
    panel = client.predict([handle_file(str(note))], "alice", "", api_name="/upload")
    assert '<span class="rc-file-name">Alpaca</span> <code class="rc-file-id">doc&#45;1</code>' in panel

    table, _picker, notice = client.predict("alice", "", api_name="/documents")
    assert table["data"] == [["Alpaca", "ready", 2, "7 B", 3, "-", "doc-1"]]
    assert notice == ""
    assert set(gateway.fake.users("Chat") + gateway.fake.users("UploadDocument")) == {"alice"}
