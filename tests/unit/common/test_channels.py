"""Client channels: calls spread over every address a target resolves to (round_robin), the plain
``host:port`` and ``dns:///`` forms both work, and the UNAVAILABLE retry policy still applies."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import grpc.aio
import pytest

from services.common.channels import open_channel

METHOD = "/ragchat.test.Echo/Who"


class Backend:
    """A grpc.aio server whose one method answers with its name and counts the calls it served."""

    def __init__(self, name: str, *, fail_first: int = 0) -> None:
        self.name = name
        self.calls = 0
        self._fail_first = fail_first
        self.server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(self._who)
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("ragchat.test.Echo", {"Who": handler})]
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _who(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        if self.calls <= self._fail_first:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return self.name.encode()


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Awaitable[Backend]]]:
    started: list[Backend] = []

    async def start(name: str, **options: int) -> Backend:
        backend = Backend(name, **options)
        await backend.server.start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.server.stop(None)


async def who(channel: grpc.aio.Channel, calls: int) -> Counter[str]:
    method = channel.unary_unary(METHOD)
    answers: Counter[str] = Counter()
    for _ in range(calls):
        answers[(await method(b"", timeout=5)).decode()] += 1
    return answers


async def test_calls_are_spread_over_every_resolved_address(
    backends: Callable[..., Awaitable[Backend]],
) -> None:
    first, second = await backends("first"), await backends("second")
    target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
    channel = open_channel(target)
    try:
        await channel.channel_ready()
        await who(channel, 4)  # both subchannels have connected by now
        answers = await who(channel, 40)
    finally:
        await channel.close()
    assert set(answers) == {"first", "second"}, answers
    assert min(answers.values()) >= 15, f"round_robin should alternate, got {answers}"


async def test_a_default_channel_would_pin_one_backend(backends: Callable[..., Awaitable[Backend]]) -> None:
    """The control: without the load-balancing config (pick_first) every call goes to one server,
    which is what the test above exists to rule out."""
    first, second = await backends("first"), await backends("second")
    channel = grpc.aio.insecure_channel(f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}")
    try:
        answers = await who(channel, 20)
    finally:
        await channel.close()
    assert len(answers) == 1, answers


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "dns:///localhost:{port}"])
async def test_plain_and_dns_targets_reach_a_single_server(
    backends: Callable[..., Awaitable[Backend]], form: str
) -> None:
    only = await backends("only")
    channel = open_channel(form.format(port=only.port))
    try:
        assert await who(channel, 3) == Counter({"only": 3})
    finally:
        await channel.close()


async def test_unavailable_is_still_retried(backends: Callable[..., Awaitable[Backend]]) -> None:
    flaky = await backends("flaky", fail_first=2)
    channel = open_channel(f"dns:///127.0.0.1:{flaky.port}")
    try:
        assert await who(channel, 1) == Counter({"flaky": 1})
    finally:
        await channel.close()
    assert flaky.calls == 3  # two UNAVAILABLE attempts, then the answer
