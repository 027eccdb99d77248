"""One chat turn: condense, retrieve the user's passages, generate, reference, remember, log.

The engine yields domain events; ``service.py`` turns them into proto messages. Errors found
before the first event (a bad question, an unknown conversation) are raised and become a gRPC
status; errors after the stream started arrive as a ``Failed`` event. Exactly one call record
is written per turn, whatever happens, also when the client goes away mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import dataclass, replace

from services.common.errors import DeadlineExceeded, InvalidArgument, NotFound, RagchatError, Unavailable
from services.common.text import detect_language, estimate_tokens
from services.gateway.backends import (
    CallLog,
    CallRecord,
    ConversationStore,
    Done,
    GenerationRequest,
    Generator,
    Passage,
    Retriever,
    TurnRecord,
)
from services.gateway.condense import condense
from services.gateway.config import GatewayConfig
from services.gateway.prompts import prompts_for

log = logging.getLogger(__name__)

_CONVERSATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ChatOptions:
    rag: bool
    references: bool
    top_k: int
    conversation_mode: bool


@dataclass(frozen=True)
class Started:
    conversation_id: str
    request_id: str
    turn_id: str


@dataclass(frozen=True)
class Condensed:
    question: str


@dataclass(frozen=True)
class TokenOut:
    text: str


@dataclass(frozen=True)
class ReferencesOut:
    passages: Sequence[Passage]


@dataclass(frozen=True)
class Finished:
    prompt_tokens: int
    completion_tokens: int
    latency_ms: dict[str, float]
    finish_reason: str
    answer: str


@dataclass(frozen=True)
class Failed:
    code: str
    message: str


ChatEvent = Started | Condensed | TokenOut | ReferencesOut | Finished | Failed


async def _finish_despite_cancellation(work: Awaitable[None]) -> None:
    """Run ``work`` to the end even if the caller is being cancelled."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _words(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text)


