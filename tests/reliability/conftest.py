"""Fixtures of the hostile-input and fuzzing suites: live services, memory probes, hypothesis profiles.

The services under test run for real, on loopback, on port 0:

* :class:`ServiceThread` runs an asyncio loop in a background thread that hosts in-process
  servers (retrieval, generation, ingest, gateway), so tests, and hypothesis with them, stay
  synchronous and call the services over real gRPC with synchronous stubs;
* :class:`IngestProcess` runs the ingest service as its own process (``python -m
  services.ingest``), so that its memory is its own: :class:`MemoryProbe` reads the service's
  peak RSS (the kernel's high-water mark, reset per case) and samples the extraction processes
  under it.

Hypothesis profiles: ``reliability-fast`` (``make test``: few examples, derandomised, so the
run is the same every time) and ``reliability-soak`` (``make soak``: many random examples); both
give a pure function a deadline per example. Nothing is stored in a ``.hypothesis`` folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings

from services.common.config import Env, ServerConfig
from services.common.server import GrpcServer, ServiceApp
from services.gateway.config import GatewayConfig
from services.gateway.server import build_app as build_gateway
from services.generation.config import GenerationConfig
from services.generation.server import build_app as build_generation
from services.ingest.config import IngestConfig
from services.ingest.server import build_app as build_ingest
from services.retrieval.config import RetrievalConfig
from services.retrieval.server import build_app as build_retrieval

REPO = Path(__file__).resolve().parents[2]
_T = TypeVar("_T")


def pytest_configure(config: pytest.Config) -> None:
    # Hypothesis caches what it learns under ./.hypothesis by default: keep the checkout clean.
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "ragchat-hypothesis"))


# A pure function gets 2 s per example (catastrophic regex backtracking, say, takes far longer);
# a test of a running service or of the sandbox sets deadline=None and relies on its own timeouts.
settings.register_profile(
    "reliability-fast",
    max_examples=40,
    deadline=2000,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "reliability-soak",
    max_examples=2000,
    deadline=5000,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- an event loop in a thread, hosting in-process servers ------------------------------


class ServiceThread:
    """An asyncio loop in a daemon thread; :meth:`run` executes a coroutine on it and waits."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="reliability-services", daemon=True)
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, _T], timeout: float = 120.0) -> _T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def service_env(root: Path, name: str, **extra: str) -> Env:
    return Env({"PORT": "0", "DATA_DIR": str(root / name), "SHUTDOWN_GRACE_SECONDS": "1", **extra})


@dataclass
class Services:
    """Services started in a :class:`ServiceThread`; ``ports`` by service name."""

    thread: ServiceThread
    root: Path
    servers: dict[str, GrpcServer] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def add(self, name: str, build: Callable[[], ServiceApp], config: ServerConfig) -> int:
        """Build the app on the services' loop (its channels bind to that loop), then start it."""

        async def start() -> tuple[GrpcServer, int]:
            server = GrpcServer(build(), config)
            return server, await server.start()

        server, self.ports[name] = self.thread.run(start())
        self.servers[name] = server
        return self.ports[name]

    def start_retrieval(self, **extra: str) -> None:
        config = RetrievalConfig.from_env(service_env(self.root, "retrieval", **extra))
        self.add("retrieval", lambda: build_retrieval(config), config.server)

    def start_generation(self, **extra: str) -> None:
        config = GenerationConfig.from_env(service_env(self.root, "generation", **extra))
        self.add("generation", lambda: build_generation(config), config.server)

    def peers(self) -> dict[str, str]:
        return {"RETRIEVAL_ADDR": self.address("retrieval"), "GENERATION_ADDR": self.address("generation")}

    def start_ingest(self, **extra: str) -> None:
        config = IngestConfig.from_env(service_env(self.root, "ingest", **self.peers(), **extra))
        self.add("ingest", lambda: build_ingest(config), config.server)

    def start_gateway(self, ingest_addr: str, **extra: str) -> None:
        env = service_env(self.root, "gateway", INGEST_ADDR=ingest_addr, **self.peers(), **extra)
        config = GatewayConfig.from_env(env)
        self.add("gateway", lambda: build_gateway(config), config.server)

    def stop(self) -> None:
        for name in reversed(list(self.servers)):
            self.thread.run(self.servers.pop(name).stop(0.5))


