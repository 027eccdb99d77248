"""A fake OpenAI-compatible model server for the suite (``GENERATION_BACKEND=openai``).

It is the generation tests' :class:`FakeHttpServer` speaking server-sent events (their frame
helpers), running on the test's event loop. It records every request and streams a cited
answer a token at a time, ``pause`` seconds apart, like a real model; a chat answer quotes the
start of the first document passage and cites it as [1], a summary request gets a short
summary. Slow enough streams make a kill land in the middle of an answer.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from tests.integration.generation.generation_fakes import Exchange, FakeHttpServer, Request
from tests.integration.generation.test_generation_openai_stream import SSE_HEADERS, chunk, sse, usage

MODEL = "fake-llama"
_PASSAGE = re.compile(r'<document n="1"[^>]*>\n(.*?)\n</document>', re.DOTALL)


@dataclass
class FakeModel:
    server: FakeHttpServer
    api_key: str

    @property
    def requests(self) -> list[Request]:
        return self.server.requests

    def env(self) -> dict[str, str]:
        """The generation service's settings for this model."""
        return {
            "GENERATION_BACKEND": "openai",
            "OPENAI_BASE_URL": f"{self.server.url}/v1",
            "OPENAI_MODEL": MODEL,
            "OPENAI_API_KEY": self.api_key,
        }


def messages(request: Request) -> list[dict[str, Any]]:
    body = request.json()
    found: list[dict[str, Any]] = body["messages"]
    return found


def answer_words(request: Request, words: int) -> list[str]:
    """What the fake model says: a cited quote of the first passage, or a summary."""
    user = messages(request)[-1]["content"]
    passage = _PASSAGE.search(user)
    if passage is None:
        return ["A", " short", " summary", " of", " the", " document."]
    quoted = passage.group(1).split()[:words]
    return ["According", " to", " your", " documents,", *(" " + w for w in quoted), " [1]."]


@contextlib.asynccontextmanager
async def fake_model(api_key: str, *, pause: float = 0.02, words: int = 20) -> AsyncIterator[FakeModel]:
    async def handler(exchange: Exchange) -> None:
        pieces = answer_words(exchange.request, words)
        frames = [chunk(piece) for piece in pieces] + [chunk(None, "stop"), usage(100, len(pieces)), sse("[DONE]")]
        await exchange.stream(200, SSE_HEADERS, frames, pause=pause)

    async with FakeHttpServer(handler) as server:
        yield FakeModel(server, api_key)
