"""SageMaker non-streaming mode (``SAGEMAKER_STREAMING=false``) against moto's server.

moto answers ``InvokeEndpoint`` with the results queued through its
``/moto-api/static/sagemaker/endpoint-results`` API, so these tests cover the request
botocore validates and sends, and the parsing of both JumpStart payload styles.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from moto.server import ThreadedMotoServer

from services.common.aws import AwsConfig
from services.common.errors import Unavailable
from services.generation.backends import DoneEvent, GenerationInput, GenerationParams, TokenEvent
from services.generation.backends.llm import LLMGenerator, LLMSettings
from services.generation.backends.sagemaker import SageMakerChatModel, SageMakerSettings

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def queue_result(url: str, body: Any) -> None:
    results = {"results": [{"Body": json.dumps(body), "ContentType": "application/json"}]}
    response = httpx.post(f"{url}/moto-api/static/sagemaker/endpoint-results", json=results)
    response.raise_for_status()


def generator(url: str, endpoint: str, style: str, family: str = "llama2") -> LLMGenerator:
    settings = SageMakerSettings(
        endpoint_name=endpoint,
        payload_style=style,  # type: ignore[arg-type]
        family=family,  # type: ignore[arg-type]
        streaming=False,
        inference_component="ic-llama",
    )
    aws = AwsConfig("us-east-1", "standard", 2, 2.0, 10.0, url)
    return LLMGenerator(SageMakerChatModel(settings, aws), LLMSettings(context_window=4096, default_max_new_tokens=64))


async def run(gen: LLMGenerator, inp: GenerationInput) -> tuple[str, DoneEvent]:
    await gen.start()
    try:
        events = [event async for event in gen.generate(inp)]
    finally:
        await gen.close()
    done = events[-1]
    assert isinstance(done, DoneEvent)
    return "".join(e.text for e in events if isinstance(e, TokenEvent)), done


async def test_dialog_style_reads_generation_content(moto_url: str) -> None:
    queue_result(moto_url, [{"generation": {"role": "assistant", "content": "Paris is the capital."}}])
    text, done = await run(
        generator(moto_url, "jumpstart-dialog", "dialog"), GenerationInput(question="Capital of France?")
    )
    assert text == "Paris is the capital."
    assert (done.finish_reason, done.completion_tokens, done.model) == ("stop", 1, "sagemaker:jumpstart-dialog")


async def test_prompt_style_reads_generated_text_and_details(moto_url: str) -> None:
    queue_result(
        moto_url,
        [{"generated_text": " Ottawa.", "details": {"finish_reason": "length", "generated_tokens": 64}}],
    )
    text, done = await run(
        generator(moto_url, "tgi-prompt", "prompt", "llama3"),
        GenerationInput(question="Capital of Canada?", params=GenerationParams(max_new_tokens=64)),
    )
    assert text == " Ottawa."
    assert (done.finish_reason, done.completion_tokens) == ("length", 64)


async def test_lmi_object_answer(moto_url: str) -> None:
    queue_result(moto_url, {"generated_text": "Seoul."})
    text, _ = await run(generator(moto_url, "lmi-prompt", "prompt"), GenerationInput(question="Capital of Korea?"))
    assert text == "Seoul."


async def test_wrong_payload_style_says_which_setting_to_check(moto_url: str) -> None:
    queue_result(moto_url, [{"outputs": ["x"]}])
    gen = generator(moto_url, "style-mismatch", "prompt")
    with pytest.raises(
        Unavailable, match=r"without \[0\]\.generation\.content or \[0\]\.generated_text.*SAGEMAKER_PAYLOAD_STYLE"
    ):
        await run(gen, GenerationInput(question="Anything?"))
