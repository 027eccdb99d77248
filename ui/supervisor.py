"""``ragchat up``: the four services and the web UI as supervised child processes.

:class:`Suite` starts the children one after another (each waits for the previous one to be
ready: gRPC health ``SERVING``, or the web UI answering HTTP), writes each child's output to
``$RAGCHAT_HOME/logs/<name>.log``, reports error log lines in one line each on the console,
restarts a child that dies (reporting its exit code and the tail of its log) with exponential
backoff, and gives up, stopping everything, when a child keeps dying. ``stop()`` ends the
children in reverse order: SIGTERM, the grace period, then SIGKILL.

Ports: the gateway listens on ``RAGCHAT_PORT_BASE`` (default 50051); ingest, retrieval and
generation on the next three; the web UI on ``RAGCHAT_UI_PORT`` (default 7860). The flags of
``ragchat up`` override the variables.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import ConfigError, Env, ragchat_home
from services.common.lifecycle import SUPERVISOR_PID

SERVICES = ("retrieval", "generation", "ingest", "gateway")
UI = "ui"
_TAIL_LINES = 20
_PROBE_INTERVAL = 0.2
_SUMMARY_CHARS = 200


class SuiteFailed(RuntimeError):
    """The suite could not start, or a child kept failing; the message says which and why."""


# -- what to run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GrpcHealth:
    """Ready when ``grpc.health.v1.Health/Check`` of service ``""`` answers SERVING."""

    address: str


@dataclass(frozen=True)
class HttpReady:
    """Ready when ``GET /`` answers with a status below 500."""

    host: str
    port: int


Readiness = GrpcHealth | HttpReady | None


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    ready: Readiness = None
    # Checked to be free before anything starts (the host it binds, and the port).
    listen: tuple[str, int] | None = None


@dataclass(frozen=True)
class SuitePorts:
    gateway: int = 50051
    ingest: int = 50052
    retrieval: int = 50053
    generation: int = 50054
    ui: int = 7860

    @classmethod
    def from_base(cls, base: int, ui: int = 7860) -> SuitePorts:
        return cls(gateway=base, ingest=base + 1, retrieval=base + 2, generation=base + 3, ui=ui)

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> SuitePorts:
        """Five ports free right now (for tests; another process could take one before use)."""
        sockets = []
        try:
            for _ in range(5):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((host, 0))
                sockets.append(sock)
            ports = [sock.getsockname()[1] for sock in sockets]
        finally:
            for sock in sockets:
                sock.close()
        return cls(gateway=ports[0], ingest=ports[1], retrieval=ports[2], generation=ports[3], ui=ports[4])

    def of(self, name: str) -> int:
        port: int = getattr(self, name)
        return port


@dataclass(frozen=True)
class SuiteConfig:
    home: Path
    ports: SuitePorts = field(default_factory=SuitePorts)
    host: str = "127.0.0.1"
    ui_host: str = "127.0.0.1"
    with_ui: bool = True
    start_timeout: float = 60.0
    grace_seconds: float = 25.0
    max_restarts: int = 5
    restart_window: float = 300.0

    @classmethod
    def from_env(
        cls,
        env: Env,
        *,
        home: Path | None = None,
        ui_host: str | None = None,
        ui_port: int | None = None,
        port_base: int | None = None,
        with_ui: bool = True,
    ) -> SuiteConfig:
        base = port_base if port_base is not None else env.integer("RAGCHAT_PORT_BASE", 50051, minimum=1, maximum=65532)
        ui = ui_port if ui_port is not None else env.integer("RAGCHAT_UI_PORT", 7860, minimum=1, maximum=65535)
        if not 1 <= base <= 65532:
            raise ConfigError(f"--port-base {base} must be between 1 and 65532")
        if not 1 <= ui <= 65535:
            raise ConfigError(f"--ui-port {ui} must be between 1 and 65535")
        return cls(
            home=(home if home is not None else ragchat_home(env)).expanduser().resolve(),
            ports=SuitePorts.from_base(base, ui),
            ui_host=ui_host or env.string("RAGCHAT_UI_HOST", "127.0.0.1"),
            with_ui=with_ui,
            start_timeout=env.real("RAGCHAT_START_TIMEOUT", 60.0, minimum=1.0, maximum=3600.0),
            # The services drain for SHUTDOWN_GRACE_SECONDS; give them a little more.
            grace_seconds=env.real("SHUTDOWN_GRACE_SECONDS", 20.0, minimum=0.0, maximum=600.0) + 5.0,
            max_restarts=env.integer("RAGCHAT_MAX_RESTARTS", 5, minimum=0, maximum=1000),
            restart_window=env.real("RAGCHAT_RESTART_WINDOW", 300.0, minimum=1.0, maximum=86400.0),
        )

    def address(self, name: str) -> str:
        return f"{self.host}:{self.ports.of(name)}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.ui_host}:{self.ports.ui}"


def suite_specs(config: SuiteConfig, environ: Mapping[str, str], python: str = sys.executable) -> list[ChildSpec]:
    """The children of ``ragchat up``, in start order, each with the caller's environment plus its own."""
    common = dict(environ)
    common.update(
        RAGCHAT_HOME=str(config.home),
        PYTHONUNBUFFERED="1",
        INGEST_ADDR=config.address("ingest"),
        RETRIEVAL_ADDR=config.address("retrieval"),
        GENERATION_ADDR=config.address("generation"),
        GATEWAY_ADDR=config.address("gateway"),
    )
    specs = []
    for name in SERVICES:
        env = dict(common, PORT=str(config.ports.of(name)), HOST=config.host, DATA_DIR=str(config.home / name))
        specs.append(
            ChildSpec(
                name=name,
                argv=(python, "-m", f"services.{name}"),
                env=env,
                ready=GrpcHealth(config.address(name)),
                listen=(config.host, config.ports.of(name)),
            )
        )
    if config.with_ui:
        env = dict(common, UI_HOST=config.ui_host, UI_PORT=str(config.ports.ui))
        env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        specs.append(
            ChildSpec(
                name=UI,
                argv=(python, "-m", "ui.web"),
                env=env,
                ready=HttpReady(_probe_host(config.ui_host), config.ports.ui),
                listen=(config.ui_host, config.ports.ui),
            )
        )
    return specs


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


