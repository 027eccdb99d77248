"""``python -m services.ingest``: run the ingest service until SIGTERM/SIGINT.

Imports happen inside :func:`main`, so that the extraction sandbox's "spawn" children, which
re-import this module as ``__mp_main__``, do not load gRPC.
"""

from __future__ import annotations


def main() -> None:
    import asyncio

    from services.common.config import Env
    from services.common.logging import setup_logging
    from services.common.server import serve_until_signalled
    from services.ingest.config import IngestConfig
    from services.ingest.server import build_app

    config = IngestConfig.from_env(Env())
    setup_logging("ingest", config.server.log_level)
    asyncio.run(serve_until_signalled(build_app(config), config.server))


if __name__ == "__main__":
    main()
