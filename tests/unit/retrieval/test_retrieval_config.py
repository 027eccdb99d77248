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
        RetrievalConfig.from_env(Env({"RETRIEVAL_BACKEND": "kendra"}))
    assert str(raised.value) == "RETRIEVAL_BACKEND='kendra' is not available; available backends: local"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RETRIEVAL_TOP_K", "0"),
        ("RETRIEVAL_TOP_K", "101"),
        ("RETRIEVAL_TOP_K", "many"),
        ("MAX_CHUNKS_PER_DOCUMENT", "0"),
        ("PORT", "70000"),
    ],
)
def test_bad_numbers_fail_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        RetrievalConfig.from_env(Env({name: value}))