@pytest.fixture(scope="module")
def service_thread() -> Iterator[ServiceThread]:
    thread = ServiceThread()
    yield thread
    thread.close()


# -- the ingest service as a process of its own ---------------------------------------------


class IngestProcess:
    """``python -m services.ingest`` with ``environ``; JSON logs go to ``log_path``."""

    def __init__(self, root: Path, environ: Mapping[str, str]) -> None:
        self.data_dir = root / "ingest"
        self.log_path = root / "ingest.log"
        env = {
            **os.environ,
            "PORT": "0",
            "DATA_DIR": str(self.data_dir),
            "SHUTDOWN_GRACE_SECONDS": "1",
            "LOG_LEVEL": "info",
            **environ,
        }
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.ingest"], cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.port = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the ingest service exited ({self.process.returncode}): {self.log_tail()}")
            for entry in self.log_entries():
                if entry.get("msg") == "serving":
                    self.port = int(entry["port"])
                    return
            time.sleep(0.05)
        raise TimeoutError(f"the ingest service did not serve within {timeout:g} s: {self.log_tail()}")

    def log_entries(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    entries.append(json.loads(line))
        return entries

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


# -- memory ----------------------------------------------------------------------------------


def _status_kb(pid: int, field_name: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    return 0


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (children, their children, ...)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children", encoding="ascii") as handle:
                    children = [int(child) for child in handle.read().split()]
            except FileNotFoundError:
                continue
            found.extend(children)
            pending.extend(children)
    return found


@dataclass
class MemoryWindow:
    service_before_kb: int = 0
    service_peak_kb: int = 0
    children_peak_kb: int = 0
    children_seen: int = 0

    @property
    def service_growth_mb(self) -> float:
        return max(0, self.service_peak_kb - self.service_before_kb) / 1024


class MemoryProbe:
    """Peak RSS of a service process (exact: its VmHWM, reset per window) and of its descendants
    (the extraction processes: their VmHWM, sampled every few milliseconds while they live)."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self._pid = pid
        self._interval = interval
        self._window: MemoryWindow | None = None
        self._seen: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="memory-probe", daemon=True)
        self._thread.start()

    def rss_kb(self) -> int:
        return _status_kb(self._pid, "VmRSS")

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                window = self._window
                if window is None:
                    continue
                for child in descendants(self._pid):
                    window.children_peak_kb = max(window.children_peak_kb, _status_kb(child, "VmHWM"))
                    if child not in self._seen:
                        self._seen.add(child)
                        window.children_seen += 1

    @contextlib.contextmanager
    def window(self) -> Iterator[MemoryWindow]:
        window = MemoryWindow(service_before_kb=self.rss_kb())
        # "5" resets the peak RSS (VmHWM) to the current RSS (Linux ≥ 4.0).
        with open(f"/proc/{self._pid}/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        with self._lock:
            self._seen = set(descendants(self._pid))  # the fork server, already running
            self._window = window
        try:
            yield window
        finally:
            time.sleep(2 * self._interval)
            with self._lock:
                self._window = None
            window.service_peak_kb = _status_kb(self._pid, "VmHWM")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


# -- health ------------------------------------------------------------------------------------


def health_status(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(response.status)


SERVING = int(health_pb2.HealthCheckResponse.SERVING)


# -- a results table for the README ---------------------------------------------------------------


@dataclass
class ResultsTable:
    """Rows collected by a module; written to ``$RELIABILITY_REPORT_DIR/<name>.md`` (and ``.json``) if set."""

    name: str
    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, *row: str) -> None:
        self.rows.append(row)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "---|" * len(self.header))
        lines.extend("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows)
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        folder = os.environ.get("RELIABILITY_REPORT_DIR")
        if not folder or not self.rows:
            return
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        (path / f"{self.name}.md").write_text(self.markdown(), encoding="utf-8")
        rows = [dict(zip(self.header, row, strict=True)) for row in self.rows]
        (path / f"{self.name}.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
