"""The document registry port: documents, pending direct uploads, ingest jobs and their events.

Adapters: :class:`~services.ingest.backends.local_registry.SqliteRegistry` (one process, a file
on the pod's volume) and :class:`~services.ingest.backends.dynamo_registry.DynamoRegistry`
(shared by every ingest pod). Owner scoping is the caller's job: records are looked up by id and
returned with their owner.

Jobs are run by the process that created or recovered them. A shared registry gives that process
a lease on the job; :meth:`Registry.unfinished_jobs` hands a job to exactly one process once its
lease has lapsed (its process died), and only the holder's events are stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from services.ingest.backends import Document, DocumentStatus, Job, JobEvent, PendingUpload


class Registry(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None:
        """Release what this process holds (a shared registry's job leases go back at once)."""
        ...

    # -- documents ------------------------------------------------------------------------

    async def create(self, document: Document, job: Job, events: Sequence[JobEvent]) -> Document:
        """Insert a new document with its first job and events, atomically (timestamps filled in).

        Raises ``AlreadyExists`` when the owner already has a document with the same sha256, even
        when another process is creating it at the same moment.
        """
        ...

    async def add_job(self, job: Job, events: Sequence[JobEvent]) -> None:
        """Another job (a retry) for an existing document, with its first events."""
        ...

    async def get_document(self, doc_id: str) -> Document | None: ...

    async def find_by_sha256(self, owner: str, sha256: str) -> Document | None: ...

    async def find_by_source(self, owner: str, source: str) -> list[Document]:
        """The owner's documents (deleting ones excluded) stored from a file of that name, oldest first."""
        ...

    async def list_documents(self, owner: str) -> list[Document]:
        """The owner's documents (deleting ones excluded), newest first."""
        ...

    async def documents_with_status(self, status: DocumentStatus) -> list[Document]: ...

    async def update_document(self, doc_id: str, **changes: Any) -> Document | None:
        """Apply ``changes`` and return the updated document (None if it no longer exists)."""
        ...

    async def delete_document(self, doc_id: str) -> None:
        """Remove the document, its jobs and their events."""
        ...

    # -- direct uploads -------------------------------------------------------------------

    async def add_upload(self, upload: PendingUpload) -> None: ...

    async def get_upload(self, upload_id: str) -> PendingUpload | None: ...

    async def delete_upload(self, upload_id: str) -> bool: ...

    async def uploads_expired_before(self, moment: float) -> list[PendingUpload]: ...

    # -- jobs and events ------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job | None: ...

    async def latest_job(self, doc_id: str) -> Job | None: ...

    async def unfinished_jobs(self) -> list[Job]:
        """Jobs this process should resume, oldest first: not DONE or FAILED, of documents not being
        deleted, and (with a shared registry) whose lease had lapsed, now leased to this process."""
        ...

    async def append_event(self, event: JobEvent) -> JobEvent:
        """Store ``event`` as the job's next one (its ``seq`` filled in) and advance the job's stage."""
        ...

    async def events_after(self, job_id: str, seq: int) -> list[JobEvent]:
        """The job's stored events with a ``seq`` above ``seq``, in order ([] for an unknown job)."""
        ...

    async def restart_job(self, job_id: str, events: Sequence[JobEvent]) -> None:
        """Forget a job's events (of an interrupted run) and record ``events`` as its new start."""
        ...
