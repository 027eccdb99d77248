"""The local blob store: atomic writes, keys that cannot escape its folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.ingest.backends.local_blob_store import LocalBlobStore


async def test_put_get_exists_delete(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    await store.put("owner/doc/abc123", b"bytes")
    assert await store.exists("owner/doc/abc123")
    assert await store.get("owner/doc/abc123") == b"bytes"
    await store.put("owner/doc/abc123", b"replaced")
    assert await store.get("owner/doc/abc123") == b"replaced"
    assert [path.name for path in (tmp_path / "blobs").rglob("*") if path.is_file()] == ["abc123"]  # no temp files
    assert await store.delete("owner/doc/abc123")
    assert not await store.exists("owner/doc/abc123")
    assert not await store.delete("owner/doc/abc123")
    assert list((tmp_path / "blobs").iterdir()) == []  # emptied folders are removed
    with pytest.raises(NotFound, match="no stored file owner/doc/abc123"):
        await store.get("owner/doc/abc123")


@pytest.mark.parametrize(
    "key", ["../escape", "a/../../b", "/abs", "a//b", "", ".hidden", "a/.tmp", "a\\b", "a/b c", "x/" * 9 + "y"]
)
async def test_keys_that_could_escape_or_hide_are_refused(tmp_path: Path, key: str) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(InvalidArgument, match="invalid blob key"):
        await store.put(key, b"x")
    assert not (tmp_path / "escape").exists()
