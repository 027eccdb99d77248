"""The ingest service: upload, extraction, chunking, indexing and summaries of documents."""
