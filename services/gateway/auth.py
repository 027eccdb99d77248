"""Who is calling. AUTH_MODE=none trusts the x-ragchat-user metadata (local, single tenant),
as the original trusted its typed user id; everything is still scoped per user. Token modes
(static, jwt) plug in here without changing any RPC.
"""

from __future__ import annotations

import re
from typing import Any

from services.common.errors import InvalidArgument, Unauthenticated
from services.common.interceptors import metadata_value

USER_KEY = "x-ragchat-user"
_VALID_USER = re.compile(r"^[^\x00-\x1f\x7f/\\]{1,128}$")


class Authenticator:
    def __init__(self, mode: str) -> None:
        if mode != "none":
            raise ValueError(f"unsupported AUTH_MODE {mode!r}")
        self.mode = mode

    def user(self, metadata: Any) -> str:
        user = (metadata_value(metadata, USER_KEY) or "").strip()
        if not user:
            raise Unauthenticated(
                f"no user: send the {USER_KEY} metadata (the CLI's --user, or RAGCHAT_USER) with AUTH_MODE=none"
            )
        if not _VALID_USER.match(user):
            raise InvalidArgument(f"{USER_KEY} must be 1-128 characters without control characters or slashes")
        return user
