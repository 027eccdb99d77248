"""Retrieval service configuration, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.config import ConfigError, Env, ServerConfig, data_dir

DEFAULT_PORT = 50053
AVAILABLE_BACKENDS = ("local",)
MAX_TOP_K = 100


@dataclass(frozen=True)
class RetrievalConfig:
    server: ServerConfig
    # Folder of the local index (index.db).
    data_dir: Path
    # Passages returned when a request leaves top_k at 0.
    default_top_k: int
    # Largest document IndexDocument accepts, in chunks.
    max_chunks_per_document: int
    backend: str

    @property
    def index_path(self) -> Path:
        return self.data_dir / "index.db"

    @classmethod
    def from_env(cls, env: Env) -> RetrievalConfig:
        backend = env.string("RETRIEVAL_BACKEND", "local").lower()
        if backend not in AVAILABLE_BACKENDS:
            raise ConfigError(
                f"RETRIEVAL_BACKEND={backend!r} is not available; available backends: {', '.join(AVAILABLE_BACKENDS)}"
            )
        return cls(
            server=ServerConfig.from_env(env, DEFAULT_PORT),
            data_dir=data_dir(env, "retrieval"),
            default_top_k=env.integer("RETRIEVAL_TOP_K", 5, minimum=1, maximum=MAX_TOP_K),
            max_chunks_per_document=env.integer("MAX_CHUNKS_PER_DOCUMENT", 200_000, minimum=1, maximum=10_000_000),
            backend=backend,
        )
