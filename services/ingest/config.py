"""Configuration of the ingest service, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.config import ConfigError, Env, ServerConfig, data_dir

DEFAULT_PORT = 50052
BLOB_BACKENDS = ("local",)


@dataclass(frozen=True)
class IngestConfig:
    server: ServerConfig
    data_dir: Path
    retrieval_addr: str
    generation_addr: str
    blob_backend: str
    max_upload_bytes: int
    concurrency: int
    extract_timeout_seconds: float
    extract_memory_mb: int
    chunk_tokens: int
    chunk_overlap_tokens: int
    index_timeout_seconds: float
    summary_timeout_seconds: float
    peer_connect_timeout_seconds: float
    summarize: bool

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "ingest.db"

    @classmethod
    def from_env(cls, env: Env) -> IngestConfig:
        blob_backend = env.string("BLOB_BACKEND", "local").lower()
        if blob_backend not in BLOB_BACKENDS:
            raise ConfigError(
                f"BLOB_BACKEND={blob_backend!r} is not available; available values: {', '.join(BLOB_BACKENDS)}"
            )
        chunk_tokens = env.integer("CHUNK_TOKENS", 220, minimum=20, maximum=4000)
        overlap = env.integer("CHUNK_OVERLAP_TOKENS", 40, minimum=0, maximum=4000)
        if overlap >= chunk_tokens:
            raise ConfigError(f"CHUNK_OVERLAP_TOKENS={overlap} must be less than CHUNK_TOKENS={chunk_tokens}")
        return cls(
            server=ServerConfig.from_env(env, DEFAULT_PORT),
            data_dir=data_dir(env, "ingest"),
            retrieval_addr=env.address("RETRIEVAL_ADDR", "127.0.0.1:50053"),
            generation_addr=env.address("GENERATION_ADDR", "127.0.0.1:50054"),
            blob_backend=blob_backend,
            max_upload_bytes=env.integer("MAX_UPLOAD_BYTES", 50 * 1024 * 1024, minimum=1, maximum=1024**4),
            concurrency=env.integer("INGEST_CONCURRENCY", 2, minimum=1, maximum=64),
            extract_timeout_seconds=env.real("EXTRACT_TIMEOUT_SECONDS", 120.0, minimum=1.0, maximum=86_400.0),
            extract_memory_mb=env.integer("EXTRACT_MEMORY_MB", 2048, minimum=256, maximum=1024 * 1024),
            chunk_tokens=chunk_tokens,
            chunk_overlap_tokens=overlap,
            index_timeout_seconds=env.real("INDEX_TIMEOUT_SECONDS", 1800.0, minimum=1.0, maximum=86_400.0),
            summary_timeout_seconds=env.real("SUMMARY_TIMEOUT_SECONDS", 600.0, minimum=1.0, maximum=86_400.0),
            peer_connect_timeout_seconds=env.real("PEER_CONNECT_TIMEOUT_SECONDS", 30.0, minimum=0.1, maximum=3600.0),
            summarize=env.flag("INGEST_SUMMARIZE", True),
        )
