"""Make a bearer token for ``AUTH_MODE=static``.

``python -m services.gateway.tokens alice >> tokens.txt`` writes the line the gateway's
``AUTH_TOKENS_FILE`` needs (only the token's SHA-256 digest) to stdout and the token itself
to stderr, once: hand it to the user (``RAGCHAT_TOKEN``); it cannot be recovered from the file.
"""

from __future__ import annotations

import secrets
import sys

from services.gateway.auth import VALID_USER, token_digest


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not VALID_USER.match(argv[0]):
        sys.stderr.write("usage: python -m services.gateway.tokens <user>   (1-128 characters, no slashes)\n")
        return 2
    token = "rc_" + secrets.token_urlsafe(32)
    sys.stdout.write(f"sha256:{token_digest(token)} {argv[0]}\n")
    sys.stderr.write(f"token for {argv[0]} (shown once): {token}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
