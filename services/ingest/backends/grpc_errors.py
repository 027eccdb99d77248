"""Turn a failed call to a peer service into the domain error that fits it."""

from __future__ import annotations

import grpc
import grpc.aio

from services.common import errors

_BY_CODE: dict[grpc.StatusCode, type[errors.RagchatError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.CANCELLED: errors.Cancelled,
}


def peer_error(error: grpc.aio.AioRpcError, peer: str, address: str) -> errors.RagchatError:
    """``error`` from the ``peer`` service at ``address`` as a domain error with an actionable message."""
    code = error.code()
    details = error.details() or code.name
    if code in _BY_CODE:
        return _BY_CODE[code](f"{peer} service: {details}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return errors.Unavailable(f"the {peer} service at {address} is unavailable ({details}); is it running?")
    return errors.Unavailable(f"the {peer} service at {address} failed ({code.name}: {details})")
