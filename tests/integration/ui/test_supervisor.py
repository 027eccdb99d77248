"""The supervisor with small stand-in children (never the real services)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.channels import open_channel
from ui.supervisor import ChildSpec, GrpcHealth, HttpReady, Suite, SuiteFailed

REPO = Path(__file__).resolve().parents[3]
PY = sys.executable

SLEEPER = (
    "import time; from services.common.lifecycle import follow_supervisor; follow_supervisor();"
    " print('sleeping', flush=True); time.sleep(120)"
)
# Dies with code 3 (after a last word) on its first run, sleeps on later ones.
FLAKY = textwrap.dedent(
    """
    import pathlib, sys, time
    counter = pathlib.Path(sys.argv[1])
    runs = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(runs + 1))
    if runs == 0:
        print("boom: cannot open the index", flush=True)
        sys.exit(3)
    time.sleep(120)
    """
)
ALWAYS_DIES = (
    "import json, sys; print(json.dumps({'level': 'error', 'msg': 'cannot open index'}), flush=True); sys.exit(4)"
)
# A gRPC service stand-in: health NOT_SERVING for DELAY seconds, then SERVING; with PREV_ADDR it
# first checks that the previous child is SERVING already and exits 5 otherwise.
GRPC_STAND_IN = textwrap.dedent(
    """
    import asyncio, os, sys
    import grpc.aio
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from services.common.config import Env, ServerConfig
    from services.common.logging import setup_logging
    from services.common.server import ServiceApp, serve_until_signalled

    async def main():
        prev = os.environ.get("PREV_ADDR")
        if prev:
            async with grpc.aio.insecure_channel(prev) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    sys.exit(5)
        async def start():
            await asyncio.sleep(float(os.environ["DELAY"]))
        app = ServiceApp(name="stand-in", service_names=[], register=lambda server: None, start=start)
        await serve_until_signalled(app, ServerConfig.from_env(Env(), 0))

    setup_logging("stand-in")
    asyncio.run(main())
    """
)
# Writes its name to a file when SIGTERM arrives, then exits 0; or ignores SIGTERM (STUBBORN=1).
TERM_RECORDER = textwrap.dedent(
    """
    import os, pathlib, signal, sys, time
    name, record = sys.argv[1], pathlib.Path(sys.argv[2])
    def on_term(signum, frame):
        with record.open("a") as f:
            f.write(name + "\\n")
        if os.environ.get("STUBBORN") != "1":
            sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    print("armed", flush=True)
    time.sleep(120)
    """
)


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", **extra)


def make_suite(tmp_path: Path, specs: list[ChildSpec], **options: float) -> tuple[Suite, io.StringIO]:
    console = io.StringIO()
    settings: dict[str, float] = {"start_timeout": 20.0, "grace_seconds": 5.0, "backoff_initial": 0.05}
    settings.update(options)
    suite = Suite(
        specs,
        log_dir=tmp_path / "logs",
        console=console,
        start_timeout=settings["start_timeout"],
        grace_seconds=settings["grace_seconds"],
        max_restarts=int(settings.get("max_restarts", 3)),
        restart_window=60.0,
        backoff_initial=settings["backoff_initial"],
        backoff_max=0.2,
    )
    return suite, console


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_a_child_that_dies_is_reported_and_restarted(tmp_path: Path) -> None:
    specs = [
        ChildSpec("steady", [PY, "-c", SLEEPER], env()),
        ChildSpec("flaky", [PY, "-c", FLAKY, str(tmp_path / "runs")], env()),
    ]
    suite, console = make_suite(tmp_path, specs)
    await suite.start()
    try:
        await suite.wait_ready(timeout=20)
        await eventually(lambda: (tmp_path / "runs").exists() and (tmp_path / "runs").read_text() == "2")
        await suite.wait_ready(timeout=20)
        pids = suite.pids
        assert set(pids) == {"steady", "flaky"}
        assert all(alive(pid) for pid in pids.values())
    finally:
        await suite.stop()
    report = console.getvalue()
    assert "flaky exited with code 3" in report
    assert "boom: cannot open the index" in report, "the tail of the log is shown"
    assert "restarting flaky" in report
    assert "steady exited" not in report
    assert not suite.failed
    assert not any(alive(pid) for pid in pids.values())
    log = (tmp_path / "logs" / "flaky.log").read_text()
    assert log.count('"msg": "starting flaky"') == 2
    assert "boom: cannot open the index" in log


async def test_a_child_that_keeps_dying_stops_the_suite(tmp_path: Path) -> None:
    specs = [
        ChildSpec("steady", [PY, "-c", SLEEPER], env()),
        # Never ready (nothing listens there), so the start waits on it while it keeps dying.
        ChildSpec("doomed", [PY, "-c", ALWAYS_DIES], env(), ready=HttpReady("127.0.0.1", free_port())),
        ChildSpec("never", [PY, "-c", SLEEPER], env()),
    ]
    suite, console = make_suite(tmp_path, specs, max_restarts=2)
    await suite.start()
    await eventually(lambda: "steady" in suite.pids)
    steady = suite.pids["steady"]
    with pytest.raises(SuiteFailed, match="doomed exited 3 times"):
        await suite.wait_ready(timeout=20)
    await suite.stop()
    assert suite.failed
    assert not alive(steady), "the others are stopped too"
    assert suite.pids == {}
    report = console.getvalue()
    assert report.count("doomed exited with code 4") == 3
    assert "doomed: error: cannot open index" in report, "error log lines are summarised on the console"
    assert "never" not in report, "children after the failing one are not started"


async def test_grpc_children_start_in_order_each_after_the_previous_is_serving(tmp_path: Path) -> None:
    first, second = free_port(), free_port()
    specs = [
        ChildSpec(
            "first",
            [PY, "-c", GRPC_STAND_IN],
            env(PORT=str(first), DELAY="0.6"),
            ready=GrpcHealth(f"127.0.0.1:{first}"),
            listen=("127.0.0.1", first),
        ),
        ChildSpec(
            "second",
            [PY, "-c", GRPC_STAND_IN],
            env(PORT=str(second), DELAY="0", PREV_ADDR=f"127.0.0.1:{first}"),
            ready=GrpcHealth(f"127.0.0.1:{second}"),
            listen=("127.0.0.1", second),
        ),
    ]
    suite, console = make_suite(tmp_path, specs)
    await suite.start()
    try:
        await suite.wait_ready(timeout=30)
        for port in (first, second):
            channel = open_channel(f"127.0.0.1:{port}")
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            await channel.close()
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        pids = suite.pids
    finally:
        await suite.stop()
    report = console.getvalue()
    assert "exited" not in report, report
    assert report.index("first ready") < report.index("second ready")
    assert not any(alive(pid) for pid in pids.values())
    log = [json.loads(line) for line in (tmp_path / "logs" / "first.log").read_text().splitlines()]
    assert log[0]["service"] == "supervisor"
    assert any(entry.get("msg") == "serving" for entry in log), "the child's JSON logs land in its log file"


async def test_http_readiness(tmp_path: Path) -> None:
    port = free_port()
    spec = ChildSpec(
        "web",
        [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        env(),
        ready=HttpReady("127.0.0.1", port),
    )
    suite, console = make_suite(tmp_path, [spec])
    await suite.start()
    try:
        await suite.wait_ready(timeout=20)
        assert f"web ready (pid {suite.pids['web']}, http://127.0.0.1:{port})" in console.getvalue()
    finally:
        await suite.stop()


async def test_stop_goes_in_reverse_order_and_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    record = tmp_path / "terms"
    specs = [
        ChildSpec(name, [PY, "-c", TERM_RECORDER, name, str(record)], env(STUBBORN="1" if name == "b" else "0"))
        for name in ("a", "b", "c")
    ]
    suite, console = make_suite(tmp_path, specs, grace_seconds=0.5)
    await suite.start()
    await suite.wait_ready(timeout=20)
    await eventually(lambda: all("armed" in suite.log_path(n).read_text().splitlines() for n in ("a", "b", "c")))
    pids = suite.pids
    started = time.monotonic()
    await suite.stop()
    assert time.monotonic() - started < 5
    assert record.read_text().split() == ["c", "b", "a"]
    assert "b did not stop within 0.5 s; killing it" in console.getvalue()
    assert not any(alive(pid) for pid in pids.values())
    assert "exited" not in console.getvalue(), "a stop is not reported as a crash"


async def test_a_busy_port_fails_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        spec = ChildSpec("gateway", [PY, "-c", SLEEPER], env(), listen=("127.0.0.1", port))
        suite, _ = make_suite(tmp_path, [spec])
        with pytest.raises(SuiteFailed, match=rf"port already in use for gateway \(127.0.0.1:{port}\)"):
            await suite.start()
    assert suite.pids == {}


SUPERVISOR_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from ui.supervisor import ChildSpec, Suite, SuiteConfig, run_suite

    home = Path(sys.argv[1])
    config = SuiteConfig(home=home, with_ui=False, grace_seconds=5)
    spec = ChildSpec("sleeper", [sys.executable, "-c", sys.argv[2]], dict(os.environ))
    suite = Suite([spec], log_dir=home / "logs", console=sys.stderr, grace_seconds=5)

    async def main():
        async def announce():
            await suite.wait_ready()
            print("PID", suite.pids["sleeper"], flush=True)
        task = asyncio.create_task(announce())
        code = await run_suite(suite, config, sys.stdout)
        task.cancel()
        return code

    sys.exit(asyncio.run(main()))
    """
)


