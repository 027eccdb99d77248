"""Blob store in Amazon S3: server-side encryption, keys under a prefix and the owner's folder,
presigned PUT URLs so clients upload straight to the bucket.

Keys come from the service (``<owner key>/<doc_id>/...``), never from user input, and are
checked like the local store's: no ``..``, no empty or odd components, so nothing can
reach outside ``S3_PREFIX``. boto3 is imported (through the client factory) only when the
store is first used; its blocking calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable
from services.ingest.backends import PresignedPut, StoredObject

_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_DEPTH = 8
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_DENIED = frozenset({"403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"})


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class S3BlobStore:
    """``s3://<bucket>/<prefix><key>``, every object encrypted at rest (SSE-S3 or SSE-KMS)."""

    def __init__(
        self,
        client_factory: Callable[[], Any],
        *,
        bucket: str,
        prefix: str = "",
        sse: str = "AES256",
        kms_key_id: str | None = None,
    ) -> None:
        if sse not in ("AES256", "aws:kms"):
            raise ValueError(f"unknown server-side encryption {sse!r}")
        if sse == "aws:kms" and not kms_key_id:
            raise ValueError("aws:kms encryption needs a KMS key id")
        self._factory = client_factory
        self._bucket = bucket
        self._prefix = prefix
        self._sse = sse
        self._kms_key_id = kms_key_id
        self._client: Any = None
        self._presigner: Any = None
        self._lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def _signer(self) -> Any:
        """A client like the store's that signs URLs with SigV4 (botocore would use SigV2 in us-east-1,
        which buckets made since 2020 refuse)."""
        with self._lock:
            if self._presigner is None:
                import boto3
                from botocore.config import Config

                client = self._client if self._client is not None else self._factory()
                self._client = client
                endpoint = client.meta.endpoint_url
                self._presigner = boto3.session.Session().client(
                    "s3",
                    region_name=client.meta.region_name,
                    # An override (AWS_ENDPOINT_URL) is kept; AWS's own endpoints are left to botocore.
                    endpoint_url=None if ".amazonaws.com" in endpoint else endpoint,
                    config=client.meta.config.merge(Config(signature_version="s3v4")),
                )
            return self._presigner

    def object_key(self, key: str) -> str:
        parts = key.split("/")
        if len(parts) > _MAX_DEPTH or not all(_COMPONENT.match(part) and ".." not in part for part in parts):
            raise InvalidArgument(f"invalid blob key {key!r}")
        return self._prefix + key

    def uri(self, key: str) -> str:
        return f"s3://{self._bucket}/{self.object_key(key)}"

    def _encryption(self) -> dict[str, str]:
        params = {"ServerSideEncryption": self._sse}
        if self._kms_key_id:
            params["SSEKMSKeyId"] = self._kms_key_id
        return params

    def _failure(self, error: Exception, action: str) -> Exception:
        code = _error_code(error)
        where = f"s3://{self._bucket}/{self._prefix}"
        if code in _DENIED:
            return PermissionDenied(f"the blob store refused to {action} ({code}); check the IAM policy for {where}")
        if code == "NoSuchBucket":
            return FailedPrecondition(f"the S3 bucket {self._bucket} does not exist (S3_BUCKET)")
        return Unavailable(f"the blob store could not {action} ({code or type(error).__name__}: {error})")

    async def _run(self, action: str, function: Callable[[], Any]) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(function)
        except (ClientError, BotoCoreError) as error:
            raise self._failure(error, action) from None

    # -- BlobStore ------------------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> None:
        name = self.object_key(key)
        await self._run(
            "store the file",
            lambda: self._s3().put_object(Bucket=self._bucket, Key=name, Body=data, **self._encryption()),
        )

    async def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        name = self.object_key(key)

        def read() -> bytes:
            try:
                response = self._s3().get_object(Bucket=self._bucket, Key=name)
            except ClientError as error:
                if _error_code(error) in _NOT_FOUND:
                    raise NotFound(f"no stored file {key}") from None
                raise
            body = response["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        result: bytes = await self._run("read the file", read)
        return result

    async def stat(self, key: str) -> StoredObject | None:
        from botocore.exceptions import ClientError

        name = self.object_key(key)

        def head() -> StoredObject | None:
            try:
                response = self._s3().head_object(Bucket=self._bucket, Key=name)
            except ClientError as error:
                if _error_code(error) in _NOT_FOUND:
                    return None
                raise
            return StoredObject(int(response["ContentLength"]), str(response.get("ServerSideEncryption", "")))

        result: StoredObject | None = await self._run("look up the file", head)
        return result

    async def exists(self, key: str) -> bool:
        return await self.stat(key) is not None

    async def delete(self, key: str) -> bool:
        name = self.object_key(key)
        if await self.stat(key) is None:
            return False
        await self._run("delete the file", lambda: self._s3().delete_object(Bucket=self._bucket, Key=name))
        return True

    # -- DirectUploads --------------------------------------------------------------------

    async def presign_put(self, key: str, *, content_type: str, size_bytes: int, expires_in: int) -> PresignedPut:
        name = self.object_key(key)
        params: dict[str, Any] = {
            "Bucket": self._bucket,
            "Key": name,
            "ContentType": content_type,
            "ContentLength": size_bytes,
            **self._encryption(),
        }
        url: str = await self._run(
            "sign an upload URL",
            lambda: self._signer().generate_presigned_url(
                "put_object", Params=params, ExpiresIn=expires_in, HttpMethod="PUT"
            ),
        )
        headers = {"Content-Type": content_type, "x-amz-server-side-encryption": self._sse}
        if self._kms_key_id:
            headers["x-amz-server-side-encryption-aws-kms-key-id"] = self._kms_key_id
        return PresignedPut(url=url, headers=headers, expires_in_seconds=expires_in)
