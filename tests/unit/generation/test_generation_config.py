"""GenerationConfig.from_env: defaults, overrides, and errors that name the variable."""

from __future__ import annotations

import re
from pathlib import Path

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


@pytest.mark.parametrize("backend", ["gpt5", "llama"])
def test_unknown_backend_names_the_variable_and_the_choices(backend: str) -> None:
    with pytest.raises(ConfigError, match=r"GENERATION_BACKEND=.*available: extractive, sagemaker, bedrock, openai"):
        GenerationConfig.from_env(Env({"GENERATION_BACKEND": backend}))


@pytest.mark.parametrize(
    ("environ", "missing"),
    [
        ({"GENERATION_BACKEND": "sagemaker"}, "SAGEMAKER_ENDPOINT_NAME is required"),
        ({"GENERATION_BACKEND": "bedrock"}, "BEDROCK_MODEL_ID is required"),
        ({"GENERATION_BACKEND": "openai", "OPENAI_MODEL": "m"}, "OPENAI_BASE_URL is required"),
        ({"GENERATION_BACKEND": "openai", "OPENAI_BASE_URL": "http://h/v1"}, "OPENAI_MODEL is required"),
    ],
)
def test_each_backend_requires_its_model(environ: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigError, match=missing):
        GenerationConfig.from_env(Env(environ))


def test_sagemaker_settings() -> None:
    config = GenerationConfig.from_env(
        Env(
            {
                "GENERATION_BACKEND": "sagemaker",
                "SAGEMAKER_ENDPOINT_NAME": "jumpstart-llama-2-7b-chat",
                "SAGEMAKER_PAYLOAD_STYLE": "prompt",
                "GENERATION_MODEL_FAMILY": "llama3",
                "SAGEMAKER_INFERENCE_COMPONENT": "ic-1",
                "SAGEMAKER_STREAMING": "false",
                "GENERATION_CONTEXT_WINDOW": "8192",
                "GENERATION_MAX_NEW_TOKENS": "1024",
                "AWS_REGION": "eu-west-1",
            }
        )
    )
    assert config.sagemaker is not None and config.llm is not None and config.aws is not None
    assert config.sagemaker.endpoint_name == "jumpstart-llama-2-7b-chat"
    assert (config.sagemaker.payload_style, config.sagemaker.family) == ("prompt", "llama3")
    assert (config.sagemaker.inference_component, config.sagemaker.streaming) == ("ic-1", False)
    assert (config.llm.context_window, config.llm.default_max_new_tokens) == (8192, 1024)
    assert config.aws.region == "eu-west-1"
    generator = make_generator(config)
    assert generator.name == "sagemaker:jumpstart-llama-2-7b-chat"


def test_sagemaker_defaults_are_the_jumpstart_llama2_dialog_endpoint() -> None:
    config = GenerationConfig.from_env(Env({"GENERATION_BACKEND": "sagemaker", "SAGEMAKER_ENDPOINT_NAME": "e"}))
    assert config.sagemaker is not None and config.llm is not None
    assert (config.sagemaker.payload_style, config.sagemaker.family, config.sagemaker.streaming) == (
        "dialog",
        "llama2",
        False,  # the 2023 dialog containers cannot stream
    )
    prompt = GenerationConfig.from_env(
        Env({"GENERATION_BACKEND": "sagemaker", "SAGEMAKER_ENDPOINT_NAME": "e", "SAGEMAKER_PAYLOAD_STYLE": "prompt"})
    )
    assert prompt.sagemaker is not None and prompt.sagemaker.streaming
    assert (config.llm.context_window, config.llm.default_max_new_tokens) == (4096, 512)


def test_bedrock_settings() -> None:
    config = GenerationConfig.from_env(
        Env({"GENERATION_BACKEND": "bedrock", "BEDROCK_MODEL_ID": "meta.llama3-70b-instruct-v1:0"})
    )
    assert make_generator(config).name == "bedrock:meta.llama3-70b-instruct-v1:0"


def test_openai_settings_with_the_key_in_a_file(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-secret\n")
    config = GenerationConfig.from_env(
        Env(
            {
                "GENERATION_BACKEND": "openai-compatible",
                "OPENAI_BASE_URL": "http://vllm:8000/v1",
                "OPENAI_MODEL": "meta-llama/Llama-2-7b-chat-hf",
                "OPENAI_API_KEY_FILE": str(key),
                "OPENAI_MAX_ATTEMPTS": "5",
            }
        )
    )
    assert config.backend == "openai" and config.openai is not None
    assert (config.openai.api_key, config.openai.max_attempts) == ("sk-secret", 5)
    assert make_generator(config).name == "openai:meta-llama/Llama-2-7b-chat-hf"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"OPENAI_BASE_URL": "vllm:8000"}, "OPENAI_BASE_URL='vllm:8000' must start with http"),
        (
            {"OPENAI_BASE_URL": "http:///v1"},
            "OPENAI_BASE_URL: 'http:///v1' is not an http:// or https:// URL",
        ),
        ({"OPENAI_BASE_URL": "http://h/v1?key=1"}, "OPENAI_BASE_URL: 'http://h/v1?key=1' has a query"),
        ({"OPENAI_API_KEY": "sk-a\nX-Injected: 1"}, "the OpenAI API key contains a line break"),
        ({"OPENAI_API_KEY": "a", "OPENAI_API_KEY_FILE": "/x"}, "not both"),
        ({"OPENAI_API_KEY_FILE": "/nonexistent/key"}, "OPENAI_API_KEY_FILE='/nonexistent/key' cannot be read"),
        ({"GENERATION_CONTEXT_WINDOW": "1024", "GENERATION_MAX_NEW_TOKENS": "1000"}, "GENERATION_MAX_NEW_TOKENS=1000"),
        ({"SAGEMAKER_PAYLOAD_STYLE": "x"}, None),
    ],
)
def test_bad_llm_settings_name_the_variable(extra: dict[str, str], message: str | None) -> None:
    environ = {"GENERATION_BACKEND": "openai", "OPENAI_BASE_URL": "http://h/v1", "OPENAI_MODEL": "m", **extra}
    if message is None:  # a sagemaker setting under the sagemaker backend
        environ = {"GENERATION_BACKEND": "sagemaker", "SAGEMAKER_ENDPOINT_NAME": "e", **extra}
        message = "SAGEMAKER_PAYLOAD_STYLE='x' must be one of: dialog, prompt"
    with pytest.raises(ConfigError, match=re.escape(message)):
        GenerationConfig.from_env(Env(environ))


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