def start_supervisor(tmp_path: Path) -> tuple[subprocess.Popen[str], int, list[str]]:
    process = subprocess.Popen(
        [PY, "-c", SUPERVISOR_SCRIPT, str(tmp_path), SLEEPER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert process.stdout is not None
    lines: list[str] = []
    pid = 0
    for line in process.stdout:
        lines.append(line)
        if line.startswith("PID "):
            pid = int(line.split()[1])
        if pid and any(seen.startswith("ragchat is up") for seen in lines):
            # Past its only write: it cannot die of a broken pipe once the supervisor is gone.
            log = tmp_path / "logs" / "sleeper.log"
            deadline = time.monotonic() + 10
            while "sleeping" not in log.read_text().splitlines() and time.monotonic() < deadline:
                time.sleep(0.02)
            return process, pid, lines
    process.kill()
    raise AssertionError(
        f"the supervisor did not start its child: {lines} {process.stderr.read() if process.stderr else ''}"
    )


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_sigterm_to_the_supervisor_stops_children_and_exits_0(tmp_path: Path) -> None:
    process, child, lines = start_supervisor(tmp_path)
    try:
        assert any(line.startswith("ragchat is up") for line in lines)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert wait_gone(child)
    finally:
        cleanup(process, child)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    process, child, _ = start_supervisor(tmp_path)
    try:
        process.kill()
        process.wait(timeout=10)
        assert wait_gone(child), "the kernel ends the child when its supervisor dies"
    finally:
        cleanup(process, child)


def cleanup(process: subprocess.Popen[str], child: int) -> None:
    """Leave nothing behind when a test failed half-way."""
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)
    if alive(child):
        os.kill(child, signal.SIGKILL)
