"""IngestConfig.from_env: defaults, limits, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import ConfigError, Env
from services.ingest.config import IngestConfig


def test_defaults() -> None:
    config = IngestConfig.from_env(Env({}))
    assert config.server.port == 50052
    assert config.data_dir == Path(".ragchat") / "ingest"
    assert (config.retrieval_addr, config.generation_addr) == ("127.0.0.1:50053", "127.0.0.1:50054")
    assert config.max_upload_bytes == 50 * 1024 * 1024
    assert (config.concurrency, config.extract_timeout_seconds, config.extract_memory_mb) == (2, 120.0, 2048)
    assert (config.chunk_tokens, config.chunk_overlap_tokens) == (220, 40)
    assert config.blob_backend == "local"
    assert config.database_path == Path(".ragchat") / "ingest" / "ingest.db"


def test_values_from_the_environment() -> None:
    config = IngestConfig.from_env(
        Env(
            {
                "PORT": "6000",
                "DATA_DIR": "/srv/ingest",
                "RETRIEVAL_ADDR": "retrieval:50053",
                "MAX_UPLOAD_BYTES": "1000",
                "INGEST_CONCURRENCY": "4",
                "CHUNK_TOKENS": "300",
                "CHUNK_OVERLAP_TOKENS": "0",
                "BLOB_BACKEND": "LOCAL",
            }
        )
    )
    assert (config.server.port, config.data_dir, config.retrieval_addr) == (
        6000,
        Path("/srv/ingest"),
        "retrieval:50053",
    )
    assert (config.max_upload_bytes, config.concurrency, config.chunk_tokens) == (1000, 4, 300)
    assert config.chunk_overlap_tokens == 0


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"BLOB_BACKEND": "s3"}, "BLOB_BACKEND='s3' is not available; available values: local"),
        ({"MAX_UPLOAD_BYTES": "lots"}, "MAX_UPLOAD_BYTES='lots' is not a valid int"),
        ({"INGEST_CONCURRENCY": "0"}, "INGEST_CONCURRENCY='0' must be at least 1"),
        ({"CHUNK_TOKENS": "100", "CHUNK_OVERLAP_TOKENS": "100"}, "CHUNK_OVERLAP_TOKENS=100 must be less than"),
        ({"RETRIEVAL_ADDR": "nowhere"}, "RETRIEVAL_ADDR='nowhere' must look like host:port"),
        ({"EXTRACT_TIMEOUT_SECONDS": "0"}, "EXTRACT_TIMEOUT_SECONDS='0' must be at least 1.0"),
    ],
)
def test_bad_values_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        IngestConfig.from_env(Env(environ))
    assert str(caught.value).startswith(message)
