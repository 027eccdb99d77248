"""Two people on the web UI, with tokens (AUTH_MODE static and jwt), against the whole suite as
processes: neither session can see, download, search, delete, resume, rename or continue the
other's documents and conversations, and after the full session no token, key or secret of the
environment is in any service's log, the UI's log, the call log or any other file of the suite.

The sessions go through the served Gradio app with ``gradio_client`` (what a browser sends);
the gateway's RPCs are also called directly with bob's token on alice's ids, since a browser
can send any id. The generation service talks to a fake OpenAI-compatible model with an API
key, and AWS keys are set in every service's environment: secrets in use, which must never be
logged. Every service logs at debug level.
"""

from __future__ import annotations

import asyncio
import secrets
import string
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.clients.errors import RagchatClientError
from services.clients.gateway import GatewayClient
from services.gateway.auth import token_digest
from tests.reliability.reliability_corpus import documents, require_data
from tests.reliability.reliability_model import fake_model
from tests.reliability.reliability_suite import running_suite
from tests.unit.gateway.auth_helpers import jwt_env, rsa_key, token, write_jwks
from ui.web_handlers import Caller, ClientPool, Handlers

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Credentials:
    mode: str
    env: dict[str, str]
    alice: str
    bob: str
    forged: str  # looks right, must be refused


def static_credentials(folder: Path) -> Credentials:
    alice, bob = "rc_alice_" + secrets.token_hex(16), "rc_bob_" + secrets.token_hex(16)
    path = folder / "tokens.txt"
    path.write_text(f"sha256:{token_digest(alice)} alice\nsha256:{token_digest(bob)} bob\n")
    return Credentials(
        "static", {"AUTH_MODE": "static", "AUTH_TOKENS_FILE": str(path)}, alice, bob, "rc_alice_" + "0" * 32
    )


def jwt_credentials(folder: Path) -> Credentials:
    key, stranger = rsa_key(), rsa_key()  # the forged token is signed by a key the gateway does not trust
    env = jwt_env(write_jwks(folder / "jwks.json", key))
    return Credentials("jwt", env, token(key, sub="alice"), token(key, sub="bob"), token(stranger, sub="alice"))


def random_secret(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def aws_secrets() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + random_secret(string.ascii_uppercase + string.digits, 16),
        "AWS_SECRET_ACCESS_KEY": random_secret(string.ascii_letters + string.digits + "/+", 40),
        "AWS_SESSION_TOKEN": random_secret(string.ascii_letters + string.digits, 120),
    }


def text(message: dict[str, Any]) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def error_shown(notice: str) -> bool:
    return "rc-error" in notice and "Traceback" not in notice


def refused(client: Any, endpoint: str, *args: Any) -> str:
    """How the app refused a call: Gradio's own check (a value it did not offer this session) or
    the handler's error notice; empty when it was not refused."""
    from gradio_client.exceptions import AppError

    try:
        outputs = client.predict(*args, api_name=endpoint)
    except AppError as error:
        return "gradio: " + str(error) if "not in the list of choices" in str(error) else ""
    notices = [value for value in outputs if isinstance(value, str) and "rc-error" in value]
    return "handler: " + notices[0] if notices and "Traceback" not in notices[0] else ""


@dataclass
class SessionResult:
    alice_doc: str
    alice_conversation: str


