"""Any Bedrock chat model (Llama, Claude, Mistral, Titan, ...) through ConverseStream.

The Converse API applies the model's own chat template: the request carries ``system`` and
alternating ``messages`` (:func:`~services.generation.formats.converse_request`). The
stream's ``contentBlockDelta`` events are the answer, ``messageStop`` its stop reason and
``metadata`` the model's own token counts. Bedrock always ends a stream with ``messageStop``
then ``metadata``: a stream that ends before both (the connection dropped, a frame was cut
off) is UNAVAILABLE after the partial answer, never a finished answer, and is not retried.

boto3 is used directly rather than langchain-aws's ``ChatBedrockConverse``: that class only
implements a synchronous ``_stream``, which LangChain's ``astream`` drives from an executor
thread one chunk at a time, with no way to close the botocore event stream when our caller
cancels (the model would keep generating into a dead connection), and it turns an error
event mid-stream into a generic exception without the count of tokens already delivered.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from services.common.aws import AwsConfig, make_client
from services.common.errors import RagchatError, Unavailable
from services.generation.backends import FinishReason
from services.generation.backends.aws_errors import aws_error
from services.generation.backends.llm import ModelDelta, ModelEvent, ModelFinish, ModelRequest, merge_deltas
from services.generation.backends.threaded import relay_blocking, shutdown_event_stream
from services.generation.formats import converse_request

_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "stop",
    "guardrail_intervened": "stop",
    "content_filtered": "stop",
}

_REMEDY = "check BEDROCK_MODEL_ID (a model or inference profile id enabled in this account) and AWS_REGION"


@dataclass(frozen=True)
class BedrockSettings:
    model_id: str
    endpoint_url: str | None = None


def converse_stream_args(request: ModelRequest, model_id: str) -> dict[str, Any]:
    inference: dict[str, Any] = {"maxTokens": request.max_new_tokens, "temperature": request.temperature}
    if 0 < request.top_p <= 1:
        inference["topP"] = request.top_p
    if request.stop:
        inference["stopSequences"] = list(request.stop)
    return {"modelId": model_id, **converse_request(request.dialog), "inferenceConfig": inference}


class BedrockChatModel:
    """The :class:`~services.generation.backends.llm.ChatModel` of a Bedrock model."""

    def __init__(self, settings: BedrockSettings, aws: AwsConfig, *, client: Any = None) -> None:
        self._settings = settings
        self._aws = aws
        self._client = client
        self.name = f"bedrock:{settings.model_id}"

    async def start(self) -> None:
        if self._client is None:
            self._client = make_client("bedrock-runtime", self._aws, endpoint_url=self._settings.endpoint_url)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        if self._client is None:
            raise Unavailable(f"{self.name} is not started")
        client = self._client
        args = converse_stream_args(request, self._settings.model_id)
        sent = 0
        try:
            async for event in relay_blocking(
                lambda: client.converse_stream(**args),
                lambda response: _events(response["stream"], self.name),
                lambda response: shutdown_event_stream(response["stream"]),
                name=self.name,
                merge=merge_deltas,
            ):
                if isinstance(event, ModelDelta):
                    sent += event.tokens
                yield event
        except RagchatError as error:
            if sent:
                raise Unavailable(f"{error.message} (after {sent} tokens of the answer)") from error
            raise
        except Exception as error:
            raise aws_error(error, backend=self.name, tokens_sent=sent, remedy=_REMEDY) from error


def _events(stream: Iterable[dict[str, Any]], backend: str) -> Iterator[ModelEvent]:
    """ConverseStream events as model events; the finish comes last, with the usage."""
    reason: FinishReason | None = None
    usage_seen = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    for event in stream:
        if "contentBlockDelta" in event:
            text = event["contentBlockDelta"].get("delta", {}).get("text")
            if text:
                yield ModelDelta(text)
        elif "messageStop" in event:
            reason = _STOP_REASONS.get(event["messageStop"].get("stopReason", ""), "stop")
        elif "metadata" in event:
            usage_seen = True
            usage = event["metadata"].get("usage", {})
            prompt_tokens = usage.get("inputTokens")
            completion_tokens = usage.get("outputTokens")
    if reason is None or not usage_seen:
        missing = "messageStop" if reason is None else "its metadata"
        raise Unavailable(
            f"{backend}: the model's response stream ended early, before {missing}; the answer is incomplete, ask again"
        )
    yield ModelFinish(reason, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
