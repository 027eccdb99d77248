"""Relay a blocking (boto3) stream to the event loop, one thread per call, with cancellation.

boto3 is synchronous: the call (with botocore's retries) and the reading of its event
stream block. :func:`relay_blocking` runs both in a dedicated thread (not the default
executor, whose few workers would serialise concurrent streams) and hands each item to the
event loop as soon as it is read (items already waiting when the consumer comes back for
the next one may be merged, e.g. answer tokens into one piece). When the consumer stops
(its client cancelled, the deadline passed, or the stream ended), the handle is shut down
from the loop: a read blocked in the thread wakes up at once and the connection closes,
so the model stops generating for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

H = TypeVar("H")
E = TypeVar("E")

_ITEM, _ERROR, _END = 0, 1, 2


class _Call(Generic[H]):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handle: H | None = None
        self.stopped = False


async def relay_blocking(
    open_call: Callable[[], H],
    read: Callable[[H], Iterator[E]],
    close: Callable[[H], None],
    *,
    name: str,
    merge: Callable[[list[E]], list[E]] | None = None,
) -> AsyncGenerator[E, None]:
    """Items of ``read(open_call())`` as they come; ``close(handle)`` when the consumer stops.

    ``merge``: when several items are already waiting, they are handed on as ``merge(items)``
    (which keeps their order); an item never waits for another.

    Exceptions of ``open_call`` or ``read`` are re-raised in the consumer, in order after the
    items read before them. ``close`` may be called twice (from the loop and the thread) and
    must be thread-safe: a shutdown of the connection.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    call: _Call[H] = _Call()

    def post(kind: int, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

    def work() -> None:
        handle: H | None = None
        try:
            handle = open_call()
            with call.lock:
                if call.stopped:
                    return
                call.handle = handle
            for item in read(handle):
                if call.stopped:
                    return
                post(_ITEM, item)
            post(_END, None)
        except BaseException as error:  # handed to the consumer, which re-raises it
            if not call.stopped:
                post(_ERROR, error)
        finally:
            if handle is not None:
                _close_quietly(close, handle, name)

    threading.Thread(target=work, name=f"relay-{name}", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == _ITEM:
                items = [value]
                while merge is not None and not queue.empty():
                    kind, value = queue.get_nowait()
                    if kind != _ITEM:
                        break
                    items.append(value)
                if merge is not None and len(items) > 1:
                    items = merge(items)
                for item in items:
                    yield item
                if kind == _ITEM:
                    continue
            if kind == _ERROR:
                raise value
            return
    finally:
        with call.lock:
            call.stopped = True
            handle = call.handle
        if handle is not None:
            _close_quietly(close, handle, name)


def _close_quietly(close: Callable[[H], None], handle: H, name: str) -> None:
    try:
        close(handle)
    except Exception:  # closing a broken connection may fail; there is nothing left to free
        log.debug("closing the %s stream failed", name, exc_info=True)


def shutdown_event_stream(stream: Any) -> None:
    """Shut down a botocore ``EventStream``'s connection, waking a read blocked in another thread.

    botocore's ``EventStream.close()`` only closes the response, which does not interrupt a
    ``recv`` in progress on Linux; urllib3's ``HTTPResponse.shutdown()`` does. botocore keeps
    the urllib3 response in ``_raw_stream`` (no public accessor).
    """
    raw = getattr(stream, "_raw_stream", None)
    shutdown = getattr(raw, "shutdown", None)
    if shutdown is not None:
        with contextlib.suppress(ValueError, RuntimeError, OSError):  # already released or closed
            shutdown()
    stream.close()
