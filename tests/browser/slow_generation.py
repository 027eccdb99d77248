"""``python -m tests.browser.slow_generation``: the real generation service, with answers paced like a model.

The extractive backend answers in milliseconds; a person (and a browser test) cannot press
Stop in that time. This wraps it so every answer token arrives ``SLOW_TOKEN_SECONDS`` after
the previous one (summaries are not slowed), and counts the answers that were abandoned
midway in its log, so a test can see that Stop reached the generation service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence

from services.common.config import ConfigError, Env
from services.common.logging import setup_logging
from services.common.server import serve_until_signalled
from services.generation.backends import GenerationEvent, GenerationInput, GenerationParams, Generator, TokenEvent
from services.generation.config import GenerationConfig
from services.generation.server import build_app, make_generator

log = logging.getLogger(__name__)


class PacedGenerator:
    """A :class:`Generator` that delays each answer token of another one."""

    def __init__(self, inner: Generator, token_seconds: float) -> None:
        self.name = f"paced-{inner.name}"
        self._inner = inner
        self._delay = token_seconds

    async def start(self) -> None:
        await self._inner.start()

    async def close(self) -> None:
        await self._inner.close()

    async def generate(self, inp: GenerationInput) -> AsyncGenerator[GenerationEvent, None]:
        stream = self._inner.generate(inp)
        finished = False
        try:
            async for event in stream:
                if isinstance(event, TokenEvent):
                    await asyncio.sleep(self._delay)
                yield event
            finished = True
        finally:
            await stream.aclose()
            if not finished:
                log.info("answer abandoned midway", extra={"question": inp.question})

    def summarize(
        self, title: str, sections: Sequence[str], language: str, params: GenerationParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        return self._inner.summarize(title, sections, language, params)


def main() -> None:
    env = Env()
    try:
        config = GenerationConfig.from_env(env)
        delay = env.real("SLOW_TOKEN_SECONDS", 0.04, minimum=0.0, maximum=5.0)
    except ConfigError as error:
        raise SystemExit(f"generation: configuration error: {error}") from None
    setup_logging("generation", config.server.log_level)
    generator = PacedGenerator(make_generator(config), delay)
    asyncio.run(serve_until_signalled(build_app(config, generator=generator), config.server))


if __name__ == "__main__":
    main()
