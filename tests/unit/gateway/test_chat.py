"""The chat turn against fakes of retrieval and generation, with the real SQLite stores."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from services.common.config import Env
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from services.gateway import chat
from services.gateway.backends import Done, GenerationRequest, Passage, Token
from services.gateway.backends.sqlite_store import SqliteCallLog, SqliteConversationStore, SqliteDatabase
from services.gateway.config import GatewayConfig
from services.gateway.prompts import ENGLISH, KOREAN

PASSAGES = [
    Passage("d1:0", "d1", "Handguns", "nics.pdf", 1, "Kentucky ran 250,000 handgun checks.", 7.5),
    Passage("d1:1", "d1", "Handguns", "nics.pdf", 1, "Texas ran 100,000 handgun checks.", 5.0),
]


class FakeRetriever:
    name = "fake-retrieval"

    def __init__(self, passages: list[Passage]) -> None:
        self.passages = passages
        self.queries: list[tuple[str, str, int]] = []

    async def search(self, owner: str, query: str, top_k: int, *, timeout: float) -> list[Passage]:
        self.queries.append((owner, query, top_k))
        return self.passages[:top_k]


class FakeGenerator:
    """Streams a fixed answer citing the first passage; can fail or stall after some tokens."""

    name = "fake-generation"

    def __init__(self, fail_after: int | None = None, stall_after: int | None = None) -> None:
        self.requests: list[GenerationRequest] = []
        self.fail_after = fail_after
        self.stall_after = stall_after
        self.closed = False

    async def generate(self, request: GenerationRequest, *, timeout: float) -> AsyncGenerator[Token | Done, None]:
        self.requests.append(request)
        words = ["Kentucky ", "ran ", "250,000 ", "checks ", "[1]."]
        try:
            for i, word in enumerate(words):
                if self.fail_after is not None and i == self.fail_after:
                    raise Unavailable("the generation service is unavailable (connection refused); try again shortly")
                if self.stall_after is not None and i == self.stall_after:
                    await asyncio.sleep(3600)
                yield Token(word)
            used = [request.passages[0].chunk_id] if request.passages else []
            yield Done(
                prompt_tokens=42, completion_tokens=len(words), finish_reason="stop", used_chunk_ids=used, model="fake"
            )
        finally:
            self.closed = True


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SqliteConversationStore, SqliteCallLog]]:
    db = SqliteDatabase(tmp_path / "gateway.db")
    db.open()
    yield SqliteConversationStore(db), SqliteCallLog(db)
    db.close()


def make_engine(
    stores: tuple[SqliteConversationStore, SqliteCallLog],
    retriever: FakeRetriever,
    generator: FakeGenerator,
    **env: str,
) -> chat.ChatEngine:
    config = GatewayConfig.from_env(Env({"DATA_DIR": "/nonexistent", **env}))
    return chat.ChatEngine(config, retriever, generator, stores[0], stores[1])


async def run_turn(
    engine: chat.ChatEngine, question: str, conversation_id: str = "", owner: str = "alice", **options: object
) -> list[chat.ChatEvent]:
    opts = engine.options(
        rag=options.get("rag"),  # type: ignore[arg-type]
        references=options.get("references"),  # type: ignore[arg-type]
        top_k=options.get("top_k"),  # type: ignore[arg-type]
        conversation_mode=options.get("conversation_mode"),  # type: ignore[arg-type]
    )
    return [event async for event in engine.turn(owner, "req-1", conversation_id, question, opts)]


async def test_a_turn_streams_in_order_persists_and_logs_once(stores) -> None:  # type: ignore[no-untyped-def]
    retriever, generator = FakeRetriever(PASSAGES), FakeGenerator()
    events = await run_turn(make_engine(stores, retriever, generator), "How many handgun checks in Kentucky?")

    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Started", "Condensed", *["TokenOut"] * 5, "ReferencesOut", "Finished"]
    started, done, refs = events[0], events[-1], events[-2]
    assert isinstance(started, chat.Started) and isinstance(done, chat.Finished)
    assert isinstance(refs, chat.ReferencesOut)
    assert done.answer == "Kentucky ran 250,000 checks [1]."
    assert [p.chunk_id for p in refs.passages] == ["d1:0"], "only the passage the answer used is referenced"
    assert [p.citation for p in refs.passages] == [1], "numbered as the answer's [n] markers number it"
    assert {"condense", "retrieval", "first_token", "generation", "total"} <= set(done.latency_ms)
    assert retriever.queries == [("alice", "How many handgun checks in Kentucky?", 5)]

    request = generator.requests[0]
    assert request.system == ENGLISH.system and "<documents>" in request.user_template
    assert list(request.passages) == PASSAGES

    conversations, calls = stores
    turns = await conversations.turns("alice", started.conversation_id)
    assert [t.answer for t in turns] == [done.answer]
    records = await calls.for_owner("alice", 10)
    assert len(records) == 1
    assert records[0].status == "OK" and records[0].kind == "chat"
    assert records[0].references == [{"doc_id": "d1", "chunk_id": "d1:0", "page": 1, "score": 7.5}]
    assert records[0].completion_tokens == 5 and records[0].prompt_tokens == 42


async def test_reference_numbers_match_the_answers_markers(stores) -> None:  # type: ignore[no-untyped-def]
    class CitesSecond(FakeGenerator):
        async def generate(self, request: GenerationRequest, *, timeout: float) -> AsyncGenerator[Token | Done, None]:
            yield Token("Texas ran 100,000 checks [2].")
            yield Done(1, 1, "stop", [request.passages[1].chunk_id], "fake")

    events = await run_turn(make_engine(stores, FakeRetriever(PASSAGES), CitesSecond()), "Texas handgun checks?")
    refs = events[-2]
    assert isinstance(refs, chat.ReferencesOut)
    assert [(p.chunk_id, p.citation) for p in refs.passages] == [("d1:1", 2)]


async def test_follow_up_is_condensed_and_carries_history(stores) -> None:  # type: ignore[no-untyped-def]
    retriever, generator = FakeRetriever(PASSAGES), FakeGenerator()
    engine = make_engine(stores, retriever, generator)
    first = await run_turn(engine, "How many handgun checks were run in Kentucky?")
    conversation_id = first[0].conversation_id  # type: ignore[union-attr]

    second = await run_turn(engine, "And in Texas?", conversation_id)

    condensed = second[1]
    assert isinstance(condensed, chat.Condensed)
    assert condensed.question == "And in Texas? (How many handgun checks were run in Kentucky?)"
    assert retriever.queries[-1][1] == condensed.question
    assert generator.requests[-1].history == [
        ("user", "How many handgun checks were run in Kentucky?"),
        ("assistant", "Kentucky ran 250,000 checks [1]."),
    ]
    info = await stores[0].get("alice", conversation_id)
    assert info is not None and info.turn_count == 2


async def test_conversation_mode_off_uses_neither_history_nor_condensing(stores) -> None:  # type: ignore[no-untyped-def]
    retriever, generator = FakeRetriever(PASSAGES), FakeGenerator()
    engine = make_engine(stores, retriever, generator)
    first = await run_turn(engine, "How many handgun checks were run in Kentucky?")
    await run_turn(engine, "And in Texas?", first[0].conversation_id, conversation_mode=False)  # type: ignore[union-attr]
    assert retriever.queries[-1][1] == "And in Texas?"
    assert generator.requests[-1].history == []


async def test_history_window_is_sized_in_tokens(stores) -> None:  # type: ignore[no-untyped-def]
    retriever, generator = FakeRetriever(PASSAGES), FakeGenerator()
    engine = make_engine(stores, retriever, generator, HISTORY_MAX_TOKENS="30")
    cid = ""
    for i in range(4):
        events = await run_turn(engine, f"Question number {i} about handgun checks in Kentucky?", cid)
        cid = events[0].conversation_id  # type: ignore[union-attr]
    history = generator.requests[-1].history
    # Each earlier turn costs ~20 estimated tokens, so only the most recent one fits in 30.
    assert [content for role, content in history if role == "user"] == [
        "Question number 2 about handgun checks in Kentucky?"
    ]


@pytest.mark.parametrize(
    ("question", "prompts"), [("What is the capital of Peru?", ENGLISH), ("페루의 수도는 어디인가요?", KOREAN)]
)
async def test_nothing_relevant_says_so_in_the_question_language(stores, question, prompts) -> None:  # type: ignore[no-untyped-def]
    generator = FakeGenerator()
    events = await run_turn(make_engine(stores, FakeRetriever([]), generator), question)
    done = events[-1]
    assert isinstance(done, chat.Finished)
    assert done.answer == prompts.not_found
    assert done.finish_reason == "no_relevant_documents"
    assert generator.requests == [], "no model call when the documents hold nothing relevant"
    assert isinstance(events[-2], chat.ReferencesOut) and list(events[-2].passages) == []


async def test_fallback_to_the_bare_model_when_configured(stores) -> None:  # type: ignore[no-untyped-def]
    generator = FakeGenerator()
    await run_turn(make_engine(stores, FakeRetriever([]), generator, RAG_NO_ANSWER="model"), "What is a llama?")
    assert len(generator.requests) == 1
    assert generator.requests[0].passages == [] and generator.requests[0].user_template == "{question}"


async def test_relevance_threshold_filters_passages(stores) -> None:  # type: ignore[no-untyped-def]
    generator = FakeGenerator()
    await run_turn(make_engine(stores, FakeRetriever(PASSAGES), generator, RAG_MIN_SCORE="6"), "Kentucky checks?")
    assert [p.chunk_id for p in generator.requests[0].passages] == ["d1:0"]


async def test_rag_off_and_references_off_are_per_request(stores) -> None:  # type: ignore[no-untyped-def]
    retriever, generator = FakeRetriever(PASSAGES), FakeGenerator()
    engine = make_engine(stores, retriever, generator)
    events = await run_turn(engine, "Tell me a story about llamas", rag=False, references=False)
    assert retriever.queries == []
    assert generator.requests[0].passages == []
    assert not any(isinstance(e, chat.ReferencesOut) for e in events)
    events = await run_turn(engine, "How many handgun checks in Kentucky?", top_k=1)
    assert retriever.queries[-1][2] == 1
    assert any(isinstance(e, chat.ReferencesOut) for e in events)


async def test_failure_mid_stream_is_an_error_event_with_no_half_written_turn(stores) -> None:  # type: ignore[no-untyped-def]
    events = await run_turn(make_engine(stores, FakeRetriever(PASSAGES), FakeGenerator(fail_after=2)), "Kentucky?")
    failed = events[-1]
    assert isinstance(failed, chat.Failed) and failed.code == "UNAVAILABLE"
    conversation_id = events[0].conversation_id  # type: ignore[union-attr]
    assert await stores[0].get("alice", conversation_id) is None
    [record] = await stores[1].for_owner("alice", 10)
    assert record.status == "UNAVAILABLE" and "unavailable" in record.error


async def test_client_going_away_logs_exactly_once_and_cancels_generation(stores) -> None:  # type: ignore[no-untyped-def]
    generator = FakeGenerator(stall_after=2)
    engine = make_engine(stores, FakeRetriever(PASSAGES), generator)
    opts = engine.options(None, None, None, None)
    received: list[chat.ChatEvent] = []

    async def consume() -> None:
        async with contextlib.aclosing(engine.turn("alice", "req-9", "", "Kentucky checks?", opts)) as stream:
            async for event in stream:
                received.append(event)

    task = asyncio.create_task(consume())
    while sum(isinstance(e, chat.TokenOut) for e in received) < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert generator.closed, "the generation stream is closed when the caller goes away"
    records = await stores[1].by_request_id("req-9")
    assert len(records) == 1
    assert records[0].status == "CANCELLED" and records[0].answer == "Kentucky ran "
    assert await stores[0].recent("alice", 10) == []


async def test_bad_questions_are_rejected_before_streaming(stores) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(stores, FakeRetriever(PASSAGES), FakeGenerator(), MAX_QUESTION_CHARS="20")
    with pytest.raises(InvalidArgument, match="question is empty"):
        await run_turn(engine, "   ")
    with pytest.raises(InvalidArgument, match="MAX_QUESTION_CHARS"):
        await run_turn(engine, "x" * 21)
    with pytest.raises(InvalidArgument, match="top_k"):
        engine.options(None, None, 0, None)


async def test_another_users_conversation_is_not_found(stores) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(stores, FakeRetriever(PASSAGES), FakeGenerator())
    events = await run_turn(engine, "How many handgun checks in Kentucky?", owner="alice")
    conversation_id = events[0].conversation_id  # type: ignore[union-attr]
    with pytest.raises(NotFound, match=conversation_id):
        await run_turn(engine, "And in Texas?", conversation_id, owner="bob")
    assert await stores[0].recent("bob", 10) == []


async def test_concurrent_turns_do_not_share_state(stores) -> None:  # type: ignore[no-untyped-def]
    class Echo(FakeGenerator):
        async def generate(self, request: GenerationRequest, *, timeout: float) -> AsyncGenerator[Token | Done, None]:
            await asyncio.sleep(0.01)
            yield Token(request.question)
            yield Done(1, 1, "stop", [request.passages[0].chunk_id], "echo")

    owners = [f"user{i}" for i in range(8)]

    class PerOwner(FakeRetriever):
        async def search(self, owner: str, query: str, top_k: int, *, timeout: float) -> list[Passage]:
            await asyncio.sleep(0.005)
            return [replace(PASSAGES[0], chunk_id=f"{owner}:0", doc_id=owner)]

    engine = make_engine(stores, PerOwner([]), Echo())
    results = await asyncio.gather(*(run_turn(engine, f"question of {o}", owner=o) for o in owners))
    for owner, events in zip(owners, results, strict=True):
        refs = next(e for e in events if isinstance(e, chat.ReferencesOut))
        assert [p.doc_id for p in refs.passages] == [owner]
        assert events[-1].answer == f"question of {owner}"  # type: ignore[union-attr]


class DownRetriever(FakeRetriever):
    async def search(self, owner: str, query: str, top_k: int, *, timeout: float) -> list[Passage]:
        self.queries.append((owner, query, top_k))
        raise Unavailable("the retrieval service is unavailable (connection refused); try again shortly")


@pytest.mark.parametrize(
    ("question", "prompts"), [("How many handgun checks?", ENGLISH), ("권총 신원 조회는 몇 건인가요?", KOREAN)]
)
async def test_retrieval_down_answers_without_documents_after_a_notice(stores, question, prompts) -> None:  # type: ignore[no-untyped-def]
    generator = FakeGenerator()
    events = await run_turn(make_engine(stores, DownRetriever([]), generator), question)
    tokens = [e.text for e in events if isinstance(e, chat.TokenOut)]
    assert tokens[0] == prompts.retrieval_unavailable, "the notice comes first, in the question's language"
    request = generator.requests[0]
    assert request.passages == [] and request.system == prompts.system_without_documents
    done = events[-1]
    assert isinstance(done, chat.Finished) and done.answer.startswith(prompts.retrieval_unavailable)
    [record] = await stores[1].for_owner("alice", 10)
    assert record.status == "OK" and "UNAVAILABLE" in str(record.detail["retrieval_error"])


async def test_retrieval_down_fails_the_turn_when_configured(stores) -> None:  # type: ignore[no-untyped-def]
    generator = FakeGenerator()
    engine = make_engine(stores, DownRetriever([]), generator, RETRIEVAL_UNAVAILABLE="fail")
    events = await run_turn(engine, "How many handgun checks?")
    failed = events[-1]
    assert isinstance(failed, chat.Failed) and failed.code == "UNAVAILABLE"
    assert "retrieval service is unavailable" in failed.message
    assert generator.requests == []
    assert await stores[0].recent("alice", 10) == []


async def test_korean_question_gets_korean_prompts_and_korean_condensing(stores) -> None:  # type: ignore[no-untyped-def]
    retriever, generator = FakeRetriever(PASSAGES), FakeGenerator()
    engine = make_engine(stores, retriever, generator)
    first = await run_turn(engine, "서울의 권총 신원 조회는 몇 건인가요?")
    await run_turn(engine, "그럼 부산은?", first[0].conversation_id)  # type: ignore[union-attr]
    assert generator.requests[0].system == KOREAN.system
    assert generator.requests[0].user_template == KOREAN.user_template and "질문:" in KOREAN.user_template
    assert generator.requests[0].language == "ko"
    assert retriever.queries[-1][1] == "그럼 부산은? (서울의 권총 신원 조회는 몇 건인가요?)"


async def test_a_refused_turn_is_logged_once_too(stores) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(stores, FakeRetriever(PASSAGES), FakeGenerator())
    with pytest.raises(NotFound):
        await run_turn(engine, "And in Texas?", "unknown-conversation")
    [record] = await stores[1].for_owner("alice", 10)
    assert record.status == "NOT_FOUND" and record.conversation_id == "unknown-conversation"


async def test_a_failing_call_log_does_not_change_the_answer(stores, caplog) -> None:  # type: ignore[no-untyped-def]
    class BrokenLog:
        async def record(self, record: object) -> None:
            raise ResourceExhausted("the history store is throttling requests even after retries")

    config = GatewayConfig.from_env(Env({"DATA_DIR": "/nonexistent"}))
    engine = chat.ChatEngine(config, FakeRetriever(PASSAGES), FakeGenerator(), stores[0], BrokenLog())  # type: ignore[arg-type]
    # A refused turn's record goes to the call log alone: the caller still hears the real refusal.
    with pytest.raises(NotFound):
        await run_turn(engine, "And in Texas?", "unknown-conversation")
    assert any(r.getMessage() == "call record could not be written" for r in caplog.records)
    # A finished turn's record is written with the turn, in its transaction (not through the call log).
    events = await run_turn(engine, "How many handgun checks in Kentucky?")
    assert isinstance(events[-1], chat.Finished)
    [record] = await stores[1].for_owner("alice", 10)
    assert record.status == "OK" and record.conversation_id == events[0].conversation_id  # type: ignore[union-attr]


async def test_a_client_leaving_after_the_answer_is_saved_changes_neither_turn_nor_record(stores) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(stores, FakeRetriever(PASSAGES), FakeGenerator())
    options = engine.options(None, None, None, None)
    events = engine.turn("alice", "req-1", "", "How many handgun checks in Kentucky?", options)
    async for event in events:
        if isinstance(event, chat.ReferencesOut):
            break  # the UI's Stop, with the whole answer in hand
    await events.aclose()
    [record] = await stores[1].for_owner("alice", 10)
    [conversation] = await stores[0].recent("alice", 10)
    assert record.status == "OK" and record.conversation_id == conversation.conversation_id
    assert len(await stores[0].turns("alice", conversation.conversation_id)) == 1
