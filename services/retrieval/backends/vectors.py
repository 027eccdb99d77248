"""The dense leg's in-memory vectors, one store per owner, rebuilt from the SQLite index at start.

SQLite is the source of truth (each chunk's vector is committed in the same transaction as the
chunk); this module only holds a searchable copy. Each owner has its own matrix, so a search
never looks at another owner's vectors and a user with three chunks among millions still gets
their top-k. Small owners are searched exactly (one matrix-vector product); once an owner holds
``ann_threshold`` vectors an HNSW graph (hnswlib, inner product on normalised vectors) answers
instead, kept up to date on every add and delete. A graph is saved on close next to the
database with the index generation it reflects, and reused at start only when that generation
is still current; otherwise (a crash, a write after the save) it is rebuilt from the vectors.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Keys = npt.NDArray[np.int64]
Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AnnParams:
    """HNSW parameters: graph degree, construction and search beam widths."""

    m: int = 16
    ef_construction: int = 100
    ef_search: int = 128
    threads: int = 2


class OwnerVectors:
    """One owner's vectors: a growable matrix keyed by chunk key, plus an HNSW graph when large."""

    def __init__(self, dimension: int) -> None:
        self._dimension = dimension
        self._keys: Keys = np.empty(0, dtype=np.int64)
        self._matrix: Matrix = np.empty((0, dimension), dtype=np.float32)
        self._size = 0
        self._row_of: dict[int, int] = {}
        self.ann: Any = None
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def keys(self) -> Keys:
        return self._keys[: self._size]

    def matrix(self) -> Matrix:
        return self._matrix[: self._size]

    def add(self, keys: Keys, vectors: Matrix) -> None:
        """Insert or replace; caller holds ``lock``."""
        fresh: list[int] = []
        for i, key in enumerate(keys.tolist()):
            row = self._row_of.get(key)
            if row is None:
                fresh.append(i)
            else:
                self._matrix[row] = vectors[i]
        needed = self._size + len(fresh)
        if needed > len(self._keys):
            capacity = max(needed, 2 * len(self._keys), 1024)
            grown_keys = np.empty(capacity, dtype=np.int64)
            grown_keys[: self._size] = self._keys[: self._size]
            grown = np.empty((capacity, self._dimension), dtype=np.float32)
            grown[: self._size] = self._matrix[: self._size]
            self._keys, self._matrix = grown_keys, grown
        if fresh:
            rows = np.arange(self._size, needed)
            self._keys[rows] = keys[fresh]
            self._matrix[rows] = vectors[fresh]
            for row, key in zip(rows.tolist(), keys[fresh].tolist(), strict=True):
                self._row_of[key] = row
            self._size = needed
        if self.ann is not None:
            _ann_add(self.ann, keys, vectors)

    def remove(self, keys: Iterable[int]) -> None:
        """Delete by swapping the last row into the hole; caller holds ``lock``."""
        for key in keys:
            row = self._row_of.pop(key, None)
            if row is None:
                continue
            last = self._size - 1
            if row != last:
                moved = int(self._keys[last])
                self._keys[row] = moved
                self._matrix[row] = self._matrix[last]
                self._row_of[moved] = row
            self._size = last
            if self.ann is not None:
                self.ann.mark_deleted(key)

    def rows_of(self, keys: Iterable[int]) -> tuple[Keys, npt.NDArray[np.int64]]:
        """The keys that are present and their rows; caller holds ``lock``."""
        present = [(key, row) for key in keys if (row := self._row_of.get(key)) is not None]
        return (
            np.fromiter((key for key, _ in present), dtype=np.int64, count=len(present)),
            np.fromiter((row for _, row in present), dtype=np.int64, count=len(present)),
        )


def _ann_add(ann: Any, keys: Keys, vectors: Matrix) -> None:
    needed = ann.get_current_count() + len(keys)
    if needed > ann.get_max_elements():
        ann.resize_index(max(needed, 2 * ann.get_max_elements()))
    ann.add_items(vectors, keys, replace_deleted=True)


