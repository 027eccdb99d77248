"""LLMGenerator over a recording fake model: token budget, relaying, usage, map-reduce summaries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import pytest

from services.common.errors import InvalidArgument
from services.common.text import estimate_tokens
from services.generation.backends import DoneEvent, GenerationInput, GenerationParams, Passage, TokenEvent, llm
from services.generation.backends.llm import (
    LLMGenerator,
    LLMSettings,
    ModelDelta,
    ModelEvent,
    ModelFinish,
    ModelRequest,
    count_tokens,
    pack,
)


@dataclass
class FakeModel:
    """Answers every request with ``answer`` split in words; records requests and closings."""

    answer: str = "An answer in words."
    finish: ModelFinish = field(default_factory=lambda: ModelFinish("stop"))
    name: str = "fake:model"
    requests: list[ModelRequest] = field(default_factory=list)
    closed_streams: int = 0
    in_flight: int = 0
    most_in_flight: int = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        self.requests.append(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            for word in self.answer.split(" "):
                yield ModelDelta(word + " ")
            yield self.finish
        finally:
            self.in_flight -= 1
            self.closed_streams += 1


def passages(n: int, words: int) -> tuple[Passage, ...]:
    return tuple(Passage(f"c{i}", f"d{i}", f"T{i}", 1, " ".join(["word"] * words)) for i in range(1, n + 1))


async def drain(gen: AsyncGenerator[TokenEvent | DoneEvent, None]) -> tuple[str, DoneEvent]:
    events = [event async for event in gen]
    done = events[-1]
    assert isinstance(done, DoneEvent)
    return "".join(e.text for e in events[:-1] if isinstance(e, TokenEvent)), done


async def test_relays_tokens_and_estimates_usage_when_the_model_reports_none() -> None:
    model = FakeModel(answer="one two three")
    generator = LLMGenerator(model, LLMSettings(context_window=2048, default_max_new_tokens=100))
    inp = GenerationInput(question="Q?", system="S", passages=passages(2, 5), user_template="{context}\n{question}")
    text, done = await drain(generator.generate(inp))
    assert text == "one two three "
    assert done.completion_tokens == 3
    request = model.requests[0]
    assert done.prompt_tokens == sum(count_tokens(t) for t in request.dialog.texts)
    assert done.used_chunk_ids == ("c1", "c2")
    assert request.max_new_tokens == 100  # the default, since the request asked for 0
    assert model.closed_streams == 1


async def test_reported_usage_wins_over_the_estimate() -> None:
    model = FakeModel(finish=ModelFinish("length", prompt_tokens=77, completion_tokens=9))
    generator = LLMGenerator(model, LLMSettings())
    _, done = await drain(generator.generate(GenerationInput(question="Q?")))
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("length", 77, 9)


async def test_no_context_placeholder_means_no_used_chunks() -> None:
    generator = LLMGenerator(FakeModel(), LLMSettings())
    _, done = await drain(generator.generate(GenerationInput(question="Q?", passages=passages(2, 3))))
    assert done.used_chunk_ids == ()


HISTORY = (
    ("user", "old " * 150),
    ("assistant", "old answer " * 60),
    ("user", "recent question"),
    ("assistant", "recent answer"),
)


async def test_budget_trims_oldest_history_first() -> None:
    model = FakeModel()
    generator = LLMGenerator(model, LLMSettings(context_window=1000, default_max_new_tokens=200))
    inp = GenerationInput(
        question="Now?",
        history=HISTORY,  # type: ignore[arg-type]
        passages=passages(6, 60),
        user_template="{context}\n\n{question}",
    )
    _, done = await drain(generator.generate(inp))
    turns = [content for _, content in model.requests[0].dialog.turns]
    assert turns[:2] == ["recent question", "recent answer"]  # the old exchange went, nothing else
    assert done.used_chunk_ids == tuple(f"c{i}" for i in range(1, 7))


async def test_budget_then_trims_the_lowest_ranked_passages() -> None:
    model = FakeModel()
    window, max_new = 1000, 200
    generator = LLMGenerator(model, LLMSettings(context_window=window, default_max_new_tokens=max_new))
    inp = GenerationInput(
        question="Now?",
        history=HISTORY,  # type: ignore[arg-type]
        passages=passages(6, 100),
        user_template="{context}\n\n{question}",
    )
    _, done = await drain(generator.generate(inp))
    request = model.requests[0]
    assert len(request.dialog.turns) == 1  # all history went before any passage
    kept = len(done.used_chunk_ids)
    assert done.used_chunk_ids == tuple(f"c{i}" for i in range(1, kept + 1)) and 0 < kept < 6
    assert sum(count_tokens(t) for t in request.dialog.texts) <= window - max_new
    assert f"[{kept}] T{kept}" in request.dialog.turns[0][1] and f"[{kept + 1}]" not in request.dialog.turns[0][1]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the generator counts, in order."""
    texts: list[str] = []

    def counting(text: str) -> int:
        texts.append(text)
        return count_tokens(text)

    monkeypatch.setattr(llm, "count_tokens", counting)
    return texts


