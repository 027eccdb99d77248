"""Llama on a SageMaker (JumpStart) endpoint, streamed or not.

Payload styles:

* ``dialog``: the 2023 JumpStart Llama 2 chat format,
  ``{"inputs": [[{"role", "content"}, ...]], "parameters": {...}}``, answered with
  ``[{"generation": {"role": "assistant", "content": ...}}]``.
* ``prompt``: the prompt pre-formatted for the model family (Llama 2 / Llama 3 chat template),
  ``{"inputs": "<prompt>", "parameters": {...}}``, answered with ``[{"generated_text": ...}]``
  (TGI) or ``{"generated_text": ...}`` (LMI).

Every call carries ``CustomAttributes: accept_eula=true`` (the Llama licence, required by
JumpStart) and, when configured, ``InferenceComponentName``.

Streaming uses ``InvokeEndpointWithResponseStream`` (``"stream": true``): the payload parts
carry the TGI / LMI line format, one JSON object per line (``data:`` prefixed for TGI's
server-sent events), ``{"token": {"text": ..., "special": ...}, "details": ...}``. A line can
be split across payload parts (and a UTF-8 character across a part boundary): bytes are
buffered until the line's newline. ``ModelStreamError`` / ``InternalStreamFailure`` events,
TGI's ``{"error": ...}`` lines and LMI's ``finish_reason: "error"`` end the stream with an
error that names the endpoint.

Both containers end a stream with a final line that carries ``generated_text`` (the whole
answer) and, since ``details`` is requested, ``details.finish_reason``. A stream that ends
without that line (the connection dropped, a frame was cut off) is UNAVAILABLE after the
partial answer, never a finished answer; it is not retried, since the caller has part of it.

boto3 is used directly (not langchain-aws's ``SagemakerEndpoint``): its streaming reads the
event stream in a worker thread it does not let us interrupt, hides the finish reason and
usage of TGI's ``details``, and has no hook to close the connection when the caller cancels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from services.common.aws import AwsConfig, make_client
from services.common.errors import RagchatError, Unavailable
from services.generation.backends import FinishReason
from services.generation.backends.aws_errors import aws_error
from services.generation.backends.llm import ModelDelta, ModelEvent, ModelFinish, ModelRequest, join_deltas
from services.generation.backends.threaded import relay_blocking, shutdown_event_stream
from services.generation.formats import ModelFamily, jumpstart_dialog, render_prompt

log = logging.getLogger(__name__)

PayloadStyle = Literal["dialog", "prompt"]
PAYLOAD_STYLES: tuple[PayloadStyle, ...] = ("dialog", "prompt")

_FINISH_REASONS: dict[str, FinishReason] = {
    "length": "length",
    "max_tokens": "length",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "stop": "stop",
    "eos": "stop",
}


@dataclass(frozen=True)
class SageMakerSettings:
    endpoint_name: str
    payload_style: PayloadStyle = "dialog"
    family: ModelFamily = "llama2"
    inference_component: str | None = None
    streaming: bool = True
    endpoint_url: str | None = None


def request_body(request: ModelRequest, settings: SageMakerSettings, *, stream: bool) -> dict[str, Any]:
    """The JSON body for ``request`` in the configured payload style."""
    parameters: dict[str, Any] = {"max_new_tokens": request.max_new_tokens}
    # TGI and the JumpStart containers reject temperature 0 and top_p outside (0, 1): leave
    # them out for greedy decoding / no nucleus cut-off.
    if request.temperature > 0:
        parameters["temperature"] = request.temperature
    if 0 < request.top_p < 1:
        parameters["top_p"] = request.top_p
    if request.stop:
        parameters["stop"] = list(request.stop)
    inputs: Any
    if settings.payload_style == "dialog":
        inputs = [jumpstart_dialog(request.dialog)]
    else:
        inputs = render_prompt(settings.family, request.dialog)
    body: dict[str, Any] = {"inputs": inputs, "parameters": parameters}
    if stream:
        parameters["details"] = True
        body["stream"] = True
    return body


def parse_response(payload: bytes, *, backend: str) -> tuple[str, FinishReason | None, int | None]:
    """Text, finish reason and generated tokens of a non-streamed answer (either payload style)."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Unavailable(f"{backend} answered with something that is not JSON: {payload[:200]!r}") from error
    first = data[0] if isinstance(data, list) and data else data
    if not isinstance(first, dict):
        raise Unavailable(f"{backend} answered with an unexpected shape: {str(data)[:200]}")
    if "error" in first:
        raise Unavailable(f"{backend}: the model container reported an error: {str(first['error'])[:500]}")
    generation = first.get("generation")
    if isinstance(generation, dict) and isinstance(generation.get("content"), str):
        return generation["content"], None, None
    if isinstance(generation, str):
        return generation, None, None
    text = first.get("generated_text")
    if not isinstance(text, str):
        raise Unavailable(
            f"{backend} answered without [0].generation.content or [0].generated_text: {str(data)[:200]}; "
            "check SAGEMAKER_PAYLOAD_STYLE"
        )
    details = first.get("details")
    if not isinstance(details, dict):
        details = {}
    reason = _FINISH_REASONS.get(str(details.get("finish_reason", "")))
    tokens = details.get("generated_tokens")
    return text, reason, tokens if isinstance(tokens, int) else None


