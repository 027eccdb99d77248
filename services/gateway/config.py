"""Gateway configuration, read once at start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.aws import AwsConfig
from services.common.config import ConfigError, Env, ServerConfig, data_dir

DEFAULT_PORT = 50051

# Asymmetric algorithms only: a shared-secret (HS*) or "none" token is never accepted.
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


@dataclass(frozen=True)
class JwtConfig:
    jwks_file: Path | None
    jwks_url: str | None
    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    user_claim: str
    token_use: str | None
    leeway_seconds: float
    jwks_cache_seconds: float
    jwks_min_refresh_seconds: float
    jwks_timeout_seconds: float

    @classmethod
    def from_env(cls, env: Env) -> JwtConfig:
        jwks_file = env.optional("JWT_JWKS_FILE")
        jwks_url = env.optional("JWT_JWKS_URL")
        if (jwks_file is None) == (jwks_url is None):
            raise ConfigError("AUTH_MODE=jwt needs exactly one of JWT_JWKS_FILE or JWT_JWKS_URL")
        if jwks_url is not None and not jwks_url.startswith(("https://", "http://")):
            raise ConfigError(f"JWT_JWKS_URL={jwks_url!r} must be an http(s) URL")
        audiences = tuple(a.strip() for a in env.string("JWT_AUDIENCE", "").split(",") if a.strip())
        if not audiences:
            raise ConfigError(
                "AUTH_MODE=jwt needs JWT_AUDIENCE: the accepted audiences (for Amazon Cognito, the app client ids)"
            )
        algorithms = tuple(a.strip() for a in env.string("JWT_ALGORITHMS", "RS256,ES256").split(",") if a.strip())
        unknown = sorted(set(algorithms) - set(JWT_ALGORITHMS))
        if unknown or not algorithms:
            raise ConfigError(
                f"JWT_ALGORITHMS has {', '.join(unknown) or 'nothing'}; allowed: {', '.join(JWT_ALGORITHMS)}"
            )
        token_use = env.optional("JWT_TOKEN_USE")
        if token_use is not None and token_use not in ("id", "access"):
            raise ConfigError(f"JWT_TOKEN_USE={token_use!r} must be id or access (Amazon Cognito's token_use)")
        return cls(
            jwks_file=Path(jwks_file).expanduser() if jwks_file else None,
            jwks_url=jwks_url,
            issuer=env.string("JWT_ISSUER"),
            audiences=audiences,
            algorithms=algorithms,
            user_claim=env.string("JWT_USER_CLAIM", "sub"),
            token_use=token_use,
            leeway_seconds=env.real("JWT_LEEWAY_SECONDS", 30.0, minimum=0.0, maximum=600.0),
            jwks_cache_seconds=env.real("JWKS_CACHE_SECONDS", 3600.0, minimum=1.0, maximum=86_400.0),
            jwks_min_refresh_seconds=env.real("JWKS_MIN_REFRESH_SECONDS", 30.0, minimum=0.0, maximum=3600.0),
            jwks_timeout_seconds=env.real("JWKS_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=60.0),
        )


@dataclass(frozen=True)
class DynamoConfig:
    conversations_table: str
    calls_table: str

    @classmethod
    def from_env(cls, env: Env) -> DynamoConfig:
        return cls(
            conversations_table=env.string("DYNAMO_CONVERSATIONS_TABLE", "ragchat-conversations"),
            calls_table=env.string("DYNAMO_CALLS_TABLE", "ragchat-calls"),
        )


@dataclass(frozen=True)
class GatewayConfig:
    server: ServerConfig
    data_dir: Path
    ingest_addr: str
    retrieval_addr: str
    generation_addr: str
    auth_mode: str
    tokens_file: Path | None
    jwt: JwtConfig | None
    history_backend: str
    dynamo: DynamoConfig
    aws: AwsConfig
    top_k: int
    min_relevance: float
    no_answer: str
    retrieval_unavailable: str
    history_max_tokens: int
    max_question_chars: int
    max_new_tokens: int
    retrieval_timeout: float
    generation_timeout: float
    ingest_timeout: float
    watch_timeout: float

    @classmethod
    def from_env(cls, env: Env) -> GatewayConfig:
        auth_mode = env.choice("AUTH_MODE", "none", ("none", "static", "jwt"))
        tokens_file = env.optional("AUTH_TOKENS_FILE")
        if auth_mode == "static" and tokens_file is None:
            raise ConfigError("AUTH_MODE=static needs AUTH_TOKENS_FILE (lines of 'sha256:<hex> <user>')")
        return cls(
            server=ServerConfig.from_env(env, DEFAULT_PORT),
            data_dir=data_dir(env, "gateway"),
            ingest_addr=env.address("INGEST_ADDR", "127.0.0.1:50052"),
            retrieval_addr=env.address("RETRIEVAL_ADDR", "127.0.0.1:50053"),
            generation_addr=env.address("GENERATION_ADDR", "127.0.0.1:50054"),
            auth_mode=auth_mode,
            tokens_file=Path(tokens_file).expanduser() if tokens_file else None,
            jwt=JwtConfig.from_env(env) if auth_mode == "jwt" else None,
            history_backend=env.choice("HISTORY_BACKEND", "sqlite", ("sqlite", "dynamodb")),
            dynamo=DynamoConfig.from_env(env),
            aws=AwsConfig.from_env(env),
            top_k=env.integer("RAG_TOP_K", 5, minimum=1, maximum=100),
            min_relevance=env.real("RAG_MIN_SCORE", 0.0, minimum=0.0),
            no_answer=env.choice("RAG_NO_ANSWER", "refuse", ("refuse", "model")),
            retrieval_unavailable=env.choice(
                "RETRIEVAL_UNAVAILABLE", "answer_without_documents", ("answer_without_documents", "fail")
            ),
            history_max_tokens=env.integer("HISTORY_MAX_TOKENS", 1500, minimum=0, maximum=100_000),
            max_question_chars=env.integer("MAX_QUESTION_CHARS", 4000, minimum=10, maximum=100_000),
            max_new_tokens=env.integer("MAX_NEW_TOKENS", 512, minimum=1, maximum=8192),
            retrieval_timeout=env.real("RETRIEVAL_TIMEOUT_SECONDS", 15.0, minimum=0.1, maximum=600.0),
            generation_timeout=env.real("GENERATION_TIMEOUT_SECONDS", 300.0, minimum=1.0, maximum=3600.0),
            ingest_timeout=env.real("INGEST_TIMEOUT_SECONDS", 120.0, minimum=1.0, maximum=3600.0),
            watch_timeout=env.real("INGEST_WATCH_TIMEOUT_SECONDS", 3600.0, minimum=1.0, maximum=86_400.0),
        )
