"""The four real services in-process on port 0, each with its own data folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.config import Env
from services.common.server import GrpcServer
from services.gateway.config import GatewayConfig
from services.gateway.server import build_app as build_gateway
from services.generation.config import GenerationConfig
from services.generation.server import build_app as build_generation
from services.ingest.config import IngestConfig
from services.ingest.server import build_app as build_ingest
from services.retrieval.config import RetrievalConfig
from services.retrieval.server import build_app as build_retrieval


@dataclass
class Suite:
    servers: list[GrpcServer]
    gateway_config: GatewayConfig
    ports: dict[str, int]

    @property
    def gateway(self) -> str:
        return f"127.0.0.1:{self.ports['gateway']}"

    @property
    def retrieval(self) -> str:
        return f"127.0.0.1:{self.ports['retrieval']}"

    async def stop(self) -> None:
        for server in reversed(self.servers):
            await server.stop(0.5)


def _env(root: Path, name: str, **extra: str) -> Env:
    return Env({"PORT": "0", "DATA_DIR": str(root / name), "SHUTDOWN_GRACE_SECONDS": "1", **extra})


async def start_suite(root: Path, **gateway_env: str) -> Suite:
    """Retrieval, generation, ingest and the gateway (configured with ``gateway_env``)."""
    servers: list[GrpcServer] = []
    ports: dict[str, int] = {}
    try:
        retrieval_config = RetrievalConfig.from_env(_env(root, "retrieval"))
        servers.append(GrpcServer(build_retrieval(retrieval_config), retrieval_config.server))
        ports["retrieval"] = await servers[-1].start()
        generation_config = GenerationConfig.from_env(_env(root, "generation"))
        servers.append(GrpcServer(build_generation(generation_config), generation_config.server))
        ports["generation"] = await servers[-1].start()
        peers = {
            "RETRIEVAL_ADDR": f"127.0.0.1:{ports['retrieval']}",
            "GENERATION_ADDR": f"127.0.0.1:{ports['generation']}",
        }
        ingest_config = IngestConfig.from_env(_env(root, "ingest", INGEST_SUMMARIZE="false", **peers))
        servers.append(GrpcServer(build_ingest(ingest_config), ingest_config.server))
        ports["ingest"] = await servers[-1].start()
        gateway_config = GatewayConfig.from_env(
            _env(root, "gateway", INGEST_ADDR=f"127.0.0.1:{ports['ingest']}", **peers, **gateway_env)
        )
        servers.append(GrpcServer(build_gateway(gateway_config), gateway_config.server))
        ports["gateway"] = await servers[-1].start()
    except BaseException:
        for server in reversed(servers):
            await server.stop(0)
        raise
    return Suite(servers, gateway_config, ports)
