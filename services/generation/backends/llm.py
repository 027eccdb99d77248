"""The generator of every language-model backend, over a small vendor port (:class:`ChatModel`).

:class:`LLMGenerator` owns what is the same for SageMaker, Bedrock and OpenAI-compatible
servers: fitting the prompt into the model's context window, the dialog, relaying tokens
as they arrive, usage and finish reason, and map-reduce summaries. A :class:`ChatModel`
adapter only turns a :class:`ModelRequest` into its vendor's call and the vendor's stream
into :class:`ModelDelta` pieces ending with one :class:`ModelFinish`.

Token counting: no Llama tokenizer is available offline here, so prompt sizes use
:func:`services.common.text.estimate_tokens` (an over-estimate of Llama/GPT BPE tokens) plus
:data:`~services.generation.formats.TEMPLATE_TOKENS_PER_MESSAGE` per message. Usage reports
the backend's own counts where it gives them (Bedrock, OpenAI with usage, TGI details) and
that estimate otherwise.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

from services.common.errors import InvalidArgument, Unavailable
from services.common.text import detect_language, estimate_tokens, max_estimate_tokens
from services.generation.backends import (
    DoneEvent,
    FinishReason,
    GenerationEvent,
    GenerationInput,
    GenerationParams,
    TokenEvent,
)
from services.generation.formats import TEMPLATE_TOKENS_PER_MESSAGE, Dialog, make_dialog
from services.generation.prompting import fit_to_budget

# The smallest prompt budget worth calling a model with.
MIN_PROMPT_TOKENS = 64
# Map-reduce rounds of a summary at most (each round at least halves the parts).
MAX_REDUCE_ROUNDS = 8

LANGUAGE_NAMES = {
    "en": "English",
    "ko": "Korean (한국어)",
    "ja": "Japanese (日本語)",
    "zh": "Chinese (中文)",
    "fr": "French (français)",
    "de": "German (Deutsch)",
    "es": "Spanish (español)",
}

SUMMARY_SYSTEM = (
    "You write faithful, concise summaries of documents. Use only what the text says. "
    "Write the summary in {language}, even when these instructions are in another language."
)
SUMMARY_WHOLE = (
    'Summarize the document "{title}" below in {language}: its purpose, main points and conclusions, '
    "in a few short paragraphs.\n\n<document>\n{text}\n</document>"
)
SUMMARY_MAP = (
    'Summarize part {part} of {parts} of the document "{title}" below in {language}. Keep its key facts, '
    "figures and names; do not add an introduction.\n\n<document_part>\n{text}\n</document_part>"
)
SUMMARY_REDUCE = (
    'Below are summaries of consecutive parts of the document "{title}". Combine them into one summary of '
    "the whole document in {language}: its purpose, main points and conclusions, in a few short paragraphs."
    "\n\n<part_summaries>\n{text}\n</part_summaries>"
)

_TAG_RE = re.compile(r"</?(document|document_part|part_summaries)>")


@dataclass(frozen=True)
class ModelRequest:
    """One call to a model: the dialog and the resolved sampling parameters."""

    dialog: Dialog
    max_new_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]


@dataclass(frozen=True)
class ModelDelta:
    """The next piece of the answer: ``tokens`` tokens of text (several when they arrived together)."""

    text: str
    tokens: int = 1


@dataclass(frozen=True)
class ModelFinish:
    """The end of a model stream; counts are None where the backend did not report them."""

    finish_reason: FinishReason
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


ModelEvent = ModelDelta | ModelFinish


def join_deltas(deltas: list[ModelDelta]) -> list[ModelDelta]:
    """``deltas`` as one piece (none when empty)."""
    if len(deltas) <= 1:
        return deltas
    return [ModelDelta("".join(delta.text for delta in deltas), sum(delta.tokens for delta in deltas))]


def merge_deltas(events: list[ModelEvent]) -> list[ModelEvent]:
    """``events`` with each run of consecutive deltas joined into one piece (for tokens that
    arrived together: one message on to the caller instead of one each)."""
    merged: list[ModelEvent] = []
    run: list[ModelDelta] = []
    for event in [*events, None]:
        if isinstance(event, ModelDelta):
            run.append(event)
            continue
        merged.extend(join_deltas(run))
        run = []
        if event is not None:
            merged.append(event)
    return merged


class ChatModel(Protocol):
    """A vendor adapter: one streamed chat call.

    ``stream`` yields the answer's pieces as they arrive and ends with one
    :class:`ModelFinish`. Closing it early (``aclose``) must cancel the vendor call. Errors
    are domain errors: before the first piece, those of the set-up (retried within bounds by
    the adapter); after it, an error naming the backend (never retried: the caller already
    has part of the answer).
    """

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]: ...


@dataclass(frozen=True)
class LLMSettings:
    context_window: int = 4096
    default_max_new_tokens: int = 512
    # Parts of a long document summarised at once (map step of a summary).
    summary_concurrency: int = 4


def count_tokens(text: str) -> int:
    """A message's tokens: the estimate of its text plus the template's tokens around it."""
    return estimate_tokens(text) + TEMPLATE_TOKENS_PER_MESSAGE


def max_count_tokens(text: str) -> int:
    """An upper bound of :func:`count_tokens` from the text's length alone."""
    return max_estimate_tokens(text) + TEMPLATE_TOKENS_PER_MESSAGE