def limit_blas_threads() -> None:
    """One BLAS thread per call, process-wide.

    An exact search is one matrix-vector product over an owner's vectors; OpenBLAS would
    split it across every core and spin-wait, which is ~10× slower than one thread as soon as
    concurrent searches and embeddings compete for the cores. Parallelism comes from serving
    requests side by side instead.
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped,unused-ignore]

    threadpool_limits(limits=1, user_api="blas")


class VectorStore:
    """Per-owner vectors with exact or HNSW top-k search; thread-safe."""

    def __init__(self, dimension: int, *, ann_threshold: int, ann: AnnParams | None = None) -> None:
        self._dimension = dimension
        self._ann_threshold = ann_threshold
        self._params = ann or AnnParams()
        self._owners: dict[int, OwnerVectors] = {}
        self._owners_lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return self._dimension

    def owner_count(self, owner_key: int) -> int:
        owner = self._owners.get(owner_key)
        return 0 if owner is None else len(owner)

    def total(self) -> int:
        return sum(len(owner) for owner in list(self._owners.values()))

    def _owner(self, owner_key: int) -> OwnerVectors:
        with self._owners_lock:
            owner = self._owners.get(owner_key)
            if owner is None:
                owner = self._owners[owner_key] = OwnerVectors(self._dimension)
            return owner

    def clear(self) -> None:
        with self._owners_lock:
            self._owners = {}

    def add(self, owner_key: int, keys: Keys, vectors: Matrix, *, build_ann: bool = True) -> None:
        """Insert or replace vectors; ``build_ann`` False while loading (graphs come after, all at once)."""
        if len(keys) == 0:
            return
        owner = self._owner(owner_key)
        with owner.lock:
            owner.add(keys, vectors)
            if build_ann and owner.ann is None and len(owner) >= self._ann_threshold:
                owner.ann = self._build_ann(owner_key, owner.keys(), owner.matrix())

    def remove(self, owner_key: int, keys: Iterable[int]) -> None:
        owner = self._owners.get(owner_key)
        if owner is None:
            return
        with owner.lock:
            owner.remove(keys)

    def search(self, owner_key: int, query: Matrix, k: int, only: Keys | None = None) -> list[tuple[int, float]]:
        """Top ``k`` (chunk key, cosine) of the owner, best first; ``only`` restricts to those keys."""
        owner = self._owners.get(owner_key)
        if owner is None or k < 1:
            return []
        with owner.lock:
            if only is not None:
                keys, rows = owner.rows_of(only.tolist())
                return _top(keys, owner.matrix()[rows] @ query, k)
            if len(owner) == 0:
                return []
            if owner.ann is not None and len(owner) > k:
                try:
                    labels, distances = owner.ann.knn_query(query[None, :], k=k)
                except RuntimeError:  # too few live neighbours reachable (many deletions): search exactly
                    log.warning("HNSW search came up short; searching exactly", extra={"owner_key": owner_key})
                else:
                    return [
                        (int(key), float(1.0 - distance))
                        for key, distance in zip(labels[0].tolist(), distances[0].tolist(), strict=True)
                    ]
            return _top(owner.keys(), owner.matrix() @ query, k)

    def scores(self, owner_key: int, query: Matrix, keys: Iterable[int]) -> dict[int, float]:
        """Exact cosine of ``query`` with each of ``keys`` that the owner holds."""
        owner = self._owners.get(owner_key)
        if owner is None:
            return {}
        with owner.lock:
            present, rows = owner.rows_of(keys)
            values = owner.matrix()[rows] @ query
        return dict(zip(present.tolist(), values.tolist(), strict=True))

    # Snapshots of the HNSW graphs

    def save_ann(self, folder: Path, generation: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("owner-*.hnsw"):
            stale.unlink()
        saved: dict[str, int] = {}
        for owner_key, owner in list(self._owners.items()):
            with owner.lock:
                if owner.ann is None:
                    continue
                path = folder / f"owner-{owner_key}.hnsw"
                owner.ann.save_index(str(path))
                saved[str(owner_key)] = len(owner)
        staged = folder / "ann.json.tmp"
        staged.write_text(json.dumps({"generation": generation, "owners": saved}), encoding="utf-8")
        staged.replace(folder / "ann.json")

    def load_or_build_ann(self, folder: Path, generation: int) -> None:
        """Attach HNSW graphs to large owners: the saved ones if still current, else rebuilt."""
        manifest: dict[str, Any] = {}
        try:
            manifest = json.loads((folder / "ann.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
        current = manifest.get("generation") == generation
        saved = manifest.get("owners", {}) if current else {}
        # A snapshot is consumed once: a later crash must not resurrect it with a stale graph.
        (folder / "ann.json").unlink(missing_ok=True)
        for owner_key, owner in list(self._owners.items()):
            with owner.lock:
                if len(owner) < self._ann_threshold:
                    continue
                path = folder / f"owner-{owner_key}.hnsw"
                if saved.get(str(owner_key)) == len(owner) and path.is_file():
                    owner.ann = self._load_ann(path, len(owner))
                if owner.ann is None:
                    owner.ann = self._build_ann(owner_key, owner.keys(), owner.matrix())

    def _new_ann(self, capacity: int) -> Any:
        import hnswlib  # type: ignore[import-untyped,unused-ignore]

        ann = hnswlib.Index(space="ip", dim=self._dimension)
        ann.init_index(
            max_elements=max(capacity, 1024),
            ef_construction=self._params.ef_construction,
            M=self._params.m,
            allow_replace_deleted=True,
        )
        ann.set_num_threads(self._params.threads)
        return ann

    def _build_ann(self, owner_key: int, keys: Keys, matrix: Matrix) -> Any:
        started = time.perf_counter()
        ann = self._new_ann(int(len(keys) * 1.25))
        ann.add_items(matrix, keys)
        ann.set_ef(self._params.ef_search)
        log.info(
            "HNSW graph built",
            extra={"owner_key": owner_key, "vectors": len(keys), "seconds": round(time.perf_counter() - started, 2)},
        )
        return ann

    def _load_ann(self, path: Path, count: int) -> Any:
        import hnswlib  # type: ignore[import-untyped,unused-ignore]

        ann = hnswlib.Index(space="ip", dim=self._dimension)
        try:
            ann.load_index(str(path), max_elements=int(count * 1.25) + 1024, allow_replace_deleted=True)
        except RuntimeError as error:
            log.warning("HNSW snapshot unreadable; rebuilding", extra={"path": str(path), "error": str(error)})
            return None
        ann.set_ef(self._params.ef_search)
        ann.set_num_threads(self._params.threads)
        return ann


def _top(keys: Keys, scores: npt.NDArray[np.float32], k: int) -> list[tuple[int, float]]:
    if len(keys) == 0:
        return []
    chosen = np.argpartition(-scores, k - 1)[:k] if len(keys) > k else np.arange(len(keys))
    ordered = chosen[np.lexsort((keys[chosen], -scores[chosen]))]
    return [(int(keys[i]), float(scores[i])) for i in ordered]
