"""Authentication: AUTH_MODE none, static (hashed tokens) and jwt (JWKS file or URL, Cognito)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from services.common.config import ConfigError, Env
from services.common.errors import InvalidArgument, Unauthenticated
from services.gateway.auth import (
    JwtAuthenticator,
    StaticTokenAuthenticator,
    TrustedUserAuthenticator,
    load_token_digests,
    make_authenticator,
    token_digest,
)
from services.gateway.config import GatewayConfig
from services.gateway.tokens import main as make_token
from tests.unit.gateway.auth_helpers import CLIENT_ID, ISSUER, ec_key, jwks, jwt_env, rsa_key, token, write_jwks


def bearer(value: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {value}")]


def config(**env: str) -> GatewayConfig:
    return GatewayConfig.from_env(Env({"DATA_DIR": "/nonexistent", **env}))


# -- none ----------------------------------------------------------------------------------


async def test_none_trusts_the_user_metadata_and_checks_it() -> None:
    auth = TrustedUserAuthenticator()
    assert await auth.authenticate([("x-ragchat-user", " alice ")]) == "alice"
    with pytest.raises(Unauthenticated, match="x-ragchat-user"):
        await auth.authenticate([])
    with pytest.raises(InvalidArgument, match="slashes"):
        await auth.authenticate([("x-ragchat-user", "../bob")])


# -- static --------------------------------------------------------------------------------


def tokens_file(tmp_path: Path, **users: str) -> Path:
    path = tmp_path / "tokens.txt"
    lines = ["# ragchat tokens", *(f"sha256:{token_digest(t)} {user}" for user, t in users.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_static_tokens_map_to_their_users_and_the_file_holds_no_token(tmp_path: Path) -> None:
    path = tokens_file(tmp_path, alice="tok-alice-1", bob="tok-bob-2")
    auth = make_authenticator(config(AUTH_MODE="static", AUTH_TOKENS_FILE=str(path)))
    assert await auth.authenticate(bearer("tok-alice-1")) == "alice"
    assert await auth.authenticate(bearer("tok-bob-2")) == "bob"
    assert "tok-alice-1" not in path.read_text()
    # The user metadata is not trusted in token modes.
    assert await auth.authenticate([*bearer("tok-bob-2"), ("x-ragchat-user", "alice")]) == "bob"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([], "missing credentials"),
        ([("authorization", "Basic dXNlcjpwYXNz")], "malformed"),
        ([("authorization", "Bearer ")], "missing credentials|malformed"),
        (bearer("tok-mallory"), "not one of this gateway's tokens"),
        ([("x-ragchat-user", "alice")], "missing credentials"),
    ],
)
async def test_static_rejects_missing_and_unknown_tokens(tmp_path: Path, metadata, message) -> None:  # type: ignore[no-untyped-def]
    auth = StaticTokenAuthenticator(load_token_digests(tokens_file(tmp_path, alice="tok-alice-1")))
    with pytest.raises(Unauthenticated, match=message):
        await auth.authenticate(metadata)


def test_static_configuration_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AUTH_TOKENS_FILE"):
        config(AUTH_MODE="static")
    with pytest.raises(ConfigError, match="cannot be read"):
        make_authenticator(config(AUTH_MODE="static", AUTH_TOKENS_FILE=str(tmp_path / "missing.txt")))
    plain = tmp_path / "plain.txt"
    plain.write_text("tok-alice-1 alice\n")
    with pytest.raises(ConfigError, match=r"line 1.*sha256"):
        load_token_digests(plain)


def test_token_maker_writes_only_the_digest(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert make_token(["carol"]) == 0
    out, err = capsys.readouterr()
    issued = err.rsplit(" ", 1)[-1].strip()
    path = tmp_path / "tokens.txt"
    path.write_text(out)
    assert issued not in out
    assert load_token_digests(path) == [(bytes.fromhex(token_digest(issued)), "carol")]
    assert make_token(["a/b"]) == 2


# -- jwt -----------------------------------------------------------------------------------


async def test_jwt_rs256_and_es256_tokens_are_verified(tmp_path: Path) -> None:
    rsa, ec = rsa_key(), ec_key()
    auth = make_authenticator(config(**jwt_env(write_jwks(tmp_path / "jwks.json", rsa, ec))))
    assert await auth.authenticate(bearer(token(rsa))) == "alice"
    assert await auth.authenticate(bearer(token(ec, sub="bob"))) == "bob"


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
        ({"iss": "https://evil.example"}, "not issued by"),
        ({"aud": "another-app"}, "audience"),
        ({"exp": None}, "'exp'"),
        ({"sub": None}, "'sub'"),
        ({"sub": "../etc"}, "not a valid user id"),
    ],
)
async def test_jwt_claims_are_checked(tmp_path: Path, claims, message) -> None:  # type: ignore[no-untyped-def]
    key = rsa_key()
    auth = make_authenticator(config(**jwt_env(write_jwks(tmp_path / "jwks.json", key))))
    with pytest.raises(Unauthenticated, match=message):
        await auth.authenticate(bearer(token(key, **claims)))


async def test_jwt_rejects_forged_signatures_symmetric_and_unsigned_tokens(tmp_path: Path) -> None:
    key, forger = rsa_key(), rsa_key()
    auth = make_authenticator(config(**jwt_env(write_jwks(tmp_path / "jwks.json", key))))
    with pytest.raises(Unauthenticated, match="signature"):
        await auth.authenticate(bearer(token(forger, kid=key.kid)))
    claims = {"sub": "alice", "iss": ISSUER, "aud": CLIENT_ID, "exp": int(time.time()) + 60}
    hs = jwt.encode(claims, "x" * 32, algorithm="HS256", headers={"kid": key.kid})
    with pytest.raises(Unauthenticated, match="algorithm 'HS256' is not accepted"):
        await auth.authenticate(bearer(hs))
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": key.kid})
    with pytest.raises(Unauthenticated, match="algorithm 'none' is not accepted"):
        await auth.authenticate(bearer(unsigned))
    with pytest.raises(Unauthenticated, match="not a JWT"):
        await auth.authenticate(bearer("not-a-jwt"))
    ec_as_rsa = token(ec_key(), kid=key.kid)  # an ES256 token naming the RSA key
    with pytest.raises(Unauthenticated, match="does not match its signing key"):
        await auth.authenticate(bearer(ec_as_rsa))


async def test_cognito_access_tokens_use_client_id_and_token_use_can_be_required(tmp_path: Path) -> None:
    key = rsa_key()
    path = write_jwks(tmp_path / "jwks.json", key)
    access = token(key, aud=None, client_id=CLIENT_ID, token_use="access", username="alice-name")
    auth = make_authenticator(config(**jwt_env(path)))
    assert await auth.authenticate(bearer(access)) == "alice"
    wrong_client = token(key, aud=None, client_id="other-app", token_use="access")
    with pytest.raises(Unauthenticated, match="audience"):
        await auth.authenticate(bearer(wrong_client))
    # client_id counts only for access tokens: an ID token must carry aud.
    with pytest.raises(Unauthenticated, match="audience"):
        await auth.authenticate(bearer(token(key, aud=None, client_id=CLIENT_ID)))

    access_only = make_authenticator(config(**jwt_env(path, JWT_TOKEN_USE="access", JWT_USER_CLAIM="username")))
    assert await access_only.authenticate(bearer(access)) == "alice-name"
    with pytest.raises(Unauthenticated, match="access token is required"):
        await access_only.authenticate(bearer(token(key)))


async def test_unknown_key_id_refreshes_the_keys_but_not_more_often_than_allowed(tmp_path: Path) -> None:
    old, new = rsa_key("old"), rsa_key("new")
    path = write_jwks(tmp_path / "jwks.json", old)
    auth = make_authenticator(config(**jwt_env(path, JWKS_MIN_REFRESH_SECONDS="3600")))
    assert await auth.authenticate(bearer(token(old))) == "alice"
    write_jwks(path, old, new)  # the issuer rotates its keys
    with pytest.raises(Unauthenticated, match="key this gateway does not know"):
        await auth.authenticate(bearer(token(new)))  # refreshed less than an hour ago: not re-read

    eager = make_authenticator(config(**jwt_env(write_jwks(tmp_path / "eager.json", old))))
    assert await eager.authenticate(bearer(token(old))) == "alice"
    write_jwks(tmp_path / "eager.json", old, new)
    assert await eager.authenticate(bearer(token(new, sub="bob"))) == "bob"


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, list[str], dict[str, object]]]:
    """An HTTP server that serves a JWKS document and counts its requests."""
    requests: list[str] = []
    document: dict[str, object] = {"keys": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json", requests, document
    server.shutdown()
    server.server_close()


async def test_jwks_url_is_fetched_once_and_cached(jwks_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, requests, document = jwks_server
    key = ec_key()
    document.update(jwks(key))
    env = {**jwt_env(tmp_path / "unused.json"), "JWT_JWKS_URL": url, "JWKS_MIN_REFRESH_SECONDS": "60"}
    del env["JWT_JWKS_FILE"]
    auth = make_authenticator(config(**env))
    assert isinstance(auth, JwtAuthenticator)
    for _ in range(5):
        assert await auth.authenticate(bearer(token(key))) == "alice"
    with pytest.raises(Unauthenticated, match="does not know"):
        await auth.authenticate(bearer(token(rsa_key("unknown"))))
    assert requests == ["/.well-known/jwks.json"], "one fetch: cached, and an unknown kid is rate limited"


def test_jwt_configuration_errors_name_the_variables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="JWT_JWKS_FILE or JWT_JWKS_URL"):
        config(AUTH_MODE="jwt", JWT_ISSUER=ISSUER, JWT_AUDIENCE=CLIENT_ID)
    with pytest.raises(ConfigError, match="JWT_AUDIENCE"):
        config(AUTH_MODE="jwt", JWT_JWKS_FILE="/x", JWT_ISSUER=ISSUER)
    with pytest.raises(ConfigError, match="JWT_ISSUER"):
        config(AUTH_MODE="jwt", JWT_JWKS_FILE="/x", JWT_AUDIENCE=CLIENT_ID)
    with pytest.raises(ConfigError, match="JWT_ALGORITHMS"):
        config(**jwt_env(tmp_path / "j.json", JWT_ALGORITHMS="HS256"))
