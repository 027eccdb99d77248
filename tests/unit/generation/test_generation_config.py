"""GenerationConfig.from_env: defaults, overrides, and errors that name the variable."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError, Env
from services.generation.config import GenerationConfig
from services.generation.server import build_app, make_generator


def test_defaults() -> None:
    config = GenerationConfig.from_env(Env({}))
    assert config.server.port == 50054
    assert config.server.host == "127.0.0.1"
    assert config.backend == "extractive"
    assert config.summary_sentences == 5
    assert config.max_new_tokens_limit == 4096
    assert config.max_passages == 100
    assert config.extractive_max_sentences == 4
    assert config.extractive_max_words == 120
    assert config.summary_max_candidates == 20_000


def test_overrides() -> None:
    config = GenerationConfig.from_env(
        Env(
            {
                "PORT": "6000",
                "HOST": "0.0.0.0",
                "GENERATION_BACKEND": "Extractive",
                "SUMMARY_SENTENCES": "7",
                "MAX_NEW_TOKENS_LIMIT": "512",
                "MAX_PASSAGES": "20",
                "EXTRACTIVE_MAX_SENTENCES": "2",
                "EXTRACTIVE_MAX_WORDS": "60",
                "SUMMARY_MAX_CANDIDATES": "5000",
            }
        )
    )
    assert (config.server.port, config.server.host, config.backend) == (6000, "0.0.0.0", "extractive")
    assert (config.summary_sentences, config.max_new_tokens_limit, config.max_passages) == (7, 512, 20)
    assert (config.extractive_max_sentences, config.extractive_max_words, config.summary_max_candidates) == (
        2,
        60,
        5000,
    )


@pytest.mark.parametrize("backend", ["sagemaker", "bedrock", "openai-compatible", "gpt5"])
def test_unavailable_backend_names_the_variable_and_the_choices(backend: str) -> None:
    with pytest.raises(ConfigError, match=r"GENERATION_BACKEND=.*available: extractive"):
        GenerationConfig.from_env(Env({"GENERATION_BACKEND": backend}))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SUMMARY_SENTENCES", "0"),
        ("SUMMARY_SENTENCES", "many"),
        ("MAX_NEW_TOKENS_LIMIT", "-1"),
        ("EXTRACTIVE_MAX_SENTENCES", "0"),
        ("EXTRACTIVE_MAX_WORDS", "1.5"),
        ("PORT", "70000"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        GenerationConfig.from_env(Env({name: value}))


def test_build_app_wires_the_configured_backend() -> None:
    config = GenerationConfig.from_env(Env({"EXTRACTIVE_MAX_SENTENCES": "3"}))
    generator = make_generator(config)
    assert generator.name == "extractive"
    app = build_app(config)
    assert app.name == "generation"
    assert list(app.service_names) == ["ragchat.v1.GenerationService"]
