"""Configuration of the generation service, read once from the environment at start."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ConfigError, Env, ServerConfig

DEFAULT_PORT = 50054

# Backends this build can run, and those a later version adds (named in the error message).
AVAILABLE_BACKENDS = ("extractive",)
PLANNED_BACKENDS = ("sagemaker", "bedrock", "openai-compatible")


@dataclass(frozen=True)
class GenerationConfig:
    server: ServerConfig
    backend: str
    # Hard upper bound a request's max_new_tokens may ask for.
    max_new_tokens_limit: int
    # Most passages a request may carry.
    max_passages: int
    summary_sentences: int
    extractive_max_sentences: int
    # Words of an extractive answer when the request's max_new_tokens is 0.
    extractive_max_words: int
    # Sentences a summary scores at most (a longer document is sampled evenly).
    summary_max_candidates: int

    @classmethod
    def from_env(cls, env: Env) -> GenerationConfig:
        backend = env.string("GENERATION_BACKEND", "extractive").lower()
        if backend not in AVAILABLE_BACKENDS:
            planned = " (planned, not in this version)" if backend in PLANNED_BACKENDS else ""
            raise ConfigError(
                f"GENERATION_BACKEND={backend!r}{planned} is not available; available: {', '.join(AVAILABLE_BACKENDS)}"
            )
        return cls(
            server=ServerConfig.from_env(env, DEFAULT_PORT),
            backend=backend,
            max_new_tokens_limit=env.integer("MAX_NEW_TOKENS_LIMIT", 4096, minimum=1, maximum=1_000_000),
            max_passages=env.integer("MAX_PASSAGES", 100, minimum=1, maximum=10_000),
            summary_sentences=env.integer("SUMMARY_SENTENCES", 5, minimum=1, maximum=100),
            extractive_max_sentences=env.integer("EXTRACTIVE_MAX_SENTENCES", 4, minimum=1, maximum=50),
            extractive_max_words=env.integer("EXTRACTIVE_MAX_WORDS", 120, minimum=10, maximum=10_000),
            summary_max_candidates=env.integer("SUMMARY_MAX_CANDIDATES", 20_000, minimum=100, maximum=1_000_000),
        )
