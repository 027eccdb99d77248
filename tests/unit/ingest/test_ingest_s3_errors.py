"""S3BlobStore's requests (validated against the S3 model by botocore's Stubber) and its error mapping."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from services.common.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from services.ingest.backends.s3_blob_store import S3BlobStore


@pytest.fixture
def stubbed() -> Iterator[tuple[S3BlobStore, Stubber]]:
    client: Any = boto3.session.Session().client(
        "s3", region_name="eu-west-2", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    with Stubber(client) as stubber:
        yield S3BlobStore(lambda: client, bucket="docs-bucket", prefix="p/", sse="AES256"), stubber
        stubber.assert_no_pending_responses()


async def test_put_sends_the_encryption_and_the_prefixed_key(stubbed: tuple[S3BlobStore, Stubber]) -> None:
    store, stubber = stubbed
    stubber.add_response(
        "put_object",
        {},
        {"Bucket": "docs-bucket", "Key": "p/o/d/f", "Body": b"data", "ServerSideEncryption": "AES256"},
    )
    await store.put("o/d/f", b"data")


@pytest.mark.parametrize(
    ("code", "status", "error", "message"),
    [
        ("NoSuchBucket", 404, FailedPrecondition, "the S3 bucket docs-bucket does not exist (S3_BUCKET)"),
        ("AccessDenied", 403, PermissionDenied, "the blob store refused to store the file (AccessDenied)"),
        ("SlowDown", 503, Unavailable, "the blob store could not store the file (SlowDown"),
    ],
)
async def test_s3_errors_become_domain_errors(
    stubbed: tuple[S3BlobStore, Stubber], code: str, status: int, error: type[Exception], message: str
) -> None:
    store, stubber = stubbed
    stubber.add_client_error("put_object", service_error_code=code, http_status_code=status)
    with pytest.raises(error) as caught:
        await store.put("o/d/f", b"data")
    assert str(caught.value.args[0]).startswith(message)


async def test_a_missing_object_is_not_found(stubbed: tuple[S3BlobStore, Stubber]) -> None:
    store, stubber = stubbed
    stubber.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
    with pytest.raises(NotFound, match=r"^no stored file o/d/f$"):
        await store.get("o/d/f")
    stubber.add_client_error("head_object", service_error_code="404", http_status_code=404)
    assert await store.stat("o/d/f") is None
