"""A deterministic stand-in for the embedding model: a sum of per-term random vectors, L2-normalised.

Texts that share words get similar vectors, which is all the index's mechanics need; the real
model is used where ranking quality is the point.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from services.common.text import search_terms
from services.retrieval.embedding import Vectors

DIMENSION = 384


class HashEmbedder:
    def __init__(self, model_id: str = "hash-embedder:1") -> None:
        self._model_id = model_id
        self.loaded = False
        self.embedded = 0

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimension(self) -> int:
        return DIMENSION

    def load(self) -> None:
        self.loaded = True

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        for row, text in enumerate(texts):
            for term in search_terms(text):
                seed = int.from_bytes(hashlib.blake2b(term.encode(), digest_size=8).digest(), "big")
                out[row] += np.random.default_rng(seed).standard_normal(DIMENSION).astype(np.float32)
            out[row, 0] += 1e-3
            out[row] /= np.linalg.norm(out[row])
        self.embedded += len(texts)
        return out
