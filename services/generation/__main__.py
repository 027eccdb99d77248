"""Entry point: ``python -m services.generation``."""

from __future__ import annotations

import asyncio

from services.common.config import ConfigError, Env
from services.common.logging import setup_logging
from services.common.server import serve_until_signalled
from services.generation.config import GenerationConfig
from services.generation.server import build_app


def main() -> None:
    try:
        config = GenerationConfig.from_env(Env())
    except ConfigError as error:
        raise SystemExit(f"generation: configuration error: {error}") from None
    setup_logging("generation", config.server.log_level)
    asyncio.run(serve_until_signalled(build_app(config), config.server))


if __name__ == "__main__":
    main()
