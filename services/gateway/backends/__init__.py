"""The gateway's ports: the services it calls and the state it keeps, as Protocols."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Passage:
    chunk_id: str
    doc_id: str
    title: str
    source: str
    page: int
    text: str
    score: float
    heading: str = ""
    char_start: int = 0
    char_end: int = 0
    language: str = ""
    citation: int = 0  # the [n] that cites it in the answer (its 1-based position in the prompt)


@dataclass(frozen=True)
class GenerationRequest:
    system: str
    history: Sequence[tuple[str, str]]  # (role, content), oldest first; role "user" | "assistant"
    passages: Sequence[Passage]
    question: str
    user_template: str
    passage_template: str
    language: str
    max_new_tokens: int


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Done:
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    used_chunk_ids: Sequence[str]
    model: str


class Retriever(Protocol):
    name: str

    async def search(self, owner: str, query: str, top_k: int, *, timeout: float) -> list[Passage]: ...


class Generator(Protocol):
    name: str

    def generate(self, request: GenerationRequest, *, timeout: float) -> AsyncGenerator[Token | Done, None]: ...


@dataclass(frozen=True)
class ConversationInfo:
    conversation_id: str
    title: str
    created_at: float
    updated_at: float
    turn_count: int


@dataclass(frozen=True)
class TurnRecord:
    turn_id: str
    question: str
    condensed_question: str
    answer: str
    references: Sequence[Passage]
    created_at: float


class ConversationStore(Protocol):
    """Conversations of each owner; every method is scoped to ``owner``."""

    async def get(self, owner: str, conversation_id: str) -> ConversationInfo | None: ...

    async def recent(self, owner: str, limit: int) -> list[ConversationInfo]:
        """The owner's conversations, most recently updated first."""
        ...

    async def turns(self, owner: str, conversation_id: str) -> list[TurnRecord]: ...

    async def add_turn(
        self, owner: str, conversation_id: str, title: str, turn: TurnRecord, record: CallRecord | None = None
    ) -> None:
        """Append a finished turn, creating the conversation (with ``title``) if it is new, and write
        its call ``record`` in the same transaction: the turn and its record exist together or not at all."""
        ...

    async def rename(self, owner: str, conversation_id: str, title: str) -> ConversationInfo | None: ...

    async def delete(self, owner: str, conversation_id: str) -> bool: ...


@dataclass
class CallRecord:
    """One record per call (a question or a document operation)."""

    call_id: str
    request_id: str
    owner: str
    kind: str  # chat | upload | delete_document
    created_at: float
    conversation_id: str = ""
    question: str = ""
    condensed_question: str = ""
    answer: str = ""
    references: list[dict[str, object]] = field(default_factory=list)
    backends: dict[str, str] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: str = "OK"
    error: str = ""
    detail: dict[str, object] = field(default_factory=dict)


class CallLog(Protocol):
    async def record(self, record: CallRecord) -> None: ...

    async def for_owner(self, owner: str, limit: int) -> list[CallRecord]: ...

    async def by_request_id(self, request_id: str) -> list[CallRecord]: ...

    async def for_conversation(self, owner: str, conversation_id: str) -> list[CallRecord]:
        """The calls of one of the owner's conversations, oldest first."""
        ...
