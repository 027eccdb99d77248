"""The ONNX embedder: a text's vector is a function of the text alone; idle cores are lent to long calls.

Uses the real model (all-MiniLM-L6-v2 through ONNX Runtime, built by
``scripts/export_embedding_model.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.retrieval.embedding import (
    DEFAULT_MODEL_DIR,
    HELPER_NICENESS,
    MANIFEST_NAME,
    ONNX_NAME,
    CoreBudget,
    OnnxEmbedder,
    Vectors,
    cgroup_cpu_limit,
)

TEXTS = [
    "Vitamin D deficiency is associated with an increased risk of fractures in older adults.",
    "The committee approved the budget after a long debate about infrastructure spending.",
    "Which module handles input sequences of variable lengths?",
    "서울의 인구는 약 천만 명이며 대한민국의 수도이다.",
    "a",
    " ".join(["Long text that overflows the model's window of 256 wordpieces."] * 40),
    "Airspeed unreliable: if autopilot is engaged, disengage. Set both F/D switches to off.",
    "Recall: the following indications are reliable: attitude, N1, ground speed and radio altitude.",
]


@pytest.fixture(scope="module")
def model_ready() -> None:
    if not (DEFAULT_MODEL_DIR / ONNX_NAME).is_file():
        pytest.skip(f"embedding model not built at {DEFAULT_MODEL_DIR}: run scripts/export_embedding_model.py")


def loaded(**options: Any) -> OnnxEmbedder:
    embedder = OnnxEmbedder(DEFAULT_MODEL_DIR, **options)
    embedder.load()
    return embedder


class RunSpy:
    """Wraps an embedder's model runs: which threads ran them, and how many ran at once."""

    def __init__(self, embedder: OnnxEmbedder, *, fail_on: str | None = None, wait_for_company: bool = False) -> None:
        self.threads: set[str] = set()
        self.niceness: dict[str, int] = {}
        self.most_at_once = 0
        self._running = 0
        self._lock = threading.Lock()
        self._company = threading.Event()
        self._waiting = wait_for_company
        original = embedder._run

        def run(encodings: Sequence[Any]) -> Vectors:
            with self._lock:
                self.threads.add(threading.current_thread().name)
                self.niceness[threading.current_thread().name] = os.getpriority(
                    os.PRIO_PROCESS, threading.get_native_id()
                )
                self._running += 1
                self.most_at_once = max(self.most_at_once, self._running)
                if self._running > 1:
                    self._company.set()
            if self._waiting:
                # Hold the run until a second one starts (or give up once), so that overlap does
                # not depend on how fast the machine is.
                self._waiting = self._company.wait(10)
            try:
                if fail_on is not None and any(fail_on in encoding.tokens for encoding in encodings):
                    raise RuntimeError("model run failed")
                return original(encodings)
            finally:
                with self._lock:
                    self._running -= 1

        embedder._run = run  # type: ignore[method-assign]


def test_a_vector_does_not_depend_on_the_other_texts_of_the_call(model_ready: None) -> None:
    embedder = loaded(parallel=1)
    together = embedder.embed(TEXTS)
    for row, text in enumerate(TEXTS):
        alone = embedder.embed([text])[0]
        assert np.array_equal(alone, together[row]), text
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_batches_of_several_texts_share_one_quantisation_scale(model_ready: None) -> None:
    """Why texts run one at a time: in a batch the int8 activations' scale depends on the neighbours."""
    batched = loaded(batch_size=len(TEXTS), parallel=1).embed(TEXTS)
    alone = loaded(parallel=1).embed(TEXTS)
    assert float(np.abs(batched - alone).max()) > 1e-4


def test_idle_cores_run_a_long_call_side_by_side_with_the_same_vectors(model_ready: None) -> None:
    serial = loaded(parallel=1).embed(TEXTS)
    embedder = loaded(budget=CoreBudget(cores=2))
    spy = RunSpy(embedder, wait_for_company=True)
    assert np.array_equal(embedder.embed(TEXTS), serial)
    assert len(spy.threads) == 2
    assert spy.most_at_once == 2
    if sys.platform.startswith("linux"):
        # The lent core yields to other work: the helper runs at a lower priority, the caller as it was.
        caller = threading.current_thread().name
        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert spy.niceness.pop(caller) == own
        assert list(spy.niceness.values()) == [min(19, own + HELPER_NICENESS)]


def test_no_core_is_lent_while_the_others_are_busy(model_ready: None) -> None:
    budget = CoreBudget(cores=2)
    budget.hold(1)  # another call is running on the second core
    embedder = loaded(budget=budget)
    spy = RunSpy(embedder)
    embedder.embed(TEXTS)
    assert spy.threads == {threading.current_thread().name}
    budget.release(1)
    assert budget.try_hold(2), "the call gave back every core it held"


def test_a_failed_run_fails_the_call_and_returns_the_cores(model_ready: None) -> None:
    budget = CoreBudget(cores=2)
    embedder = loaded(budget=budget)
    RunSpy(embedder, fail_on="budget")
    with pytest.raises(RuntimeError, match="model run failed"):
        embedder.embed(TEXTS)
    assert budget.try_hold(2)


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_the_cgroup_cpu_quota_is_read_in_cores(tmp_path: Path, files: dict[str, str], limit: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == limit


def _export_script() -> Any:
    path = Path(__file__).resolve().parents[3] / "scripts" / "export_embedding_model.py"
    spec = importlib.util.spec_from_file_location("export_embedding_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_built_model_keeps_its_most_sensitive_layer_in_fp32(model_ready: None) -> None:
    """The export's recipe is what was built: a stale build is redone by `make`, not silently used."""
    import onnx

    script = _export_script()
    manifest = json.loads((DEFAULT_MODEL_DIR / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["recipe"] == script.RECIPE
    graph = onnx.load(str(DEFAULT_MODEL_DIR / ONNX_NAME)).graph
    kinds = {node.name: node.op_type for node in graph.node}
    for name in script.FP32_NODES:
        assert kinds.get(name) == "MatMul", f"{name} was quantised (or is missing)"
    assert sum(kind == "MatMulInteger" for kind in kinds.values()) == 35  # the 35 other projections are int8


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        OnnxEmbedder(DEFAULT_MODEL_DIR, batch_size=0)
    with pytest.raises(ValueError, match="negative"):
        OnnxEmbedder(DEFAULT_MODEL_DIR, parallel=-1)
