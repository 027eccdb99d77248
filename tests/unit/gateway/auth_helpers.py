"""Signing keys, JWKS documents and tokens for the gateway's authentication tests."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_TESTPOOL"
CLIENT_ID = "app-client-1"


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.algorithms.RSAAlgorithm if self.algorithm.startswith("RS") else jwt.algorithms.ECAlgorithm
        public = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "alg": self.algorithm, "use": "sig"}


def rsa_key(kid: str = "rsa-1") -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str = "ec-1") -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [key.jwk() for key in keys]}


def write_jwks(path: Path, *keys: SigningKey) -> Path:
    path.write_text(json.dumps(jwks(*keys)))
    return path


def token(key: SigningKey, *, kid: str | None = None, **claims: Any) -> str:
    """A Cognito-style ID token for ``sub`` (override any claim; None removes it)."""
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "token_use": "id",
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    values = {k: v for k, v in values.items() if v is not None}
    return jwt.encode(values, key.private, algorithm=key.algorithm, headers={"kid": kid or key.kid})


def jwt_env(jwks_file: Path, **extra: str) -> dict[str, str]:
    return {
        "AUTH_MODE": "jwt",
        "JWT_JWKS_FILE": str(jwks_file),
        "JWT_ISSUER": ISSUER,
        "JWT_AUDIENCE": CLIENT_ID,
        "JWKS_MIN_REFRESH_SECONDS": "0",
        **extra,
    }
