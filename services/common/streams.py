"""Telling a finished client stream from a cancelled one."""

from __future__ import annotations

import grpc.aio


async def client_cancelled(context: grpc.aio.ServicerContext) -> bool:
    """Whether the client cancelled the call whose request stream just ended.

    grpc.aio ends the request iterator the same way for a completed stream (the client
    half-closed) and a cancelled one; the cancellation reaches the handler only later, as
    asyncio cancellation, possibly after work has been committed in a thread. Sending the
    initial metadata tells them apart now: it fails (``ExecuteBatchError``, an
    ``InternalError``) on a cancelled call and succeeds when the client awaits the response.
    Call it once, after the last request message and before committing anything.
    """
    try:
        await context.send_initial_metadata(())
    except grpc.aio.InternalError:
        return True
    return False