class ChatEngine:
    def __init__(
        self,
        config: GatewayConfig,
        retriever: Retriever,
        generator: Generator,
        conversations: ConversationStore,
        calls: CallLog,
    ) -> None:
        self._config = config
        self._retriever = retriever
        self._generator = generator
        self._conversations = conversations
        self._calls = calls

    def options(
        self, rag: bool | None, references: bool | None, top_k: int | None, conversation_mode: bool | None
    ) -> ChatOptions:
        if top_k is not None and not 1 <= top_k <= 100:
            raise InvalidArgument(f"top_k must be between 1 and 100, got {top_k}")
        return ChatOptions(
            rag=True if rag is None else rag,
            references=True if references is None else references,
            top_k=self._config.top_k if top_k is None else top_k,
            conversation_mode=True if conversation_mode is None else conversation_mode,
        )

    def _history_window(self, turns: Sequence[TurnRecord]) -> list[tuple[str, str]]:
        """The most recent turns that fit in HISTORY_MAX_TOKENS, oldest first."""
        budget = self._config.history_max_tokens
        kept: list[TurnRecord] = []
        for turn in reversed(turns):
            cost = estimate_tokens(turn.question) + estimate_tokens(turn.answer)
            if cost > budget:
                break
            budget -= cost
            kept.append(turn)
        history: list[tuple[str, str]] = []
        for turn in reversed(kept):
            history.extend((("user", turn.question), ("assistant", turn.answer)))
        return history

    async def turn(
        self, owner: str, request_id: str, conversation_id: str, question: str, options: ChatOptions
    ) -> AsyncGenerator[ChatEvent, None]:
        """The events of one turn. Exactly one call record is written, whatever happens: also when
        the turn is refused before it starts (that error is raised), fails later (a ``Failed``
        event) or is abandoned by its caller."""
        started_at = time.perf_counter()
        turn_id = uuid.uuid4().hex
        question = question.strip()
        record = CallRecord(
            call_id=turn_id,
            request_id=request_id,
            owner=owner,
            kind="chat",
            created_at=time.time(),
            conversation_id=conversation_id,
            question=question,
            backends={"retrieval": self._retriever.name, "generation": self._generator.name},
        )
        streaming = False
        recorded = False
        try:
            if not question:
                raise InvalidArgument("question is empty: type a question")
            if len(question) > self._config.max_question_chars:
                raise InvalidArgument(
                    f"question is {len(question)} characters; the limit is {self._config.max_question_chars} "
                    "(MAX_QUESTION_CHARS)"
                )
            earlier: list[TurnRecord] = []
            title = question[:80]
            if conversation_id:
                if not _CONVERSATION_ID.match(conversation_id):
                    raise InvalidArgument("conversation_id must be 1-64 letters, digits, '-' or '_'")
                info = await self._conversations.get(owner, conversation_id)
                if info is None:
                    raise NotFound(f"no conversation {conversation_id!r}")
                title = info.title
                earlier = await self._conversations.turns(owner, conversation_id)
            else:
                conversation_id = record.conversation_id = uuid.uuid4().hex
            streaming = True
            yield Started(conversation_id=conversation_id, request_id=request_id, turn_id=turn_id)
            used: list[Passage] = []  # per turn: filled by _answer with the passages the answer used
            async for event in self._answer(question, owner, options, earlier, record, started_at, used):
                yield event
            record.latency_ms["total"] = round((time.perf_counter() - started_at) * 1000, 2)
            # The turn and its call record are written in one transaction: a gateway killed here
            # leaves both or neither, and a client leaving after this point changes neither.
            saving = asyncio.ensure_future(
                self._conversations.add_turn(
                    owner,
                    conversation_id,
                    title,
                    TurnRecord(
                        turn_id=turn_id,
                        question=question,
                        condensed_question=record.condensed_question,
                        answer=record.answer,
                        references=used,
                        created_at=record.created_at,
                    ),
                    record,
                )
            )
            try:
                await asyncio.shield(saving)
            except asyncio.CancelledError:
                await saving  # the turn is saved with its record even when the caller leaves now
                recorded = True
                raise
            recorded = True
            if options.references:
                yield ReferencesOut(used)
            yield Finished(
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                latency_ms=dict(record.latency_ms),
                finish_reason=str(record.detail.get("finish_reason", "stop")),
                answer=record.answer,
            )
        except RagchatError as error:
            record.status, record.error = error.code, error.message
            if not streaming:
                raise
            log.warning("chat turn failed", extra={"code": error.code, "error": error.message})
            yield Failed(code=error.code, message=error.message)
        except (asyncio.CancelledError, GeneratorExit):
            if not recorded:
                record.status, record.error = "CANCELLED", "the client went away before the answer was complete"
            raise
        except Exception as error:
            if recorded:
                raise
            record.status, record.error = "INTERNAL", repr(error)
            raise
        finally:
            if not recorded:
                record.latency_ms.setdefault("total", round((time.perf_counter() - started_at) * 1000, 2))
                await _finish_despite_cancellation(self._write_record(record))

    async def _write_record(self, record: CallRecord) -> None:
        """Write the call record; a store that fails does not change what the caller was told."""
        try:
            await self._calls.record(record)
        except Exception as error:
            log.error(
                "call record could not be written",
                extra={
                    "call_id": record.call_id,
                    "owner": record.owner,
                    "kind": record.kind,
                    "status": record.status,
                    "error": getattr(error, "message", repr(error)),
                },
            )

    async def _answer(
        self,
        question: str,
        owner: str,
        options: ChatOptions,
        earlier: Sequence[TurnRecord],
        record: CallRecord,
        started_at: float,
        used: list[Passage],
    ) -> AsyncGenerator[ChatEvent, None]:
        language = detect_language(question)
        prompts = prompts_for(language)
        if options.conversation_mode:
            standalone = condense(question, [(t.question, t.condensed_question) for t in earlier])
            history = self._history_window(earlier)
        else:
            standalone, history = question, []
        record.condensed_question = standalone
        record.latency_ms["condense"] = round((time.perf_counter() - started_at) * 1000, 2)
        yield Condensed(standalone)

        passages: list[Passage] = []
        notice = ""
        if options.rag:
            t0 = time.perf_counter()
            try:
                found = await self._retriever.search(
                    owner, standalone, options.top_k, timeout=self._config.retrieval_timeout
                )
            except (Unavailable, DeadlineExceeded) as error:
                if self._config.retrieval_unavailable == "fail":
                    raise
                log.warning("retrieval failed; answering without documents", extra={"error": error.message})
                record.detail["retrieval_error"] = f"{error.code}: {error.message}"
                notice, found = prompts.retrieval_unavailable, []
            record.latency_ms["retrieval"] = round((time.perf_counter() - t0) * 1000, 2)
            passages = [p for p in found if p.score >= self._config.min_relevance]
            record.detail["retrieved"] = len(found)
            if not passages and not notice and self._config.no_answer == "refuse":
                record.answer = prompts.not_found
                record.detail["finish_reason"] = "no_relevant_documents"
                record.latency_ms["first_token"] = round((time.perf_counter() - started_at) * 1000, 2)
                for word in _words(prompts.not_found):
                    yield TokenOut(word)
                return

        request = GenerationRequest(
            system=prompts.system if passages else prompts.system_without_documents,
            history=history,
            passages=passages,
            question=standalone,
            user_template=prompts.user_template if passages else "{question}",
            passage_template=prompts.passage_template,
            language=language,
            max_new_tokens=self._config.max_new_tokens,
        )
        t0 = time.perf_counter()
        pieces: list[str] = []
        if notice:
            record.detail["notice"] = "retrieval_unavailable"
            pieces.append(notice)
            record.answer = notice
            record.latency_ms["first_token"] = round((time.perf_counter() - started_at) * 1000, 2)
            yield TokenOut(notice)
        done: Done | None = None
        async with contextlib.aclosing(
            self._generator.generate(request, timeout=self._config.generation_timeout)
        ) as stream:
            async for event in stream:
                if isinstance(event, Done):
                    done = event
                    continue
                record.latency_ms.setdefault("first_token", round((time.perf_counter() - started_at) * 1000, 2))
                pieces.append(event.text)
                record.answer = "".join(pieces)
                yield TokenOut(event.text)
        record.latency_ms["generation"] = round((time.perf_counter() - t0) * 1000, 2)
        if done is None:
            raise RagchatError("the generation service ended the answer without finishing it")
        record.answer = "".join(pieces)
        record.prompt_tokens, record.completion_tokens = done.prompt_tokens, done.completion_tokens
        record.backends["model"] = done.model
        record.detail["finish_reason"] = done.finish_reason
        used_ids = set(done.used_chunk_ids)
        used.extend(replace(p, citation=n) for n, p in enumerate(passages, start=1) if p.chunk_id in used_ids)
        record.references = [
            {"doc_id": p.doc_id, "chunk_id": p.chunk_id, "page": p.page, "score": round(p.score, 4)} for p in used
        ]