class StreamLineParser:
    """TGI / LMI streamed lines, re-joined across payload parts, as model events."""

    def __init__(self, backend: str) -> None:
        self._backend = backend
        self._buffer = b""
        self.finish_reason: FinishReason | None = None
        self.generated_tokens: int | None = None
        # The final line (generated_text or details) arrived: the container finished the answer.
        self.ended = False

    def feed(self, data: bytes) -> list[ModelDelta]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [delta for line in lines for delta in self._line(line)]

    def end(self) -> list[ModelDelta]:
        rest, self._buffer = self._buffer, b""
        return list(self._line(rest))

    def _line(self, raw: bytes) -> Iterable[ModelDelta]:
        line = raw.strip()
        if line.startswith(b"data:"):
            line = line[5:].strip()
        if not line or line.startswith((b":", b"event:", b"id:", b"retry:")) or line == b"[DONE]":
            return
        try:
            data = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise Unavailable(f"{self._backend} streamed a line that is not JSON: {line[:200]!r}") from error
        if not isinstance(data, dict):
            return
        if data.get("error"):
            raise Unavailable(f"{self._backend}: the model container reported an error mid-stream: {data['error']}")
        details = data.get("details")
        if isinstance(details, dict):
            finish = str(details.get("finish_reason", ""))
            if finish == "error":
                raise Unavailable(f"{self._backend}: the model container reported an error mid-stream (details)")
            self.finish_reason = _FINISH_REASONS.get(finish, self.finish_reason)
            tokens = details.get("generated_tokens")
            if isinstance(tokens, int):
                self.generated_tokens = tokens
        if isinstance(data.get("generated_text"), str) or isinstance(details, dict):
            self.ended = True
        token = data.get("token")
        if isinstance(token, dict):
            text = token.get("text")
            if isinstance(text, str) and text and not token.get("special", False):
                yield ModelDelta(text)


class SageMakerChatModel:
    """The :class:`~services.generation.backends.llm.ChatModel` of a SageMaker endpoint."""

    def __init__(self, settings: SageMakerSettings, aws: AwsConfig, *, client: Any = None) -> None:
        self._settings = settings
        self._aws = aws
        self._client = client
        self.name = f"sagemaker:{settings.endpoint_name}"

    async def start(self) -> None:
        if self._client is None:
            self._client = make_client("sagemaker-runtime", self._aws, endpoint_url=self._settings.endpoint_url)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _invoke_args(self, body: dict[str, Any]) -> dict[str, Any]:
        args: dict[str, Any] = {
            "EndpointName": self._settings.endpoint_name,
            "Body": json.dumps(body, ensure_ascii=False).encode(),
            "ContentType": "application/json",
            "Accept": "application/json",
            "CustomAttributes": "accept_eula=true",
        }
        if self._settings.inference_component:
            args["InferenceComponentName"] = self._settings.inference_component
        return args

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        if self._client is None:
            raise Unavailable(f"{self.name} is not started")
        client = self._client
        sent = 0
        try:
            if not self._settings.streaming:
                args = self._invoke_args(request_body(request, self._settings, stream=False))
                async for response in relay_blocking(
                    lambda: client.invoke_endpoint(**args), _read_body, _close_nothing, name=self.name
                ):
                    text, reason, tokens = parse_response(response, backend=self.name)
                    if text:
                        yield ModelDelta(text)
                    yield ModelFinish(reason or _guess_reason(tokens, request), completion_tokens=tokens)
                return
            args = self._invoke_args(request_body(request, self._settings, stream=True))
            parser = StreamLineParser(self.name)
            async for delta in relay_blocking(
                lambda: client.invoke_endpoint_with_response_stream(**args),
                lambda response: _stream_deltas(response["Body"], parser),
                lambda response: shutdown_event_stream(response["Body"]),
                name=self.name,
                merge=join_deltas,
            ):
                sent += delta.tokens
                yield delta
            if not parser.ended:
                raise Unavailable(
                    f"{self.name}: the model's response stream ended early, without its final line "
                    "(generated_text / details); the answer is incomplete, ask again"
                )
            completion = parser.generated_tokens
            yield ModelFinish(
                parser.finish_reason or _guess_reason(completion if completion is not None else sent, request),
                completion_tokens=completion,
            )
        except RagchatError as error:
            if sent:
                raise Unavailable(f"{error.message} (after {sent} tokens of the answer)") from error
            raise
        except Exception as error:
            raise aws_error(error, backend=self.name, tokens_sent=sent, remedy=_REMEDY) from error


_REMEDY = "check SAGEMAKER_ENDPOINT_NAME, SAGEMAKER_INFERENCE_COMPONENT, SAGEMAKER_PAYLOAD_STYLE and AWS_REGION"


def _guess_reason(tokens: int | None, request: ModelRequest) -> FinishReason:
    return "length" if tokens is not None and tokens >= request.max_new_tokens else "stop"


def _read_body(response: dict[str, Any]) -> Iterator[bytes]:
    body = response["Body"]
    try:
        yield body.read()
    finally:
        body.close()


def _close_nothing(response: dict[str, Any]) -> None:
    return None


def _stream_deltas(events: Iterable[dict[str, Any]], parser: StreamLineParser) -> Iterator[ModelDelta]:
    for event in events:
        part = event.get("PayloadPart")
        if part is not None:
            yield from parser.feed(part.get("Bytes", b""))
    yield from parser.end()
