"""relay_blocking: a blocking stream read in its own thread, its items handed to the loop in
order; items already waiting are merged, and none waits for another."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from services.generation.backends.llm import ModelDelta, ModelEvent, ModelFinish, join_deltas, merge_deltas
from services.generation.backends.threaded import relay_blocking


def test_merge_deltas_joins_each_run_and_keeps_the_order() -> None:
    events: list[ModelEvent] = [ModelDelta("A"), ModelDelta(" b", 2), ModelFinish("stop"), ModelDelta("c")]
    assert merge_deltas(events) == [ModelDelta("A b", 3), ModelFinish("stop"), ModelDelta("c")]
    assert join_deltas([]) == [] and join_deltas([ModelDelta("x")]) == [ModelDelta("x")]


async def test_items_waiting_together_are_merged() -> None:
    got_first, all_read = threading.Event(), threading.Event()

    def read(_: None) -> Iterator[ModelDelta]:
        yield ModelDelta("t0 ")
        assert got_first.wait(5)
        for i in range(1, 5):
            yield ModelDelta(f"t{i} ")
        all_read.set()

    stream = relay_blocking(lambda: None, read, lambda _: None, name="test", merge=join_deltas)
    first = await anext(stream)  # the first item alone: it did not wait for the others
    got_first.set()
    await asyncio.to_thread(all_read.wait, 5)
    await asyncio.sleep(0.05)  # the loop has queued the rest
    rest = [delta async for delta in stream]
    assert first == ModelDelta("t0 ")
    assert rest == [ModelDelta("t1 t2 t3 t4 ", 4)], "four items waiting together come as one piece"


async def test_an_item_read_alone_is_handed_on_at_once() -> None:
    handed_on = [threading.Event() for _ in range(3)]

    def read(_: None) -> Iterator[ModelDelta]:
        for i in range(3):
            yield ModelDelta(str(i))
            assert handed_on[i].wait(5), "the consumer never got the item"  # the next waits for it

    pieces: list[str] = []
    async for delta in relay_blocking(lambda: None, read, lambda _: None, name="test", merge=join_deltas):
        pieces.append(delta.text)
        handed_on[len(pieces) - 1].set()
    assert pieces == ["0", "1", "2"]


async def test_an_error_after_waiting_items_comes_after_them() -> None:
    def read(_: None) -> Iterator[ModelDelta]:
        yield ModelDelta("One")
        yield ModelDelta(" two")
        raise RuntimeError("stream broke")

    received: list[str] = []

    async def consume() -> None:
        async for delta in relay_blocking(lambda: None, read, lambda _: None, name="test", merge=join_deltas):
            received.append(delta.text)
            await asyncio.sleep(0.05)  # the rest, and the error, queue up meanwhile

    with pytest.raises(RuntimeError, match="stream broke"):
        await consume()
    assert "".join(received) == "One two"
