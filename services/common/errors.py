"""Domain errors, free of gRPC. The server interceptor maps each to its status code.

Raise these from backends and services with a message a person can act on; anything else
that escapes a handler becomes INTERNAL with the request id, and is logged with its trace.
"""

from __future__ import annotations


class RagchatError(Exception):
    """Base of every error that has a precise gRPC status."""

    code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(RagchatError):
    code = "INVALID_ARGUMENT"


class NotFound(RagchatError):
    code = "NOT_FOUND"


class AlreadyExists(RagchatError):
    code = "ALREADY_EXISTS"


class PermissionDenied(RagchatError):
    code = "PERMISSION_DENIED"


class Unauthenticated(RagchatError):
    code = "UNAUTHENTICATED"


class ResourceExhausted(RagchatError):
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(RagchatError):
    code = "FAILED_PRECONDITION"


class Unavailable(RagchatError):
    code = "UNAVAILABLE"


class DeadlineExceeded(RagchatError):
    code = "DEADLINE_EXCEEDED"


class Cancelled(RagchatError):
    code = "CANCELLED"
