"""The whole suite as processes for the reliability tests, and what they read back from it.

* :func:`running_suite` starts the four services (and optionally the web UI) the way
  ``ragchat up`` does (:class:`ui.supervisor.Suite`), on free ports, with a short restart
  window so a service killed again and again is restarted after the first backoff (0.5 s).
* :func:`kill9` sends SIGKILL to one service and waits until the supervisor has it serving again.
* :class:`RssSampler` samples each service's resident memory over time (``/proc/<pid>/status``).
* The readers open the services' SQLite files read-only while they run (WAL mode lets a
  reader see the last committed state): the ingest registry, the retrieval index and the
  gateway's history and call log; the ``*_problems`` functions turn them into the list of
  broken invariants (empty when everything holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ui.supervisor import Suite, SuiteConfig, SuiteFailed, SuitePorts

SERVICES = ("gateway", "ingest", "retrieval", "generation")
READY = "ready"
FAILED = "failed"
TERMINAL = frozenset({READY, FAILED})


@dataclass
class RunningSuite:
    suite: Suite
    home: Path
    console: io.StringIO

    @property
    def gateway(self) -> str:
        return self.suite.config.address("gateway")

    @property
    def ui_url(self) -> str:
        return self.suite.config.ui_url

    def pid(self, name: str) -> int:
        return self.suite.pids[name]

    def logs(self) -> dict[str, str]:
        """Every child's log file, by name."""
        folder = self.home / "logs"
        return {path.stem: path.read_text(encoding="utf-8", errors="replace") for path in sorted(folder.glob("*.log"))}


@contextlib.asynccontextmanager
async def running_suite(
    home: Path, env: Mapping[str, str] | None = None, *, with_ui: bool = False, start_timeout: float = 120.0
) -> AsyncIterator[RunningSuite]:
    """The suite with ``env`` on top of this process's environment; stopped (SIGTERM) on exit."""
    environ = dict(os.environ, SHUTDOWN_GRACE_SECONDS="2", GRADIO_ANALYTICS_ENABLED="False")
    environ.update(env or {})
    console = io.StringIO()
    for attempt in range(3):
        config = SuiteConfig(
            home=home,
            ports=SuitePorts.free(),
            with_ui=with_ui,
            start_timeout=start_timeout,
            grace_seconds=10.0,
            # Restarts older than a second are forgotten: every kill is followed by the first backoff.
            max_restarts=5,
            restart_window=1.0,
        )
        suite = Suite.for_config(config, environ, console=console)
        try:
            await suite.start()
        except SuiteFailed:
            # Another process took one of the free ports between the probe and the start.
            if attempt == 2:
                raise
            continue
        break
    try:
        await suite.wait_ready(timeout=start_timeout * 5)
        yield RunningSuite(suite, home, console)
    finally:
        await suite.stop()


async def kill9(running: RunningSuite, name: str, *, timeout: float = 120.0) -> float:
    """SIGKILL ``name``; returns the seconds until the supervisor had the whole suite serving again."""
    old = running.pid(name)
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    deadline = killed_at + timeout
    while running.suite.pids.get(name) in (old, None):
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} was not restarted within {timeout:g} s:\n{running.console.getvalue()}")
        await asyncio.sleep(0.05)
    await running.suite.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
    return time.monotonic() - killed_at


# -- memory ----------------------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MiB (None if it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


@dataclass
class RssSeries:
    """(seconds since the start, MiB) samples of one service."""

    samples: list[tuple[float, float]] = field(default_factory=list)

    def peak_between(self, start: float, end: float) -> float:
        """The highest sample taken between ``start`` and ``end`` seconds."""
        return max(value for t, value in self.samples if start <= t <= end)

    def every(self, seconds: float) -> list[float]:
        """One sample (MiB, rounded) per ``seconds``, for the report."""
        kept: list[float] = []
        due = 0.0
        for t, value in self.samples:
            if t >= due:
                kept.append(round(value))
                due = t + seconds
        return kept

    @property
    def start(self) -> float:
        return self.samples[0][1]

    @property
    def peak(self) -> float:
        return max(value for _, value in self.samples)

    @property
    def end(self) -> float:
        return self.samples[-1][1]


class RssSampler:
    """Samples the RSS of every running service every ``interval`` seconds until stopped."""

    def __init__(self, running: RunningSuite, interval: float = 0.5) -> None:
        self._running = running
        self._interval = interval
        self._started = time.monotonic()
        self.series: dict[str, RssSeries] = {name: RssSeries() for name in SERVICES}
        self._task: asyncio.Task[None] | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def sample(self) -> None:
        now = self.elapsed()
        for name, pid in self._running.suite.pids.items():
            if name in self.series and (value := rss_mb(pid)) is not None:
                self.series[name].samples.append((now, value))

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._loop(), name="rss-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()


# -- the stores, read-only -------------------------------------------------------------------


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        yield connection
    finally:
        connection.close()


@dataclass(frozen=True)
class RegisteredDocument:
    doc_id: str
    owner: str
    source: str
    status: str
    chunks: int
    error: str


@dataclass(frozen=True)
class IndexedDocument:
    owner: str
    doc_id: str
    declared: int  # documents.chunk_count
    chunks: int  # rows in chunks
    vectors: int  # rows in chunk_vectors


def registry(home: Path) -> dict[str, RegisteredDocument]:
    """The ingest registry's documents, by doc id (status in lower case)."""
    with read_only(home / "ingest" / "ingest.db") as db:
        rows = db.execute("SELECT doc_id, owner, source, status, chunks, error FROM documents").fetchall()
    return {row[0]: RegisteredDocument(row[0], row[1], row[2], row[3].lower(), row[4], row[5]) for row in rows}


