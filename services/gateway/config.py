"""Gateway configuration, read once at start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.config import Env, ServerConfig, data_dir

DEFAULT_PORT = 50051


@dataclass(frozen=True)
class GatewayConfig:
    server: ServerConfig
    data_dir: Path
    ingest_addr: str
    retrieval_addr: str
    generation_addr: str
    auth_mode: str
    history_backend: str
    top_k: int
    min_relevance: float
    no_answer: str
    history_max_tokens: int
    max_question_chars: int
    max_new_tokens: int
    retrieval_timeout: float
    generation_timeout: float
    ingest_timeout: float

    @classmethod
    def from_env(cls, env: Env) -> GatewayConfig:
        return cls(
            server=ServerConfig.from_env(env, DEFAULT_PORT),
            data_dir=data_dir(env, "gateway"),
            ingest_addr=env.address("INGEST_ADDR", "127.0.0.1:50052"),
            retrieval_addr=env.address("RETRIEVAL_ADDR", "127.0.0.1:50053"),
            generation_addr=env.address("GENERATION_ADDR", "127.0.0.1:50054"),
            auth_mode=env.choice("AUTH_MODE", "none", ("none",)),
            history_backend=env.choice("HISTORY_BACKEND", "sqlite", ("sqlite",)),
            top_k=env.integer("RAG_TOP_K", 5, minimum=1, maximum=100),
            min_relevance=env.real("RAG_MIN_SCORE", 0.0, minimum=0.0),
            no_answer=env.choice("RAG_NO_ANSWER", "refuse", ("refuse", "model")),
            history_max_tokens=env.integer("HISTORY_MAX_TOKENS", 1500, minimum=0, maximum=100_000),
            max_question_chars=env.integer("MAX_QUESTION_CHARS", 4000, minimum=10, maximum=100_000),
            max_new_tokens=env.integer("MAX_NEW_TOKENS", 512, minimum=1, maximum=8192),
            retrieval_timeout=env.real("RETRIEVAL_TIMEOUT_SECONDS", 15.0, minimum=0.1, maximum=600.0),
            generation_timeout=env.real("GENERATION_TIMEOUT_SECONDS", 300.0, minimum=1.0, maximum=3600.0),
            ingest_timeout=env.real("INGEST_TIMEOUT_SECONDS", 120.0, minimum=1.0, maximum=3600.0),
        )