# -- readiness probes ----------------------------------------------------------------------


async def _grpc_serving(channel: grpc.aio.Channel) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
    except grpc.aio.AioRpcError:
        return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def _http_ready(host: str, port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=1.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(f"GET / HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5.0)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status_line.split()
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() and int(parts[1]) < 500


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# -- children ------------------------------------------------------------------------------


@dataclass
class _Child:
    spec: ChildSpec
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None
    task: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=_TAIL_LINES))
    restarts: collections.deque[float] = field(default_factory=collections.deque)
    starts: int = 0


class Suite:
    """Supervises child processes; see the module docstring."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        log_dir: Path,
        console: TextIO | None = None,
        start_timeout: float = 60.0,
        grace_seconds: float = 25.0,
        max_restarts: int = 5,
        restart_window: float = 300.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        config: SuiteConfig | None = None,
    ) -> None:
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self._children = [_Child(spec, log_dir / f"{spec.name}.log") for spec in specs]
        self._log_dir = log_dir
        self._console = console if console is not None else sys.stderr
        self._start_timeout = start_timeout
        self._grace = grace_seconds
        self._max_restarts = max_restarts
        self._restart_window = restart_window
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stopping = asyncio.Event()
        self._ready = asyncio.Event()
        self._failed = asyncio.Event()
        self._stopped = asyncio.Event()
        self.failure: str | None = None
        self._starter: asyncio.Task[None] | None = None
        self._stop_lock = asyncio.Lock()
        self._stop_task: asyncio.Task[None] | None = None
        self._config = config

    @classmethod
    def for_config(cls, config: SuiteConfig, environ: Mapping[str, str], console: TextIO | None = None) -> Suite:
        """The suite of ``ragchat up`` (the end-to-end test uses this too)."""
        return cls(
            suite_specs(config, environ),
            log_dir=config.home / "logs",
            console=console,
            start_timeout=config.start_timeout,
            grace_seconds=config.grace_seconds,
            max_restarts=config.max_restarts,
            restart_window=config.restart_window,
            config=config,
        )

    # -- public --------------------------------------------------------------------------

    @property
    def config(self) -> SuiteConfig:
        """The configuration the suite was built from (only for :meth:`for_config` suites)."""
        if self._config is None:
            raise RuntimeError("this suite was built from specs, not from a SuiteConfig")
        return self._config

    @property
    def pids(self) -> dict[str, int]:
        """The pid of each running child, by name."""
        return {
            c.spec.name: c.process.pid for c in self._children if c.process is not None and c.process.returncode is None
        }

    @property
    def failed(self) -> bool:
        return self._failed.is_set()

    def log_path(self, name: str) -> Path:
        return self._child(name).log_path

    async def start(self) -> None:
        """Check the ports, then start the children in order in the background (see ``wait_ready``)."""
        if self._starter is not None:
            raise RuntimeError("the suite was already started")
        busy = [
            f"{c.spec.name} ({c.spec.listen[0]}:{c.spec.listen[1]})"
            for c in self._children
            if c.spec.listen is not None and port_in_use(*c.spec.listen)
        ]
        if busy:
            raise SuiteFailed(f"port already in use for {', '.join(busy)}: is ragchat already running?")
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self._starter = asyncio.create_task(self._start_in_order(), name="suite-start")

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Until every child is running and ready right now (after a restart too).

        Raises :class:`SuiteFailed` if the suite gave up, TimeoutError after ``timeout`` seconds.
        """
        if self._starter is None:
            raise RuntimeError("start() first")
        ready = asyncio.create_task(self._all_ready())
        failed = asyncio.create_task(self._failed.wait())
        try:
            done, _ = await asyncio.wait({ready, failed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            failed.cancel()
        if self._failed.is_set():
            raise SuiteFailed(self.failure or "the suite failed")
        if not done:
            raise TimeoutError(f"the suite is not ready after {timeout:g} s")

    async def _all_ready(self) -> None:
        await self._ready.wait()
        while True:
            for child in self._children:
                await child.ready.wait()
            # Check again now: a child may have just been told to stop, or died unnoticed yet.
            checks = [self._ready_now(child) for child in self._children]
            if all(await asyncio.gather(*checks)):
                return
            await asyncio.sleep(_PROBE_INTERVAL)

    async def _ready_now(self, child: _Child) -> bool:
        process = child.process
        if not child.ready.is_set() or process is None or process.returncode is not None:
            return False
        ready = child.spec.ready
        if isinstance(ready, GrpcHealth):
            channel = grpc.aio.insecure_channel(ready.address)
            try:
                return await _grpc_serving(channel)
            finally:
                await channel.close()
        if isinstance(ready, HttpReady):
            return await _http_ready(ready.host, ready.port)
        return True

    async def wait_failed(self) -> str:
        """Until the suite gives up on a child; returns why."""
        await self._failed.wait()
        return self.failure or "the suite failed"

    async def stop(self) -> None:
        """Stop every child, last started first: SIGTERM, the grace period, then SIGKILL."""
        async with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stopping.set()
            if self._starter is not None:
                self._starter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._starter
            for child in reversed(self._children):
                await self._terminate(child)
            for child in self._children:
                if child.task is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await child.task
                if child.pump is not None:
                    await child.pump
            self._stopped.set()

    def mark_stopping(self) -> None:
        """From now on children that exit are expected to (a stop is coming); nothing is restarted."""
        self._stopping.set()

    def kill(self) -> None:
        """SIGKILL every running child now (a second Ctrl-C)."""
        self._stopping.set()
        for child in self._children:
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()

    # -- internals -----------------------------------------------------------------------

    def _child(self, name: str) -> _Child:
        for child in self._children:
            if child.spec.name == name:
                return child
        raise KeyError(name)

    def _say(self, text: str) -> None:
        self._console.write(f"ragchat: {text}\n")
        self._console.flush()

    def _fail(self, reason: str) -> None:
        if self._failed.is_set() or self._stopping.is_set():
            return
        self.failure = reason
        self._say(f"giving up: {reason}")
        self._failed.set()
        # Never leave the others running on their own.
        self._stop_task = asyncio.create_task(self.stop(), name="suite-stop")

    async def _start_in_order(self) -> None:
        for child in self._children:
            child.task = asyncio.create_task(self._supervise(child), name=f"supervise-{child.spec.name}")
            try:
                await asyncio.wait_for(child.ready.wait(), timeout=self._start_timeout)
            except TimeoutError:
                self._fail(
                    f"{child.spec.name} did not become ready within {self._start_timeout:g} s; see {child.log_path}"
                )
                return
        self._ready.set()

    async def _spawn(self, child: _Child) -> None:
        spec = child.spec
        child.starts += 1
        with child.log_path.open("a", encoding="utf-8") as log:
            log.write(_supervisor_line(f"starting {spec.name}", argv=list(spec.argv), start=child.starts) + "\n")
        child.process = await asyncio.create_subprocess_exec(
            *spec.argv,
            # The child ends itself when this process dies (services.common.lifecycle).
            env={**spec.env, SUPERVISOR_PID: str(os.getpid())},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=False,
        )
        child.pump = asyncio.create_task(self._pump(child, child.process), name=f"log-{spec.name}")

    async def _pump(self, child: _Child, process: asyncio.subprocess.Process) -> None:
        """Copy the child's output to its log file; report its error lines in one line each."""
        assert process.stdout is not None
        with child.log_path.open("ab") as log:
            while line := await process.stdout.readline():
                log.write(line)
                log.flush()
                text = line.decode("utf-8", "replace").rstrip("\n")
                child.tail.append(text)
                summary = _error_summary(text)
                if summary is not None:
                    self._say(f"{child.spec.name}: {summary}")

    async def _supervise(self, child: _Child) -> None:
        name = child.spec.name
        while not self._stopping.is_set():
            await self._spawn(child)
            process = child.process
            assert process is not None
            if self._stopping.is_set():
                await self._terminate(child)
                return
            became_ready = await self._probe(child, process)
            if became_ready:
                child.ready.set()
                self._say(f"{name} ready (pid {process.pid}{_where(child.spec.ready)})")
                await process.wait()
            elif process.returncode is None and not self._stopping.is_set():
                self._say(f"{name} is not ready after {self._start_timeout:g} s; restarting it")
                await self._terminate(child)
            await process.wait()
            if child.pump is not None:
                await child.pump
            child.ready.clear()
            if self._stopping.is_set():
                return
            tail = "\n".join(f"    {line}" for line in child.tail)
            self._say(
                f"{name} exited with code {process.returncode}"
                + (f"; last lines of {child.log_path}:\n{tail}" if tail else f" (log: {child.log_path})")
            )
            now = time.monotonic()
            while child.restarts and now - child.restarts[0] > self._restart_window:
                child.restarts.popleft()
            if len(child.restarts) >= self._max_restarts:
                self._fail(
                    f"{name} exited {len(child.restarts) + 1} times within {self._restart_window:g} s; "
                    f"see {child.log_path}"
                )
                return
            child.restarts.append(now)
            delay = min(self._backoff_max, self._backoff_initial * 2 ** (len(child.restarts) - 1))
            self._say(f"restarting {name} in {delay:g} s (restart {len(child.restarts)} of {self._max_restarts})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _probe(self, child: _Child, process: asyncio.subprocess.Process) -> bool:
        """Until the child is ready (True), exits, the stop begins, or the start timeout passes (False)."""
        ready = child.spec.ready
        deadline = time.monotonic() + self._start_timeout
        channel = grpc.aio.insecure_channel(ready.address) if isinstance(ready, GrpcHealth) else None
        try:
            while process.returncode is None and not self._stopping.is_set():
                if ready is None:
                    return True
                if channel is not None:
                    ok = await _grpc_serving(channel)
                else:
                    assert isinstance(ready, HttpReady)
                    ok = await _http_ready(ready.host, ready.port)
                if ok:
                    return process.returncode is None
                if time.monotonic() >= deadline:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), timeout=_PROBE_INTERVAL)
            return False
        finally:
            if channel is not None:
                await channel.close()

    async def _terminate(self, child: _Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=self._grace)
        except TimeoutError:
            self._say(f"{child.spec.name} did not stop within {self._grace:g} s; killing it")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def _where(ready: Readiness) -> str:
    if isinstance(ready, GrpcHealth):
        return f", {ready.address}"
    if isinstance(ready, HttpReady):
        return f", http://{ready.host}:{ready.port}"
    return ""


def _supervisor_line(msg: str, **extra: object) -> str:
    entry: dict[str, object] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "level": "info",
        "service": "supervisor",
        "msg": msg,
    }
    entry.update(extra)
    return json.dumps(entry)