PASSAGES_INPUT = GenerationInput(
    question="Now?",
    system="Answer from the passages.",
    history=HISTORY,  # type: ignore[arg-type]
    passages=passages(6, 100),
    user_template="{context}\n\n{question}",
)


def test_fitting_counts_each_distinct_text_once(counted: list[str]) -> None:
    """Counting is a pass over the text, on the way to the first token: no text twice."""
    generator = LLMGenerator(FakeModel(), LLMSettings(context_window=1000, default_max_new_tokens=200))
    request, used, size = generator.plan(PASSAGES_INPUT)
    assert counted and len(counted) == len(set(counted))
    assert 0 < len(used) < 6 and size() == sum(count_tokens(t) for t in request.dialog.texts)  # it still trimmed
    assert len(counted) == len(set(counted)), "the final estimate reuses the counts of fitting"


async def test_a_prompt_that_fits_by_its_length_is_counted_only_for_the_usage(counted: list[str]) -> None:
    """A large window: the prompt's length shows it fits, so nothing is counted on the way to the
    first token; the usage's estimate is counted once, after the answer."""
    generator = LLMGenerator(FakeModel(answer="Fine."), LLMSettings(context_window=16384, default_max_new_tokens=200))
    request, used, _ = generator.plan(PASSAGES_INPUT)
    assert counted == [] and len(used) == 6
    events = [event async for event in generator.generate(PASSAGES_INPUT)]
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.prompt_tokens == sum(count_tokens(t) for t in request.dialog.texts)
    assert sorted(counted) == sorted(set(request.dialog.texts)), "each text counted once, after the answer"


async def test_a_question_too_long_for_the_window_is_invalid() -> None:
    generator = LLMGenerator(FakeModel(), LLMSettings(context_window=300, default_max_new_tokens=100))
    with pytest.raises(InvalidArgument, match=r"need about \d+ tokens but fake:model has 200 for the prompt"):
        await drain(generator.generate(GenerationInput(question="why " * 300)))


async def test_max_new_tokens_must_leave_room_for_a_prompt() -> None:
    generator = LLMGenerator(FakeModel(), LLMSettings(context_window=512))
    with pytest.raises(InvalidArgument, match="ask for at most 448"):
        await drain(generator.generate(GenerationInput(question="Q", params=GenerationParams(max_new_tokens=500))))


async def test_closing_early_closes_the_model_stream() -> None:
    model = FakeModel(answer=" ".join(["w"] * 100))
    generator = LLMGenerator(model, LLMSettings())
    stream = generator.generate(GenerationInput(question="Q"))
    assert isinstance(await anext(stream), TokenEvent)
    await stream.aclose()
    assert model.closed_streams == 1


async def test_short_document_is_summarised_in_one_call_in_its_language() -> None:
    model = FakeModel(answer="요약 입니다.")
    generator = LLMGenerator(model, LLMSettings(context_window=4096, default_max_new_tokens=256))
    text, done = await drain(
        generator.summarize("문서", ["첫 번째 부분입니다.", "두 번째 부분입니다."], "", GenerationParams())
    )
    assert text == "요약 입니다. "
    assert len(model.requests) == 1
    request = model.requests[0]
    assert "Korean (한국어)" in request.dialog.system
    assert "<document>\n첫 번째 부분입니다.\n\n두 번째 부분입니다.\n</document>" in request.dialog.turns[0][1]
    assert done.completion_tokens == 2


async def test_long_document_is_map_reduced_with_bounded_concurrency() -> None:
    model = FakeModel(answer="partial summary")
    settings = LLMSettings(context_window=1024, default_max_new_tokens=128, summary_concurrency=2)
    generator = LLMGenerator(model, settings)
    sections = [f"Section {i}. " + "lorem ipsum dolor " * 120 for i in range(12)]
    text, done = await drain(generator.summarize("Long", sections, "en", GenerationParams()))
    *maps, final = model.requests
    assert len(maps) >= 6
    assert all("Summarize part" in r.dialog.turns[0][1] and "in English" in r.dialog.turns[0][1] for r in maps)
    assert "Section 0." in maps[0].dialog.turns[0][1] and "Section 11." in maps[-1].dialog.turns[0][1]
    assert "Combine them into one summary" in final.dialog.turns[0][1]
    assert model.most_in_flight == 2
    assert all(sum(count_tokens(t) for t in r.dialog.texts) <= 1024 - r.max_new_tokens for r in model.requests)
    assert text == "partial summary "
    assert done.completion_tokens == 2 * len(model.requests)  # every call's tokens are counted


def test_pack_keeps_order_and_splits_oversized_sections() -> None:
    texts = ["a " * 10, "b " * 500, "c " * 10]
    batches = pack(texts, 100)
    flat = "".join("".join(batch) for batch in batches).replace(" ", "").replace("\n", "")
    assert flat == "a" * 10 + "b" * 500 + "c" * 10
    assert all(sum(estimate_tokens(t) + 2 for t in batch) <= 100 for batch in batches)