def web_sessions(url: str, creds: Credentials, alice_file: Path, bob_file: Path) -> SessionResult:
    """Alice's and bob's browser sessions (blocking: run in a thread)."""
    from gradio_client import Client, handle_file

    alice, bob, intruder = (Client(url, verbose=False) for _ in range(3))
    try:
        # A forged token is refused, with a message and no trace.
        _, notice = intruder.predict("", creds.forged, api_name="/sign_in")
        assert error_shown(notice), notice

        # Alice: sign in, upload, ask, list.
        _, notice = alice.predict("", creds.alice, api_name="/sign_in")
        assert "rc-error" not in notice, notice
        panel = alice.predict([handle_file(str(alice_file))], "", creds.alice, api_name="/upload")
        assert "rc-file-done" in panel, panel
        table, _, _ = alice.predict("", creds.alice, api_name="/documents")
        [alice_row] = table["data"]
        alice_doc = str(alice_row[-1])
        history, _ = alice.predict(QUESTION, [], "", creds.alice, True, True, 5, True, api_name="/chat")
        assert history[-1]["metadata"]["title"].startswith("References"), history
        choices, _ = alice.predict("", creds.alice, api_name="/conversations")
        [(_, alice_conversation)] = [tuple(choice) for choice in choices["choices"]]

        # Bob: his own document; none of alice's anywhere he looks.
        bob.predict("", creds.bob, api_name="/sign_in")
        panel = bob.predict([handle_file(str(bob_file))], "", creds.bob, api_name="/upload")
        assert "rc-file-done" in panel, panel
        table, _, _ = bob.predict("", creds.bob, api_name="/documents")
        assert [row[-1] for row in table["data"]] != [alice_doc] and len(table["data"]) == 1
        choices, _ = bob.predict("", creds.bob, api_name="/conversations")
        assert choices["choices"] == []
        # Asking about alice's document: nothing of hers in the answer or its references.
        history, _ = bob.predict(QUESTION, [], "", creds.bob, True, True, 5, True, api_name="/chat")
        shown = "\n".join(text(m) for m in history if m["role"] == "assistant")
        assert alice_doc not in shown, shown
        assert not any(word in shown for word in ALICE_WORDS), shown

        # Bob's session sends alice's ids: the app refuses each (an id it never offered him).
        for endpoint, args in (
            ("/delete_document", (alice_doc, "", creds.bob)),
            ("/resume", (alice_conversation, "", creds.bob, True)),
            ("/rename_conversation", (alice_conversation, "mine", "", creds.bob)),
            ("/delete_conversation", (alice_conversation, "", creds.bob)),
        ):
            refusal = refused(bob, endpoint, *args)
            assert refusal, f"{endpoint} with alice's id was not refused"
        # Bob typing alice's name in a session (the user box) changes nothing in token mode.
        table, _, _ = bob.predict("alice", creds.bob, api_name="/documents")
        assert alice_doc not in {row[-1] for row in table["data"]}

        # Alice still has everything.
        table, _, _ = alice.predict("", creds.alice, api_name="/documents")
        assert [row[-1] for row in table["data"]] == [alice_doc]
        messages, _, notice = alice.predict(alice_conversation, "", creds.alice, True, api_name="/resume")
        assert [text(m) for m in messages if m["role"] == "user"] == [QUESTION], (messages, notice)
        return SessionResult(alice_doc, alice_conversation)
    finally:
        for client in (alice, bob, intruder):
            client.close()


async def handler_attempts(target: str, creds: Credentials, result: SessionResult) -> None:
    """Below Gradio's check, the handlers themselves, acting for bob's session, on alice's ids."""
    pool = ClientPool(target)
    handlers = Handlers(client_factory=pool, auth_mode=creds.mode)
    bob = Caller(token=creds.bob)
    try:
        view = await handlers.delete_document(result.alice_doc, bob)
        assert error_shown(view.notice) and "no document" in view.notice, view.notice
        resumed = await handlers.resume(result.alice_conversation, bob, references=True)
        assert resumed.messages == [] and error_shown(resumed.notice), resumed
        renamed = await handlers.rename(result.alice_conversation, "mine", bob)
        assert error_shown(renamed.notice), renamed.notice
        deleted = await handlers.delete_conversation(result.alice_conversation, bob)
        assert error_shown(deleted.notice), deleted.notice
        updates = [u async for u in handlers.chat("And the code?", [], result.alice_conversation, bob)]
        messages, _, _ = updates[-1]
        assert error_shown(text(messages[-1])) and "no conversation" in text(messages[-1]), messages
        assert not any(word in text(m) for m in messages for word in ALICE_WORDS)
        documents_view = await handlers.documents(bob)
        assert result.alice_doc not in {choice for _, choice in documents_view.choices}
    finally:
        await pool.close()


