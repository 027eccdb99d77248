"""Retrieval service configuration, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.aws import AwsConfig
from services.common.config import ConfigError, Env, ServerConfig, data_dir
from services.retrieval.backends.local_index import DEFAULT_ANN_THRESHOLD, DEFAULT_DENSE_WEIGHT
from services.retrieval.embedding import DEFAULT_MODEL_DIR

DEFAULT_PORT = 50053
AVAILABLE_BACKENDS = ("local", "kendra", "bedrock-kb")
MAX_TOP_K = 100


@dataclass(frozen=True)
class KendraConfig:
    index_id: str
    # Role Kendra assumes to read the documents from S3 (BatchPutDocument RoleArn).
    role_arn: str
    owner_attribute: str
    poll_seconds: float
    index_timeout_seconds: float

    @classmethod
    def from_env(cls, env: Env) -> KendraConfig:
        return cls(
            index_id=env.string("KENDRA_INDEX_ID"),
            role_arn=env.string("KENDRA_ROLE_ARN"),
            owner_attribute=env.string("KENDRA_OWNER_ATTRIBUTE", "ragchat_owner"),
            poll_seconds=env.real("KENDRA_POLL_SECONDS", 2.0, minimum=0.0, maximum=60.0),
            index_timeout_seconds=env.real("KENDRA_INDEX_TIMEOUT_SECONDS", 900.0, minimum=1.0, maximum=86_400.0),
        )


@dataclass(frozen=True)
class BedrockKbConfig:
    knowledge_base_id: str
    data_source_id: str
    owner_attribute: str
    poll_seconds: float
    index_timeout_seconds: float

    @classmethod
    def from_env(cls, env: Env) -> BedrockKbConfig:
        return cls(
            knowledge_base_id=env.string("BEDROCK_KB_ID"),
            data_source_id=env.string("BEDROCK_KB_DATA_SOURCE_ID"),
            owner_attribute=env.string("BEDROCK_KB_OWNER_ATTRIBUTE", "ragchat_owner"),
            poll_seconds=env.real("BEDROCK_KB_POLL_SECONDS", 2.0, minimum=0.0, maximum=60.0),
            index_timeout_seconds=env.real("BEDROCK_KB_INDEX_TIMEOUT_SECONDS", 900.0, minimum=1.0, maximum=86_400.0),
        )


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
    # Local index: the dense leg (MiniLM) on or off, where its exported model lives, how it runs.
    dense: bool = True
    embedding_model_dir: Path = DEFAULT_MODEL_DIR
    embedding_threads: int = 1
    dense_weight: float = DEFAULT_DENSE_WEIGHT
    ann_threshold: int = DEFAULT_ANN_THRESHOLD
    kendra: KendraConfig | None = None
    bedrock_kb: BedrockKbConfig | None = None
    aws: AwsConfig | None = None

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
            dense=env.flag("RETRIEVAL_DENSE", True),
            embedding_model_dir=env.path("EMBEDDING_MODEL_DIR", DEFAULT_MODEL_DIR),
            embedding_threads=env.integer("EMBEDDING_THREADS", 1, minimum=0, maximum=256),
            dense_weight=env.real("HYBRID_DENSE_WEIGHT", DEFAULT_DENSE_WEIGHT, minimum=0.0, maximum=1.0),
            ann_threshold=env.integer("ANN_THRESHOLD", DEFAULT_ANN_THRESHOLD, minimum=1, maximum=1_000_000_000),
            kendra=KendraConfig.from_env(env) if backend == "kendra" else None,
            bedrock_kb=BedrockKbConfig.from_env(env) if backend == "bedrock-kb" else None,
            aws=AwsConfig.from_env(env) if backend in ("kendra", "bedrock-kb") else None,
        )
