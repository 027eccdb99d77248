"""Users driving the gateway, and the ledger of what each call got and how long it took.

Every call has a deadline: the gRPC deadline of the client (``deadline``) and, around it, an
``asyncio.timeout`` a few seconds longer, so even a stream the server never ends is cut and
recorded as ``HANG``. An outcome's ``seconds`` is the time to a definite answer: the response,
the last event of a stream, or the status it failed with.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ragchat.v1 import common_pb2, retrieval_pb2

from services.clients.errors import RagchatClientError
from services.clients.gateway import GatewayClient
from tests.reliability.reliability_corpus import SampleDocument

_T = TypeVar("_T")

HANG = "HANG"
OK = "OK"
# Slack of the outer timeout over the gRPC deadline.
_SLACK_SECONDS = 5.0


@dataclass(frozen=True)
class Outcome:
    kind: str  # upload | watch | chat | search | list | delete
    user: str
    code: str  # OK, a gRPC status name, or HANG
    seconds: float
    at: float  # time.monotonic() when the call started
    message: str = ""


@dataclass(frozen=True)
class Ack:
    """An upload the gateway acknowledged with a document id."""

    user: str
    doc_id: str
    job_id: str
    document: SampleDocument
    at: float


@dataclass(frozen=True)
class CompletedTurn:
    user: str
    conversation_id: str
    turn_id: str
    references: tuple[str, ...]  # doc ids


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100) of ``values``; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p95_ms": round(percentile(values, 95) * 1000, 1),
        "p99_ms": round(percentile(values, 99) * 1000, 1),
        "max_ms": round(max(values, default=math.nan) * 1000, 1),
    }


@dataclass
class Ledger:
    outcomes: list[Outcome] = field(default_factory=list)
    acknowledged: dict[str, Ack] = field(default_factory=dict)
    completed: list[CompletedTurn] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    whole_turn: list[float] = field(default_factory=list)
    upload_to_ready: list[float] = field(default_factory=list)

    def codes(self, kind: str | None = None) -> Counter[str]:
        return Counter(o.code for o in self.outcomes if kind is None or o.kind == kind)

    def calls(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind)

    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.code != OK]

    def worst(self, kind: str | None = None) -> float:
        return max((o.seconds for o in self.outcomes if kind is None or o.kind == kind), default=0.0)


class Actor:
    """One user of the gateway; every method makes one call and records its outcome."""

    def __init__(
        self,
        target: str,
        user: str,
        ledger: Ledger,
        *,
        token: str | None = None,
        deadline: float = 30.0,
        watch_deadline: float = 180.0,
    ) -> None:
        self.user = user
        self.ledger = ledger
        self.deadline = deadline
        self.watch_deadline = watch_deadline
        # Token mode: the user id is not sent (the token says who it is).
        self.client = GatewayClient(
            target, user=None if token else user, token=token, timeout=deadline, chat_timeout=deadline
        )

    async def close(self) -> None:
        await self.client.close()

    def _record(self, kind: str, code: str, started: float, message: str = "") -> None:
        self.ledger.outcomes.append(Outcome(kind, self.user, code, time.monotonic() - started, started, message))

    async def _timed(self, kind: str, work: Awaitable[_T], limit: float | None = None) -> _T | None:
        started = time.monotonic()
        try:
            async with asyncio.timeout((limit or self.deadline) + _SLACK_SECONDS):
                result = await work
        except RagchatClientError as error:
            self._record(kind, error.code, started, error.message)
            return None
        except TimeoutError:
            self._record(kind, HANG, started)
            return None
        self._record(kind, OK, started)
        return result

    async def upload(self, document: SampleDocument) -> Ack | None:
        started = time.monotonic()
        response = await self._timed("upload", self.client.upload(document.filename, document.data))
        if response is None:
            return None
        ack = Ack(self.user, response.doc_id, response.job_id, document, started)
        self.ledger.acknowledged[ack.doc_id] = ack
        return ack

    async def watch(self, ack: Ack) -> common_pb2.IngestEvent | None:
        """The job's events until its terminal one (returned); None if the stream failed first."""

        async def follow() -> common_pb2.IngestEvent | None:
            last = None
            async for event in self.client.watch_job(ack.job_id):
                last = event
            return last

        return await self._timed("watch", follow(), self.watch_deadline)

    async def until_terminal(self, ack: Ack, *, within: float) -> common_pb2.IngestEvent | None:
        """Watch again after each broken stream (a service restarting) until DONE or FAILED, for ``within`` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            event = await self.watch(ack)
            if event is not None and event.stage in (common_pb2.INGEST_STAGE_DONE, common_pb2.INGEST_STAGE_FAILED):
                if event.stage == common_pb2.INGEST_STAGE_DONE:
                    self.ledger.upload_to_ready.append(time.monotonic() - ack.at)
                return event
            await asyncio.sleep(0.3)
        return None

    async def ask(self, question: str, conversation_id: str = "") -> CompletedTurn | None:
        """One chat turn; the turn when it completed (``done`` arrived), else None."""
        started = time.monotonic()
        first: float | None = None
        conversation = turn_id = ""
        references: tuple[str, ...] = ()
        done = False

        async def stream() -> None:
            nonlocal first, conversation, turn_id, references, done
            async for event in self.client.chat(question, conversation_id=conversation_id):
                match event.WhichOneof("event"):
                    case "started":
                        conversation, turn_id = event.started.conversation_id, event.started.turn_id
                    case "token":
                        if first is None:
                            first = time.monotonic() - started
                    case "references":
                        references = tuple(p.doc_id for p in event.references.passages)
                    case "done":
                        done = True

        await self._timed("chat", stream())
        if not done:
            return None
        self.ledger.whole_turn.append(time.monotonic() - started)
        if first is not None:
            self.ledger.first_token.append(first)
        turn = CompletedTurn(self.user, conversation, turn_id, references)
        self.ledger.completed.append(turn)
        return turn

    async def search(
        self,
        query: str,
        doc_ids: Sequence[str] = (),
        *,
        top_k: int = 5,
        mode: retrieval_pb2.SearchMode.ValueType = retrieval_pb2.SEARCH_MODE_UNSPECIFIED,
    ) -> list[common_pb2.Passage] | None:
        return await self._timed("search", self.client.search(query, top_k=top_k, doc_ids=doc_ids, mode=mode))

    async def documents(self) -> list[common_pb2.Document] | None:
        return await self._timed("list", self.client.list_documents())

    async def delete(self, doc_id: str) -> bool:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.deadline + _SLACK_SECONDS):
                await self.client.delete_document(doc_id)
        except RagchatClientError as error:
            self._record("delete", error.code, started, error.message)
            return False
        except TimeoutError:
            self._record("delete", HANG, started)
            return False
        self._record("delete", OK, started)
        return True