def language_name(code: str, sample: str) -> str:
    """A language to name in a prompt: ``code`` (BCP-47) or, when empty, the sample's."""
    primary = code.strip().lower().replace("_", "-").split("-")[0]
    if not primary:
        detected = detect_language(sample)
        primary = detected if detected != "und" else "en"
    return LANGUAGE_NAMES.get(primary, code.strip() or primary)


class LLMGenerator:
    """The :class:`~services.generation.backends.Generator` of a language-model backend."""

    def __init__(self, model: ChatModel, settings: LLMSettings) -> None:
        self._model = model
        self._settings = settings
        self.name = model.name

    async def start(self) -> None:
        await self._model.start()

    async def close(self) -> None:
        await self._model.close()

    def _max_new_tokens(self, params: GenerationParams) -> int:
        max_new = params.max_new_tokens or self._settings.default_max_new_tokens
        window = self._settings.context_window
        if window - max_new < MIN_PROMPT_TOKENS:
            raise InvalidArgument(
                f"max_new_tokens={max_new} leaves no room for the prompt in {self.name}'s context window of "
                f"{window} tokens: ask for at most {window - MIN_PROMPT_TOKENS}"
            )
        return max_new

    def _request(self, dialog: Dialog, max_new: int, params: GenerationParams) -> ModelRequest:
        return ModelRequest(
            dialog=dialog,
            max_new_tokens=max_new,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=params.stop,
        )

    def plan(self, inp: GenerationInput) -> tuple[ModelRequest, tuple[str, ...], Callable[[], int]]:
        """The request that fits the context window, the chunk ids kept in it, and a function
        that estimates its size (counted when first called, if fitting did not count it)."""
        max_new = self._max_new_tokens(inp.params)
        budget = self._settings.context_window - max_new
        # Fitting counts the same texts several times (each trimming step, then the final
        # prompt); counting is a pass over the text (~30 µs for eight passages), on the way to
        # the first token, so each distinct text is counted once, and not at all when the
        # prompt's length alone shows that it fits (the usage estimate then comes at the end).
        counted: dict[str, int] = {}

        def count(text: str) -> int:
            tokens = counted.get(text)
            if tokens is None:
                tokens = counted[text] = count_tokens(text)
            return tokens

        fitted, user_turn = fit_to_budget(inp, budget, count, bound=max_count_tokens)
        dialog = make_dialog(fitted.system, fitted.history, user_turn)
        texts = dialog.texts

        def estimate() -> int:
            return sum(count(text) for text in texts)

        if sum(max_count_tokens(text) for text in texts) > budget and (size := estimate()) > budget:
            raise InvalidArgument(
                f"the system prompt and question need about {size} tokens but {self.name} has {budget} for the "
                f"prompt (context window {self._settings.context_window} minus {max_new} for the answer): "
                "shorten the question or lower max_new_tokens"
            )
        used = tuple(p.chunk_id for p in fitted.passages) if "{context}" in inp.user_template else ()
        return self._request(dialog, max_new, inp.params), used, estimate

    async def generate(self, inp: GenerationInput) -> AsyncGenerator[GenerationEvent, None]:
        request, used, estimate = self.plan(inp)
        counted = 0
        finish = ModelFinish("stop")
        async with aclosing(self._model.stream(request)) as stream:
            async for event in stream:
                if isinstance(event, ModelFinish):
                    finish = event
                elif event.text:
                    counted += event.tokens
                    yield TokenEvent(event.text)
        yield DoneEvent(
            prompt_tokens=finish.prompt_tokens if finish.prompt_tokens is not None else estimate(),
            completion_tokens=finish.completion_tokens if finish.completion_tokens is not None else counted,
            finish_reason=finish.finish_reason,
            used_chunk_ids=used,
            model=self.name,
        )

    # ------------------------------------------------------------------ summaries

    async def summarize(
        self, title: str, sections: Sequence[str], language: str, params: GenerationParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        """A summary in the document's language; map-reduce when it exceeds the context window."""
        texts = [_TAG_RE.sub(lambda m: m.group().replace("<", "<\u200b"), s.strip()) for s in sections if s.strip()]
        language_label = language_name(language, " ".join(texts)[:20_000])
        system = SUMMARY_SYSTEM.format(language=language_label)
        max_new = self._max_new_tokens(params)
        overhead = count_tokens(system) + count_tokens(
            SUMMARY_MAP.format(part=99, parts=99, title=title, text="", language=language_label)
        )
        budget = self._settings.context_window - max_new - overhead
        if budget < MIN_PROMPT_TOKENS:
            raise InvalidArgument(
                f"{self.name}'s context window of {self._settings.context_window} tokens leaves no room for the "
                f"document with max_new_tokens={max_new}: lower max_new_tokens"
            )
        usage = [0, 0]
        batches = pack(texts, budget)
        # Partial summaries must be short enough that several fit in one reduce prompt, so each
        # round at least halves the number of batches.
        map_max_new = min(max_new, max(MIN_PROMPT_TOKENS, budget // 4))
        final_template = SUMMARY_WHOLE
        rounds = 0
        while len(batches) > 1:
            rounds += 1
            if rounds > MAX_REDUCE_ROUNDS:
                raise Unavailable(
                    f"{self.name}: the document still needs {len(batches)} prompts after {MAX_REDUCE_ROUNDS} "
                    "rounds of summaries (the model ignores max_new_tokens?)"
                )
            partials = await self._map(title, batches, system, language_label, map_max_new, params, usage)
            batches = pack(partials, budget)
            final_template = SUMMARY_REDUCE
        text = "\n\n".join(batches[0]) if batches else ""
        user = final_template.format(title=title, language=language_label, text=text)
        request = self._request(make_dialog(system, (), user), max_new, params)
        counted = 0
        finish = ModelFinish("stop")
        async with aclosing(self._model.stream(request)) as stream:
            async for event in stream:
                if isinstance(event, ModelFinish):
                    finish = event
                elif event.text:
                    counted += event.tokens
                    yield TokenEvent(event.text)
        prompt_estimate = count_tokens(system) + count_tokens(user)
        usage[0] += finish.prompt_tokens if finish.prompt_tokens is not None else prompt_estimate
        usage[1] += finish.completion_tokens if finish.completion_tokens is not None else counted
        yield DoneEvent(
            prompt_tokens=usage[0],
            completion_tokens=usage[1],
            finish_reason=finish.finish_reason,
            used_chunk_ids=(),
            model=self.name,
        )

    async def _map(
        self,
        title: str,
        batches: list[list[str]],
        system: str,
        language_label: str,
        max_new: int,
        params: GenerationParams,
        usage: list[int],
    ) -> list[str]:
        """One partial summary per batch, ``summary_concurrency`` at a time, in order."""
        limit = asyncio.Semaphore(self._settings.summary_concurrency)

        async def one(part: int, batch: list[str]) -> str:
            user = SUMMARY_MAP.format(
                part=part, parts=len(batches), title=title, language=language_label, text="\n\n".join(batch)
            )
            request = self._request(make_dialog(system, (), user), max_new, params)
            pieces: list[str] = []
            finish = ModelFinish("stop")
            async with limit, aclosing(self._model.stream(request)) as stream:
                async for event in stream:
                    if isinstance(event, ModelFinish):
                        finish = event
                    else:
                        pieces.append(event.text)
            usage[0] += (
                finish.prompt_tokens if finish.prompt_tokens is not None else count_tokens(system) + count_tokens(user)
            )
            usage[1] += finish.completion_tokens if finish.completion_tokens is not None else len(pieces)
            return "".join(pieces).strip()

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(i, batch)) for i, batch in enumerate(batches, start=1)]
        summaries = [task.result() for task in tasks]
        if not any(summaries):
            raise Unavailable(f"{self.name} returned empty summaries for every part of the document")
        return [s for s in summaries if s]


def pack(texts: Sequence[str], budget: int) -> list[list[str]]:
    """``texts`` in order, grouped so that each group's estimated tokens fit ``budget``.

    A text bigger than the budget on its own is split at line breaks, then between words.
    """
    pieces: list[str] = []
    for text in texts:
        pieces.extend(split_to_fit(text, budget))
    batches: list[list[str]] = []
    size = 0
    for piece in pieces:
        cost = estimate_tokens(piece) + 2  # the blank line between pieces
        if batches and size + cost <= budget:
            batches[-1].append(piece)
            size += cost
        else:
            batches.append([piece])
            size = cost
    return batches


def split_to_fit(text: str, budget: int) -> list[str]:
    if estimate_tokens(text) <= budget:
        return [text]
    lines = text.split("\n")
    if len(lines) > 1:
        return [piece for group in _greedy(lines, "\n", budget) for piece in split_to_fit(group, budget)]
    words = text.split(" ")
    if len(words) > 1:
        return _greedy(words, " ", budget)
    # One enormous "word" (no spaces, e.g. Korean without spacing or a base64 blob): cut by characters.
    step = max(1, budget // 2)
    return [text[i : i + step] for i in range(0, len(text), step)]


def _greedy(parts: list[str], joiner: str, budget: int) -> list[str]:
    groups: list[str] = []
    current: list[str] = []
    size = 0
    for part in parts:
        cost = estimate_tokens(part)
        if current and size + cost > budget:
            groups.append(joiner.join(current))
            current, size = [], 0
        current.append(part)
        size += cost
    if current:
        groups.append(joiner.join(current))
    return groups
