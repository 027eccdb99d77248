"""Sign-in of the web app against the real gateway in token mode (AUTH_MODE=static): a good token
signs in and acts as its user, a bad or missing one gets a readable message, never a trace."""

from __future__ import annotations

import uuid
from pathlib import Path

from services.gateway.auth import token_digest
from tests.integration.gateway.suite import start_suite
from ui.web_handlers import Caller, ClientPool, Handlers


async def test_token_sign_in_against_the_real_gateway(tmp_path: Path) -> None:
    tokens = {"alice": "rc_alice_" + uuid.uuid4().hex, "bob": "rc_bob_" + uuid.uuid4().hex}
    path = tmp_path / "tokens.txt"
    path.write_text("".join(f"sha256:{token_digest(t)} {u}\n" for u, t in tokens.items()))
    suite = await start_suite(tmp_path, AUTH_MODE="static", AUTH_TOKENS_FILE=str(path))
    pool = ClientPool(suite.gateway)
    handlers = Handlers(client_factory=pool, auth_mode="static")
    try:
        alice = Caller(token=tokens["alice"])
        signed = await handlers.sign_in(alice)
        assert "Signed in" in signed.notice
        assert "rc-note" in signed.notice

        forged = await handlers.sign_in(Caller(token="rc_nobody_" + uuid.uuid4().hex))
        assert "rc-error" in forged.notice
        assert "Traceback" not in forged.notice
        missing = await handlers.sign_in(Caller(user="alice"))
        assert "rc-error" in missing.notice, "in token mode a user id alone is not enough"

        # Signed in, alice's turn is stored under her identity: her conversation list shows it,
        # bob's (another token) does not.
        updates = [u async for u in handlers.chat("What is in my documents?", [], "", alice)]
        conversation_id = updates[-1][1]
        assert conversation_id
        assert conversation_id in {value for _, value in (await handlers.conversations(alice)).choices}
        bobs = await handlers.conversations(Caller(token=tokens["bob"]))
        assert conversation_id not in {value for _, value in bobs.choices}
    finally:
        await pool.close()
        await suite.stop()
