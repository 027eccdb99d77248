"""Blob store in a local folder: atomic, durable writes; keys that cannot escape the folder."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from pathlib import Path

from services.common.errors import InvalidArgument, NotFound

_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_DEPTH = 8


class LocalBlobStore:
    """``<root>/<key>``; writes go to a temporary file, are fsynced, then renamed into place."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()

    @property
    def root(self) -> Path:
        return self._root

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if len(parts) > _MAX_DEPTH or not all(_COMPONENT.match(part) and ".." not in part for part in parts):
            raise InvalidArgument(f"invalid blob key {key!r}")
        path = self._root.joinpath(*parts)
        if not path.resolve().is_relative_to(self._root):
            raise InvalidArgument(f"invalid blob key {key!r}")
        return path

    def _put(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, self._path(key), data)

    def _get(self, path: Path, key: str) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no stored file {key}") from None

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._get, self._path(key), key)

    def _delete(self, path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        # Remove the folders the key made, as far up as they are empty.
        parent = path.parent
        while parent != self._root and parent.is_relative_to(self._root):
            with contextlib.suppress(OSError):
                parent.rmdir()
            if parent.exists():
                break
            parent = parent.parent
        return True

    async def delete(self, key: str) -> bool:
        return await asyncio.to_thread(self._delete, self._path(key))

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)
