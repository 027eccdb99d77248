"""``python -m services.retrieval``: serve RetrievalService until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from services.common.config import Env
from services.common.logging import setup_logging
from services.common.server import serve_until_signalled
from services.retrieval.config import RetrievalConfig
from services.retrieval.server import build_app


def main() -> None:
    config = RetrievalConfig.from_env(Env())
    setup_logging("retrieval", config.server.log_level)
    asyncio.run(serve_until_signalled(build_app(config), config.server))


if __name__ == "__main__":
    main()
