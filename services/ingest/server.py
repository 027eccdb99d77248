"""Builds the ingest service: the one place that picks and wires its backends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc.aio
from ragchat.v1 import ingest_pb2, ingest_pb2_grpc

from services.common.server import ServiceApp
from services.ingest.backends import BlobStore, DirectUploads, Indexer, Summarizer
from services.ingest.backends.generation_summarizer import GenerationServiceSummarizer
from services.ingest.backends.local_blob_store import LocalBlobStore
from services.ingest.backends.local_registry import SqliteRegistry
from services.ingest.backends.retrieval_indexer import RetrievalServiceIndexer
from services.ingest.backends.s3_blob_store import S3BlobStore
from services.ingest.config import IngestConfig, S3Config
from services.ingest.core import Ingest
from services.ingest.jobs import JobRunner
from services.ingest.sandbox import Extractor
from services.ingest.service import IngestServicer

SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name


def _s3_blob_store(config: S3Config) -> S3BlobStore:
    from services.common.aws import make_client

    return S3BlobStore(
        lambda: make_client("s3", config.aws),
        bucket=config.bucket,
        prefix=config.prefix,
        sse=config.sse,
        kms_key_id=config.kms_key_id,
    )


def build_app(
    config: IngestConfig,
    *,
    blob_store: BlobStore | None = None,
    indexer: Indexer | None = None,
    summarizer: Summarizer | None = None,
    extractor: Extractor | None = None,
    direct_uploads: DirectUploads | None = None,
) -> ServiceApp:
    """The ingest service with the configured backends; tests pass fakes for any of them."""
    closers: list[Callable[[], Awaitable[None]]] = []
    if blob_store is None:
        if config.s3 is not None:
            s3_store = _s3_blob_store(config.s3)
            blob_store = s3_store
            direct_uploads = direct_uploads or s3_store
        else:
            blob_store = LocalBlobStore(config.blob_dir)
    if indexer is None:
        retrieval = RetrievalServiceIndexer(
            config.retrieval_addr,
            timeout_seconds=config.index_timeout_seconds,
            connect_timeout_seconds=config.peer_connect_timeout_seconds,
        )
        closers.append(retrieval.close)
        indexer = retrieval
    if summarizer is None:
        generation = GenerationServiceSummarizer(
            config.generation_addr,
            timeout_seconds=config.summary_timeout_seconds,
            connect_timeout_seconds=config.peer_connect_timeout_seconds,
        )
        closers.append(generation.close)
        summarizer = generation
    if extractor is None:
        extractor = Extractor(
            timeout_seconds=config.extract_timeout_seconds, memory_mb=config.extract_memory_mb, options=config.parse
        )

    registry = SqliteRegistry(config.database_path)
    runner = JobRunner(
        registry=registry,
        blobs=blob_store,
        extractor=extractor,
        indexer=indexer,
        summarizer=summarizer,
        chunk_tokens=config.chunk_tokens,
        chunk_overlap_tokens=config.chunk_overlap_tokens,
        concurrency=config.concurrency,
        summary_timeout_seconds=config.summary_timeout_seconds,
        summarize=config.summarize,
        source_uri=direct_uploads.uri if direct_uploads is not None else None,
    )
    ingest = Ingest(
        registry=registry,
        blobs=blob_store,
        indexer=indexer,
        runner=runner,
        max_upload_bytes=config.max_upload_bytes,
        direct=direct_uploads,
        upload_expiry_seconds=config.s3.upload_expiry_seconds if config.s3 is not None else 900,
        archive_limits=config.parse.archive_limits,
    )
    servicer = IngestServicer(ingest)

    def register(server: grpc.aio.Server) -> None:
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)

    async def start() -> None:
        await registry.open()
        await ingest.start()

    async def stop() -> None:
        await ingest.close()
        await registry.close()
        for close in closers:
            await close()

    return ServiceApp(name="ingest", service_names=[SERVICE_NAME], register=register, start=start, stop=stop)
