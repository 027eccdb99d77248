"""The generator port: domain inputs, streamed events and the ``Generator`` protocol.

Every model backend implements :class:`Generator`: the embedded extractive one, and the
language models (SageMaker, Bedrock, OpenAI-compatible servers) through
:class:`~services.generation.backends.llm.LLMGenerator` over a vendor adapter. The service turns protobuf
requests into these dataclasses and the events back into protobuf, so a backend never sees
gRPC and the service never sees a vendor SDK.

A backend receives the caller's wording unformatted (system prompt, history, passages,
templates) and owns what depends on the model family: the prompt format, fitting the
prompt into the context window (history trimmed oldest first, passages lowest ranked
first), and the token accounting reported in :class:`DoneEvent`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class Passage:
    """A retrieved passage; its 1-based position in the request is its citation number."""

    chunk_id: str
    doc_id: str
    title: str
    page: int
    text: str
    score: float = 0.0


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters as the caller sent them.

    ``max_new_tokens == 0`` means the backend's default. ``temperature`` and ``top_p`` are
    passed through as given (0 is a valid value for both); ``stop`` ends the answer before
    the first occurrence of any of its strings.
    """

    max_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 0.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationInput:
    """One question to answer, with everything the caller wants in the prompt.

    ``history`` is oldest first. ``passages`` are best first. ``user_template`` renders the
    final user turn ("{context}", "{question}"); empty means the question alone.
    ``passage_template`` renders one passage ("{n}", "{title}", "{page}", "{text}"); see
    :mod:`services.generation.prompting`.
    """

    question: str
    system: str = ""
    history: tuple[tuple[Role, str], ...] = ()
    passages: tuple[Passage, ...] = ()
    user_template: str = ""
    passage_template: str = ""
    params: GenerationParams = field(default_factory=GenerationParams)
    language: str = ""


@dataclass(frozen=True)
class TokenEvent:
    """The next piece of the answer; the concatenation of every piece is the answer."""

    text: str


@dataclass(frozen=True)
class DoneEvent:
    """The last event of a stream.

    ``prompt_tokens`` and ``completion_tokens`` are the backend's count (a model's tokenizer,
    or an estimate that the backend documents). ``used_chunk_ids`` are the passages the
    answer used (cited, or kept in the prompt). ``model`` names the backend and model,
    e.g. "extractive" or "sagemaker:llama-2-7b-chat".
    """

    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    used_chunk_ids: tuple[str, ...]
    model: str


GenerationEvent = TokenEvent | DoneEvent


class Generator(Protocol):
    """A model backend. Streams end with exactly one :class:`DoneEvent`.

    Both streams are async generators: the caller closes them (``aclose``) when its client
    goes away, and a backend must then stop its work (cancel the HTTP stream, free the
    endpoint). Domain errors (``services.common.errors``) raised before the first event
    become the call's status.
    """

    name: str

    async def start(self) -> None:
        """Open clients and check the backend is reachable; the service turns SERVING after."""

    async def close(self) -> None:
        """Release clients after the server has drained."""

    def generate(self, inp: GenerationInput) -> AsyncGenerator[GenerationEvent, None]:
        """Answer ``inp.question``, streamed."""
        ...

    def summarize(
        self, title: str, sections: Sequence[str], language: str, params: GenerationParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Summarise a whole document (every section, in order), streamed."""
        ...