def index(home: Path) -> dict[str, IndexedDocument]:
    """The local index's documents (its SQLite file, the source of truth), by doc id."""
    path = home / "retrieval" / "index.db"
    if not path.exists():
        return {}
    with read_only(path) as db:
        rows = db.execute(
            "SELECT o.owner, d.doc_id, d.chunk_count,"
            " (SELECT count(*) FROM chunks c WHERE c.doc_key = d.doc_key),"
            " (SELECT count(*) FROM chunk_vectors v JOIN chunks c ON c.chunk_key = v.chunk_key"
            "  WHERE c.doc_key = d.doc_key)"
            " FROM documents d JOIN owners o ON o.owner_key = d.owner_key"
        ).fetchall()
        (orphans,) = db.execute(
            "SELECT count(*) FROM chunks WHERE doc_key NOT IN (SELECT doc_key FROM documents)"
        ).fetchone()
    if orphans:
        raise AssertionError(f"{orphans} chunks of no document in the index")
    return {row[1]: IndexedDocument(*row) for row in rows}


def index_problems(indexed: Mapping[str, IndexedDocument]) -> list[str]:
    """Documents whose chunks and vectors disagree with each other: half-indexed."""
    return [
        f"{doc.doc_id}: declares {doc.declared} chunks, holds {doc.chunks} chunks and {doc.vectors} vectors"
        for doc in indexed.values()
        if not doc.declared == doc.chunks == doc.vectors
    ]


def document_problems(
    registered: Mapping[str, RegisteredDocument], indexed: Mapping[str, IndexedDocument]
) -> list[str]:
    """Once every job has settled: a READY document has all its chunks indexed, any other none."""
    problems = index_problems(indexed)
    for doc in registered.values():
        held = indexed.get(doc.doc_id)
        if doc.status not in TERMINAL:
            problems.append(f"{doc.doc_id} ({doc.source}) is still {doc.status}")
        elif doc.status == READY and (held is None or held.chunks != doc.chunks or doc.chunks == 0):
            problems.append(
                f"{doc.doc_id} ({doc.source}) is ready with {doc.chunks} chunks but the index holds "
                f"{held.chunks if held else 0}"
            )
        elif doc.status == FAILED and held is not None:
            problems.append(f"{doc.doc_id} ({doc.source}) failed ({doc.error}) but {held.chunks} chunks are indexed")
        elif doc.status == FAILED and not doc.error.strip():
            problems.append(f"{doc.doc_id} ({doc.source}) failed without a reason")
        if held is not None and held.owner != doc.owner:
            problems.append(f"{doc.doc_id} is indexed for {held.owner!r}, registered for {doc.owner!r}")
    problems.extend(
        f"{doc_id} is indexed but not registered (owner {held.owner!r})"
        for doc_id, held in indexed.items()
        if doc_id not in registered
    )
    return problems


@dataclass(frozen=True)
class StoredTurn:
    owner: str
    conversation_id: str
    seq: int
    turn_id: str


@dataclass(frozen=True)
class LoggedCall:
    call_id: str
    owner: str
    kind: str
    status: str
    conversation_id: str


@dataclass
class GatewayTables:
    turns: list[StoredTurn]
    turn_counts: dict[tuple[str, str], int]  # (owner, conversation) → conversations.turn_count
    calls: list[LoggedCall]


def gateway_tables(home: Path) -> GatewayTables:
    with read_only(home / "gateway" / "gateway.db") as db:
        turns = [StoredTurn(*row) for row in db.execute("SELECT owner, conversation_id, seq, turn_id FROM turns")]
        counts = {
            (row[0], row[1]): row[2]
            for row in db.execute("SELECT owner, conversation_id, turn_count FROM conversations")
        }
        calls = [
            LoggedCall(*row) for row in db.execute("SELECT call_id, owner, kind, status, conversation_id FROM calls")
        ]
    return GatewayTables(turns, counts, calls)


def history_problems(tables: GatewayTables) -> list[str]:
    """Every stored turn has exactly one OK chat record and the reverse; conversations hold whole turns."""
    problems: list[str] = []
    chat_calls: dict[str, list[LoggedCall]] = {}
    for call in tables.calls:
        if call.kind == "chat":
            chat_calls.setdefault(call.call_id, []).append(call)
    turn_ids = {turn.turn_id for turn in tables.turns}
    for turn in tables.turns:
        records = chat_calls.get(turn.turn_id, [])
        if len(records) != 1 or records[0].status != "OK":
            problems.append(
                f"turn {turn.turn_id} of {turn.owner}/{turn.conversation_id} has call records "
                f"{[r.status for r in records]} (expected exactly one OK)"
            )
    problems.extend(
        f"call {call_id} ({calls[0].owner}) is OK but its turn is not stored"
        for call_id, calls in chat_calls.items()
        if calls[0].status == "OK" and call_id not in turn_ids
    )
    seqs: dict[tuple[str, str], list[int]] = {}
    for turn in tables.turns:
        seqs.setdefault((turn.owner, turn.conversation_id), []).append(turn.seq)
    for key, numbers in seqs.items():
        if sorted(numbers) != list(range(len(numbers))):
            problems.append(f"conversation {key} has turns {sorted(numbers)}")
        if tables.turn_counts.get(key) != len(numbers):
            problems.append(f"conversation {key} counts {tables.turn_counts.get(key)} turns, holds {len(numbers)}")
    problems.extend(
        f"conversation {key} counts {count} turns, holds none"
        for key, count in tables.turn_counts.items()
        if key not in seqs
    )
    return problems