def _error_summary(line: str) -> str | None:
    """``"error: <msg>"`` for a JSON log line at level error or above; None otherwise."""
    if not line.startswith("{"):
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    level = str(entry.get("level", "")).lower()
    if level not in ("error", "critical", "fatal"):
        return None
    message = " ".join(str(entry.get("msg", "")).split())
    exc = str(entry.get("exc", "")).strip().splitlines()
    if exc:
        message += f" ({exc[-1]})"
    if len(message) > _SUMMARY_CHARS:
        message = message[: _SUMMARY_CHARS - 1] + "…"
    return f"{level}: {message}"


# -- ragchat up ----------------------------------------------------------------------------


async def run_suite(suite: Suite, config: SuiteConfig, out: IO[str]) -> int:
    """Start ``suite``, say where it is, and supervise it until SIGINT/SIGTERM (0) or it gives up (1).

    A second signal while stopping kills the children at once.
    """
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()

    def on_signal() -> None:
        if interrupted.is_set():
            suite.kill()
        # Ctrl-C reaches the children too (same process group): their exits are no crash.
        suite.mark_stopping()
        interrupted.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await suite.start()
        starting = asyncio.create_task(suite.wait_ready())
        stop_wait = asyncio.create_task(interrupted.wait())
        await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and starting.exception() is None:
            lines = [f"ragchat is up: {config.ui_url}"] if config.with_ui else ["ragchat is up"]
            lines.append(f"  gateway: {config.address('gateway')}   logs: {config.home / 'logs'}   (Ctrl-C to stop)")
            out.write("\n".join(lines) + "\n")
            out.flush()
            failing = asyncio.create_task(suite.wait_failed())
            await asyncio.wait({failing, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            failing.cancel()
        starting.cancel()
        stop_wait.cancel()
        failed = suite.failed
        if not failed:
            sys.stderr.write("ragchat: stopping\n")
        await suite.stop()
        return 1 if failed else 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_up(
    *,
    home: Path | None = None,
    ui_host: str | None = None,
    ui_port: int | None = None,
    port_base: int | None = None,
    with_ui: bool = True,
    environ: Mapping[str, str] | None = None,
) -> int:
    """``ragchat up``: run the suite until Ctrl-C or SIGTERM (0), or until it gives up (1)."""
    env_map = dict(os.environ if environ is None else environ)
    config = SuiteConfig.from_env(
        Env(env_map), home=home, ui_host=ui_host, ui_port=ui_port, port_base=port_base, with_ui=with_ui
    )
    suite = Suite.for_config(config, env_map)
    try:
        return asyncio.run(run_suite(suite, config, sys.stdout))
    except SuiteFailed as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
