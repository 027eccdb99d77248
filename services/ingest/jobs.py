"""The ingest job pipeline, run as background tasks detached from the RPC that queued them.

Stages: QUEUED → STORED (both recorded at upload) → EXTRACTING (pages) → CHUNKING →
EMBEDDING (chunks sent to the indexer) → INDEXED → SUMMARISING (summary pieces) → DONE,
or FAILED with a reason and a gRPC status name. Every event is persisted before watchers
are woken, so watching replays the whole story. At most ``concurrency`` jobs run at once;
the others wait for a slot. Jobs that were not terminal when the service stopped are
re-run from the stored file at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from services.common.errors import RagchatError
from services.common.text import detect_language
from services.ingest.backends import (
    BlobStore,
    Chunk,
    Document,
    DocumentStatus,
    Indexer,
    Job,
    JobEvent,
    Stage,
    Summarizer,
)
from services.ingest.backends.registry import Registry
from services.ingest.chunking import chunk_pages
from services.ingest.extraction import NO_TEXT_IN_PDF, ExtractionError
from services.ingest.files import PDF, format_size, sha256_hex, stem_of
from services.ingest.sandbox import Extractor

log = logging.getLogger(__name__)

# Progress events (pages, chunks) are persisted at most this often, plus the last one.
_PROGRESS_INTERVAL_SECONDS = 0.2


def _runs_everywhere_here(job_id: str) -> bool:
    return True


class EventHub:
    """Wakes the watchers of a job when one of its events has been stored.

    With a registry shared by several processes, a job may run in another one, which cannot wake
    this one's watchers: for such a job (``runs_here`` is false) the waiter is also set after
    ``remote_poll_seconds``, so its watchers re-read the store that often.
    """

    def __init__(
        self, *, remote_poll_seconds: float | None = None, runs_here: Callable[[str], bool] | None = None
    ) -> None:
        self._signals: dict[str, asyncio.Event] = {}
        self.closing = False
        self._remote_poll = remote_poll_seconds
        self._runs_here = runs_here if runs_here is not None else _runs_everywhere_here

    def waiter(self, job_id: str) -> asyncio.Event:
        """The event set by the next :meth:`notify` of ``job_id``; take it before reading the store."""
        signal = self._signals.get(job_id)
        if signal is None:
            signal = self._signals[job_id] = asyncio.Event()
            if self._remote_poll is not None and not self._runs_here(job_id):
                asyncio.get_running_loop().call_later(self._remote_poll, self._wake, job_id, signal)
        return signal

    def _wake(self, job_id: str, signal: asyncio.Event) -> None:
        if self._signals.get(job_id) is signal:
            del self._signals[job_id]
        signal.set()

    def notify(self, job_id: str) -> None:
        signal = self._signals.pop(job_id, None)
        if signal is not None:
            signal.set()

    def close(self) -> None:
        self.closing = True
        for signal in self._signals.values():
            signal.set()
        self._signals.clear()


class _Throttle:
    def __init__(self) -> None:
        self._last = 0.0

    def due(self, current: int, total: int) -> bool:
        now = time.monotonic()
        if current >= total or now - self._last >= _PROGRESS_INTERVAL_SECONDS:
            self._last = now
            return True
        return False


class JobRunner:
    def __init__(
        self,
        *,
        registry: Registry,
        blobs: BlobStore,
        extractor: Extractor,
        indexer: Indexer,
        summarizer: Summarizer,
        chunk_tokens: int,
        chunk_overlap_tokens: int,
        concurrency: int,
        summary_timeout_seconds: float,
        summarize: bool = True,
        source_uri: Callable[[str], str] | None = None,
        watch_poll_seconds: float | None = None,
    ) -> None:
        self._registry = registry
        self._blobs = blobs
        self._extractor = extractor
        self._indexer = indexer
        self._summarizer = summarizer
        self._chunk_tokens = chunk_tokens
        self._chunk_overlap_tokens = chunk_overlap_tokens
        self._slots = asyncio.Semaphore(concurrency)
        self._summary_timeout = summary_timeout_seconds
        self._summarize = summarize
        # Where a managed index can read a stored file (S3 URI by blob key); None: nowhere.
        self._source_uri = source_uri
        self._tasks: dict[str, tuple[str, asyncio.Task[None]]] = {}  # doc_id → (job_id, task)
        # watch_poll_seconds: how often watchers re-read a job that runs in another process
        # (None: every job runs here, with a registry of this process's own).
        self.hub = EventHub(remote_poll_seconds=watch_poll_seconds, runs_here=self._runs_here)
        # Called once a document is ready, before DONE is announced; returns how many older
        # versions it replaced.
        self.on_ready: Callable[[Document], Awaitable[int]] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def _runs_here(self, job_id: str) -> bool:
        return any(running == job_id for running, _ in self._tasks.values())

    def running_job(self, doc_id: str) -> str | None:
        entry = self._tasks.get(doc_id)
        return entry[0] if entry is not None else None

    def submit(self, job: Job) -> None:
        """Run ``job`` in the background; it outlives the call that queued it."""
        task = asyncio.create_task(self._run(job), name=f"ingest-job-{job.job_id}")
        self._tasks[job.doc_id] = (job.job_id, task)

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(job.doc_id, ("", None))[1] is done:
                del self._tasks[job.doc_id]

        task.add_done_callback(forget)

    async def cancel_document(self, doc_id: str) -> None:
        """Stop the document's running job, if any, and wait until it has stopped."""
        entry = self._tasks.get(doc_id)
        if entry is None:
            return
        task = entry[1]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def recover(self) -> int:
        """Re-queue the jobs a previous run left unfinished; returns how many."""
        jobs = await self._registry.unfinished_jobs()
        for job in jobs:
            document = await self._registry.get_document(job.doc_id)
            if document is None:
                continue
            await self._registry.restart_job(job.job_id, self.initial_events(job, document, resumed=True))
            await self._registry.update_document(job.doc_id, status=DocumentStatus.PENDING, error="")
            log.info("resuming job", extra={"job_id": job.job_id, "doc_id": job.doc_id})
            self.submit(job)
        return len(jobs)

    async def close(self) -> None:
        """Stop every job (they resume at the next start) and release the watchers."""
        self.hub.close()
        tasks = [task for _, task in self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- events ---------------------------------------------------------------------------

    @staticmethod
    def initial_events(job: Job, document: Document, *, resumed: bool = False) -> list[JobEvent]:
        return [
            JobEvent(
                job.job_id,
                job.doc_id,
                Stage.QUEUED,
                message="resumed after a restart" if resumed else "queued",
            ),
            JobEvent(
                job.job_id,
                job.doc_id,
                Stage.STORED,
                current=document.size_bytes,
                total=document.size_bytes,
                message=f"stored {document.source} ({format_size(document.size_bytes)})",
            ),
        ]

    async def _emit(
        self,
        job: Job,
        stage: Stage,
        *,
        current: int = 0,
        total: int = 0,
        message: str = "",
        summary_delta: str = "",
        error_code: str = "",
        document: Document | None = None,
    ) -> JobEvent:
        event = JobEvent(
            job.job_id,
            job.doc_id,
            stage,
            current=current,
            total=total,
            message=message,
            summary_delta=summary_delta,
            error_code=error_code,
            document=document,
        )
        stored = await self._registry.append_event(event)
        self.hub.notify(job.job_id)
        return stored

    # -- the pipeline ---------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        try:
            async with self._slots:
                await self._pipeline(job)
        except asyncio.CancelledError:
            log.info("job stopped", extra={"job_id": job.job_id, "doc_id": job.doc_id})
            raise
        except ExtractionError as error:
            await self._fail(job, error.code, error.message)
        except RagchatError as error:
            await self._fail(job, error.code, error.message)
        except Exception as error:
            log.exception("job failed unexpectedly", extra={"job_id": job.job_id})
            await self._fail(job, "INTERNAL", f"internal error while ingesting ({type(error).__name__}); see the log")

    async def _fail(self, job: Job, code: str, message: str) -> None:
        log.warning("job failed", extra={"job_id": job.job_id, "doc_id": job.doc_id, "code": code, "reason": message})
        try:
            document = await self._registry.update_document(job.doc_id, status=DocumentStatus.FAILED, error=message)
            await self._emit(job, Stage.FAILED, message=message, error_code=code, document=document)
        except Exception:
            log.exception("could not record the failure of job %s", job.job_id)

    async def _pipeline(self, job: Job) -> None:
        document = await self._registry.get_document(job.doc_id)
        if document is None or document.status is DocumentStatus.DELETING:
            return
        document = await self._registry.update_document(job.doc_id, status=DocumentStatus.PROCESSING, error="")
        if document is None:
            return
        started = time.monotonic()
        data = await self._blobs.get(document.blob_key)
        digest = await asyncio.to_thread(sha256_hex, data)
        if digest != document.sha256:
            raise ExtractionError("DATA_LOSS", "the stored file is damaged (checksum mismatch); upload it again")

        await self._emit(job, Stage.EXTRACTING, message="extracting text")
        pages_throttle = _Throttle()

        async def page_progress(current: int, total: int) -> None:
            if pages_throttle.due(current, total):
                await self._emit(job, Stage.EXTRACTING, current=current, total=total)

        extracted = await self._extractor.extract(document.content_type, data, page_progress)
        text = extracted.text
        language = detect_language(text)
        title = document.title
        if extracted.title and title == stem_of(document.source):
            title = extracted.title

        await self._emit(job, Stage.CHUNKING, message="splitting into chunks")
        chunks = await asyncio.to_thread(
            chunk_pages,
            document.doc_id,
            extracted.pages,
            target_tokens=self._chunk_tokens,
            overlap_tokens=self._chunk_overlap_tokens,
        )
        if not chunks:
            reason = NO_TEXT_IN_PDF if document.content_type == PDF else "the file contains no text to index"
            raise ExtractionError("INVALID_ARGUMENT", reason)
        await self._emit(job, Stage.CHUNKING, current=len(chunks), total=len(chunks))
        document = await self._registry.update_document(
            job.doc_id, title=title, language=language, pages=extracted.page_count, chunks=len(chunks)
        )
        if document is None:
            return

        await self._index(job, document, chunks)
        summary = await self._summarise(job, document, chunks)
        document = await self._registry.update_document(
            job.doc_id, status=DocumentStatus.READY, summary=summary, error=""
        )
        if document is None:
            # Deleted meanwhile by another process, which could not stop this job: take back what
            # was indexed after its deletion had cleared the index.
            await self._indexer.delete(job.owner, job.doc_id)
            return
        replaced = await self.on_ready(document) if self.on_ready is not None else 0
        message = "ready" if not replaced else f"ready; replaced the earlier version of {document.source}"
        await self._emit(job, Stage.DONE, message=message, document=document)
        log.info(
            "document ready",
            extra={
                "job_id": job.job_id,
                "doc_id": job.doc_id,
                "pages": extracted.page_count,
                "chunks": len(chunks),
                "ms": round((time.monotonic() - started) * 1000),
            },
        )

    async def _index(self, job: Job, document: Document, chunks: Sequence[Chunk]) -> None:
        total = len(chunks)
        # current/total count the chunks handed to the indexer: IndexDocument reports nothing until
        # the whole document is embedded and indexed, which INDEXED then announces.
        await self._emit(
            job,
            Stage.EMBEDDING,
            current=0,
            total=total,
            message=f"sending {total} chunks to the indexer, which embeds and indexes them",
        )
        throttle = _Throttle()

        async def chunk_progress(sent: int) -> None:
            if throttle.due(sent, total):
                await self._emit(job, Stage.EMBEDDING, current=sent, total=total)

        try:
            indexed = await self._indexer.index(
                document.owner,
                document.doc_id,
                document.title,
                document.source,
                document.language,
                chunks,
                on_progress=chunk_progress,
                content_type=document.content_type,
                source_uri=self._source_uri(document.blob_key) if self._source_uri is not None else "",
            )
        except Exception as error:
            # The indexer is all-or-nothing; this also removes an earlier version of the document.
            try:
                await self._indexer.delete(document.owner, document.doc_id)
            except Exception:
                log.warning("could not clean up the index after a failure", extra={"doc_id": document.doc_id})
            if isinstance(error, RagchatError):
                raise type(error)(f"indexing failed: {error.message}") from error
            raise
        await self._emit(job, Stage.INDEXED, current=indexed, total=total, message=f"indexed {indexed} chunks")

    async def _summarise(self, job: Job, document: Document, chunks: Sequence[Chunk]) -> str:
        if not self._summarize:
            return ""
        await self._emit(job, Stage.SUMMARISING, message="summarising")
        pieces: list[str] = []
        try:
            async with asyncio.timeout(self._summary_timeout):
                stream = self._summarizer.summarize(document.title, [chunk.text for chunk in chunks], document.language)
                async for piece in stream:
                    if piece:
                        pieces.append(piece)
                        await self._emit(job, Stage.SUMMARISING, summary_delta=piece)
        except Exception as error:
            reason = error.message if isinstance(error, RagchatError) else type(error).__name__
            if isinstance(error, TimeoutError):
                reason = f"no answer within {self._summary_timeout:g} s (SUMMARY_TIMEOUT_SECONDS)"
            log.warning("summary failed", extra={"doc_id": document.doc_id, "reason": reason})
            await self._emit(
                job,
                Stage.SUMMARISING,
                message=f"summary failed: {reason}; the document is indexed and searchable without a summary",
            )
            return ""
        return "".join(pieces).strip()
