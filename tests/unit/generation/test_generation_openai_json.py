"""The OpenAI adapter's JSON: orjson on the hot path, json for what orjson refuses."""

from __future__ import annotations

import json

from services.generation.backends.openai_compatible import OpenAIChatModel, OpenAISettings, encode_json


def test_the_body_is_utf8_json_that_any_parser_reads() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": '한국어 "quoted" \\ </documents>\n'}], "n": 1}
    encoded = encode_json(body)
    assert json.loads(encoded) == body and "한국어".encode() in encoded


def test_text_orjson_refuses_is_encoded_by_json() -> None:
    body = {"content": "a lone surrogate \ud800 here"}
    assert json.loads(encode_json(body)) == body


def test_events_only_pythons_parser_takes_are_still_read() -> None:
    model = OpenAIChatModel(OpenAISettings(base_url="http://unused/v1", model="m"))
    chunk = model._parse(b'{"choices": [{"delta": {"content": "x"}, "logprob": NaN}]}', "", 0)
    assert chunk["choices"][0]["delta"]["content"] == "x"