async def gateway_attempts(target: str, creds: Credentials, result: SessionResult) -> None:
    """Bob's token on alice's ids, straight to the gateway: the same answer as an unknown id."""
    bob = GatewayClient(target, token=creds.bob)
    unknown_doc, unknown_conversation = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        for call, foreign, unknown in (
            (bob.get_document, result.alice_doc, unknown_doc),  # the document, its summary: the "download"
            (bob.delete_document, result.alice_doc, unknown_doc),
            (bob.get_conversation, result.alice_conversation, unknown_conversation),
            (bob.delete_conversation, result.alice_conversation, unknown_conversation),
        ):
            outcomes = []
            for ref in (foreign, unknown):
                with pytest.raises(RagchatClientError) as caught:
                    await call(ref)
                outcomes.append((caught.value.code, caught.value.message.replace(ref, "<id>")))
            assert outcomes[0] == outcomes[1] and outcomes[0][0] == "NOT_FOUND", outcomes
        # Passages: naming alice's document explicitly finds nothing.
        assert await bob.search(QUESTION, doc_ids=[result.alice_doc], top_k=100) == []
        assert all(p.doc_id != result.alice_doc for p in await bob.search(QUESTION, top_k=100))
    finally:
        await bob.close()
    forged = GatewayClient(target, user="alice", token=creds.forged)
    try:
        with pytest.raises(RagchatClientError) as caught:
            await forged.list_documents()
        assert caught.value.code == "UNAUTHENTICATED"
    finally:
        await forged.close()


# Words only alice's document holds (not in the question).
ALICE_WORDS = ("4417", "old mill", "Only alice")
QUESTION = "What does the quarzite ledger say about the vault?"


def alice_document(folder: Path) -> Path:
    path = folder / "alice-ledger.md"
    path.write_text(
        "# The quarzite ledger\n\nThe quarzite ledger says the vault under the old mill opens with code 4417.\n\n"
        "Only alice keeps the quarzite ledger.\n",
        encoding="utf-8",
    )
    return path


def bob_document(folder: Path) -> Path:
    path = folder / "bob-notes.md"
    path.write_bytes(documents(7, 1, per_document=3, prefix="bob")[0].data)
    return path


def files_under(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("mode", ["static", "jwt"])
@pytest.mark.timeout(300)
async def test_sessions_are_isolated_and_no_secret_is_written_anywhere(mode: str, tmp_path: Path) -> None:
    require_data()
    creds = static_credentials(tmp_path) if mode == "static" else jwt_credentials(tmp_path)
    keys = aws_secrets()
    api_key = "sk-" + secrets.token_hex(24)
    home = tmp_path / "home"
    async with fake_model(api_key, pause=0.0) as model:
        env = {**creds.env, **keys, **model.env(), "LOG_LEVEL": "debug", "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
        async with running_suite(home, env, with_ui=True) as running:
            result = await asyncio.to_thread(
                web_sessions, running.ui_url, creds, alice_document(tmp_path), bob_document(tmp_path)
            )
            await handler_attempts(running.gateway, creds, result)
            await gateway_attempts(running.gateway, creds, result)
            logs = running.logs()
        assert model.requests and all(r.headers.get("authorization") == f"Bearer {api_key}" for r in model.requests), (
            "the model's API key was in use"
        )

    assert set(logs) == {"gateway", "ingest", "retrieval", "generation", "ui"}
    assert '"level": "debug"' in "".join(logs.values()), "the services logged at debug level"
    assert "rpc" in logs["gateway"], "the gateway's access log was written"
    secret_values = {
        "alice's token": creds.alice,
        "bob's token": creds.bob,
        "the forged token": creds.forged,
        "the model's API key": api_key,
        **keys,
    }
    # JWTs: their signature part alone must not leak either.
    if creds.mode == "jwt":
        secret_values |= {
            f"{who}'s token signature": value.rsplit(".", 1)[1]
            for who, value in (("alice", creds.alice), ("bob", creds.bob))
        }
    leaks = [
        f"{name} in {path.relative_to(home)}"
        for path, content in files_under(home).items()
        for name, value in secret_values.items()
        if value.encode() in content
    ]
    assert not leaks, leaks
