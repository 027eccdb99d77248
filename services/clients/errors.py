"""The one error type of the clients: a gRPC status name and the server's message."""

from __future__ import annotations

import grpc
import grpc.aio


class RagchatClientError(Exception):
    """A call failed; ``code`` is the gRPC status name (``NOT_FOUND``...), ``message`` the server's words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def client_error(error: grpc.RpcError) -> RagchatClientError:
    code: grpc.StatusCode = error.code()
    return RagchatClientError(code.name, error.details() or code.name)
