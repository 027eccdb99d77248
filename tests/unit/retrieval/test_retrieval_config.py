"""RetrievalConfig.from_env: defaults, overrides, and start-up failures that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import ConfigError, Env
from services.retrieval.config import RetrievalConfig


def test_defaults() -> None:
    config = RetrievalConfig.from_env(Env({}))
    assert (config.server.host, config.server.port) == ("127.0.0.1", 50053)
    assert config.data_dir == Path(".ragchat") / "retrieval"
    assert config.index_path == Path(".ragchat") / "retrieval" / "index.db"
    assert (config.default_top_k, config.max_chunks_per_document, config.backend) == (5, 200_000, "local")


def test_overrides() -> None:
    config = RetrievalConfig.from_env(
        Env(
            {
                "PORT": "6000",
                "HOST": "0.0.0.0",
                "DATA_DIR": "/srv/idx",
                "RETRIEVAL_TOP_K": "12",
                "MAX_CHUNKS_PER_DOCUMENT": "50",
                "RETRIEVAL_BACKEND": "LOCAL",
            }
        )
    )
    assert (config.server.host, config.server.port) == ("0.0.0.0", 6000)
    assert config.index_path == Path("/srv/idx/index.db")
    assert (config.default_top_k, config.max_chunks_per_document, config.backend) == (12, 50, "local")


def test_ragchat_home_places_the_data_folder() -> None:
    assert RetrievalConfig.from_env(Env({"RAGCHAT_HOME": "/home/x"})).data_dir == Path("/home/x/retrieval")


def test_an_unavailable_backend_is_named_with_the_available_ones() -> None:
    with pytest.raises(ConfigError) as raised:
        RetrievalConfig.from_env(Env({"RETRIEVAL_BACKEND": "elastic"}))
    assert str(raised.value) == (
        "RETRIEVAL_BACKEND='elastic' is not available; available backends: local, kendra, bedrock-kb"
    )


def test_dense_leg_settings() -> None:
    config = RetrievalConfig.from_env(
        Env(
            {
                "RETRIEVAL_DENSE": "false",
                "EMBEDDING_MODEL_DIR": "/models/minilm",
                "EMBEDDING_THREADS": "2",
                "HYBRID_DENSE_WEIGHT": "0.4",
                "ANN_THRESHOLD": "500",
            }
        )
    )
    assert (config.dense, config.embedding_model_dir, config.embedding_threads) == (False, Path("/models/minilm"), 2)
    assert (config.dense_weight, config.ann_threshold) == (0.4, 500)
    assert RetrievalConfig.from_env(Env({})).dense is True


def test_kendra_needs_its_index_and_role() -> None:
    with pytest.raises(ConfigError, match="KENDRA_INDEX_ID is required"):
        RetrievalConfig.from_env(Env({"RETRIEVAL_BACKEND": "kendra"}))
    config = RetrievalConfig.from_env(
        Env({"RETRIEVAL_BACKEND": "kendra", "KENDRA_INDEX_ID": "idx", "KENDRA_ROLE_ARN": "arn:aws:iam::1:role/k"})
    )
    assert config.kendra is not None and config.aws is not None
    assert (config.kendra.index_id, config.kendra.owner_attribute) == ("idx", "ragchat_owner")


def test_bedrock_kb_needs_its_knowledge_base_and_data_source() -> None:
    with pytest.raises(ConfigError, match="BEDROCK_KB_DATA_SOURCE_ID is required"):
        RetrievalConfig.from_env(Env({"RETRIEVAL_BACKEND": "bedrock-kb", "BEDROCK_KB_ID": "kb"}))
    config = RetrievalConfig.from_env(
        Env({"RETRIEVAL_BACKEND": "Bedrock-KB", "BEDROCK_KB_ID": "kb", "BEDROCK_KB_DATA_SOURCE_ID": "ds"})
    )
    assert config.backend == "bedrock-kb" and config.bedrock_kb is not None
    assert (config.bedrock_kb.knowledge_base_id, config.bedrock_kb.data_source_id) == ("kb", "ds")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RETRIEVAL_TOP_K", "0"),
        ("RETRIEVAL_TOP_K", "101"),
        ("RETRIEVAL_TOP_K", "many"),
        ("MAX_CHUNKS_PER_DOCUMENT", "0"),
        ("PORT", "70000"),
        ("HYBRID_DENSE_WEIGHT", "1.5"),
        ("RETRIEVAL_DENSE", "maybe"),
    ],
)
def test_bad_numbers_fail_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        RetrievalConfig.from_env(Env({name: value}))
