"""What the generation service adds to a streamed answer (``python -m bench generation``).

Processes: a fake OpenAI-compatible model server (server-sent events, each token stamped
with its emission time on the machine-wide monotonic clock), the real generation service
(``python -m services.generation`` with ``GENERATION_BACKEND=openai``) relaying it, a
"gRPC floor" server, and this client. Two backends: a fast one (10,000 tokens/s per
stream) and a realistic one (50 tokens/s), each with 64 concurrent streams, measured in
one run: each load three times (192 first tokens a path), the paths taking turns:

* **direct**: the client reads the fake server itself, with the HTTP client, the line
  handling, the JSON encoding and parsing and the event loop of the service's OpenAI adapter
  (``http_stream``, SSE lines as bytes, orjson, uvloop): the reference.
* **gRPC floor** (single stream and realistic rows): a bare ``grpc.aio`` server on uvloop
  (no interceptor, no HTTP leg, no service code) that makes the same stamped tokens itself;
  read over gRPC exactly as the relay is. Floor minus direct is what gRPC costs on its own,
  the client's gRPC receive included (the direct path pays an HTTP read instead).
* **relay**: the client reads the same streams through the generation service over gRPC, on
  one channel for the whole run (as the direct reference keeps its HTTP connections alive).
  Relay minus floor is the service's own part: its HTTP leg, our code, the interceptor.

A last row repeats the realistic load with the request of a real question: eight SciFact
abstracts (~13 KB) as passages in the gateway's template, which the service fits to the
context window and renders on the way to the first token; the direct reference sends the
same messages, prepared before its clock starts.

``--client-loop asyncio`` runs this client (all paths) on asyncio's own loop instead.
``--instructions`` counts, instead, the instructions the service executes per relayed answer
under ``valgrind --tool=callgrind`` (a few minutes; independent of the machine's load).

Every path is first warmed at the measured concurrency, so that the reference's HTTP client
and the service each keep 64 connections to the fake server, as in steady service.

Latency of a token = time received by the client - time emitted by the fake server. First
token = client's time to first token - the fake server's own (request received to first
token emitted). "Added" is relay minus direct, the cost of the service and its gRPC leg.
Every stream is checked for dropped or reordered tokens, and the service's RSS is sampled.
The CPU time each process spends per token (``/proc/<pid>/stat``) is reported for the
realistic row: the three processes share the machine's cores, so one's work delays the
others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import orjson
import uvloop
from ragchat.v1 import common_pb2, generation_pb2, generation_pb2_grpc

from services.common.channels import open_channel
from services.generation.backends.http_stream import StreamingHttpClient
from services.generation.backends.openai_compatible import encode_json

STREAMS = 64
CONTEXT_WINDOW = 16384
# Sequential one-stream requests measured for the service's own first-token latency.
SINGLE_SAMPLES = 100
# Seconds over which the starts of the concurrent streams are spread.
STAGGER = 1.0
# Times each concurrent load runs (its paths taking turns): WAVES x STREAMS first tokens a path.
WAVES = 3
ROOT = Path(__file__).resolve().parents[1]
_RATE_RE = re.compile(r"bench-rate=(\d+)")
# The realistic request with passages: the gateway's template, eight retrieved passages.
PASSAGES = 8
USER_TEMPLATE = "<documents>\n{context}\n</documents>\n\nQuestion: {question}"
SHARED_DATA = ROOT / ".." / "shared" / "data"


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # shared by every process of the machine


# ---------------------------------------------------------------- the fake model server


async def _fake_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:  # keep-alive: one request after another on the connection
            head = await reader.readuntil(b"\r\n\r\n")
            received = now_ns()
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = json.loads(await reader.readexactly(length))
            prompt = body["messages"][-1]["content"]
            match = _RATE_RE.search(prompt)
            rate = int(match.group(1)) if match else 50
            tokens = int(body.get("max_tokens", 100))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            async for stamp in stamped_tokens(received, rate, tokens):
                chunk = {"choices": [{"index": 0, "delta": {"content": stamp}, "finish_reason": None}]}
                data = f"data: {json.dumps(chunk)}\n\n".encode()
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                await writer.drain()
            tail = (
                f"data: {json.dumps({'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'length'}]})}\n\n"
                "data: [DONE]\n\n"
            ).encode()
            writer.write(f"{len(tail):x}\r\n".encode() + tail + b"\r\n0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def stamped_tokens(received: int, rate: int, tokens: int) -> AsyncIterator[str]:
    """``tokens`` stamped tokens at ``rate`` per second: "seq:emitted", the first "0:received:emitted"."""
    start = time.monotonic()
    for i in range(tokens):
        pause = start + (i + 1) / rate - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        yield f"{i}:{received}:{now_ns()} " if i == 0 else f"{i}:{now_ns()} "


class FloorServicer(generation_pb2_grpc.GenerationServiceServicer):
    """The gRPC floor: the fake's stamped tokens, made here and sent over gRPC, nothing else."""

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        received = now_ns()
        match = _RATE_RE.search(request.question)
        rate = int(match.group(1)) if match else 50
        async for stamp in stamped_tokens(received, rate, request.params.max_new_tokens or 100):
            yield generation_pb2.GenerateResponse(token=stamp)
        yield generation_pb2.GenerateResponse(done=generation_pb2.GenerateDone(finish_reason="length"))

    async def Summarize(
        self, request: generation_pb2.SummarizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the gRPC floor only streams Generate")
        yield generation_pb2.GenerateResponse()  # never reached: makes this an async generator


async def serve_floor(port: int) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1._async import HealthServicer

    server = grpc.aio.server()
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(FloorServicer(), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def serve_fake(port: int) -> None:
    server = await asyncio.start_server(_fake_connection, "127.0.0.1", port, backlog=512)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------- measurement


@dataclass
class Run:
    first_added_ms: list[float] = field(default_factory=list)  # client TTFT - backend TTFT
    token_ms: list[float] = field(default_factory=list)  # received - emitted, after the first token
    tokens: int = 0
    broken: list[str] = field(default_factory=list)  # streams with dropped or reordered tokens
    seconds: float = 0.0
    cpu_us: dict[str, float] = field(default_factory=dict)  # process → CPU microseconds per token


def _record(run: Run, stream: int, sent_ns: int, pieces: list[tuple[int, str]], expected: int) -> None:
    text = "".join(piece for _, piece in pieces)
    stamps = text.split()
    seqs = [int(s.split(":")[0]) for s in stamps]
    if seqs != list(range(expected)):
        run.broken.append(f"stream {stream}: {len(seqs)} tokens, order ok: {seqs == sorted(seqs)}")
        return
    emitted: dict[int, int] = {}
    backend_first = 0
    for stamp in stamps:
        parts = [int(p) for p in stamp.split(":")]
        if parts[0] == 0:
            backend_first = parts[2] - parts[1]
            emitted[0] = parts[2]
        else:
            emitted[parts[0]] = parts[1]
    # Which tokens each received piece completed (a piece holds whole tokens: one, or several that
    # reached the service together); each token is timed at the arrival of its piece.
    seen = 0
    for received, piece in pieces:
        for stamp in piece.split():
            seq = int(stamp.split(":")[0])
            if seq == 0:
                run.first_added_ms.append(((received - sent_ns) - backend_first) / 1e6)
            else:
                run.token_ms.append((received - emitted[seq]) / 1e6)
            seen += 1
    run.tokens += seen


async def run_direct(
    client: StreamingHttpClient,
    rate: int,
    tokens: int,
    streams: int = STREAMS,
    stagger: float = 0.0,
    messages: list[dict[str, str]] | None = None,
) -> Run:
    """The reference: the streams read from the fake server itself, as the service reads them
    (``messages``: the prompt the service would send, prepared before the clock starts)."""
    run = Run()

    async def one(stream: int) -> None:
        await asyncio.sleep(stream * stagger)
        body = {
            "model": "fake",
            "messages": messages or [{"role": "user", "content": f"bench-rate={rate}"}],
            "max_tokens": tokens,
            "stream": True,
        }
        pieces: list[tuple[int, str]] = []
        sent = now_ns()
        response = await client.post("/chat/completions", encode_json(body))
        try:
            while (raw := await response.readline()) is not None:
                if raw.startswith(b"data:") and raw[5:].strip() != b"[DONE]":
                    content = orjson.loads(raw[5:])["choices"][0]["delta"].get("content")
                    if content:
                        pieces.append((now_ns(), content))
        finally:
            response.close()
        _record(run, stream, sent, pieces, tokens)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(streams)))
    run.seconds = time.perf_counter() - started
    return run


async def run_relay(
    stub: generation_pb2_grpc.GenerationServiceStub,
    rate: int,
    tokens: int,
    streams: int = STREAMS,
    stagger: float = 0.0,
    passages: Sequence[common_pb2.Passage] = (),
) -> Run:
    run = Run()

    async def one(stream: int) -> None:
        request = generation_pb2.GenerateRequest(
            question=f"bench-rate={rate}",
            params=generation_pb2.GenerationParams(max_new_tokens=tokens),
            passages=passages,
            user_template=USER_TEMPLATE if passages else "",
        )
        await asyncio.sleep(stream * stagger)
        pieces: list[tuple[int, str]] = []
        sent = now_ns()
        async for response in stub.Generate(request, timeout=120):
            if response.WhichOneof("event") == "token":
                pieces.append((now_ns(), response.token))
        _record(run, stream, sent, pieces, tokens)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(streams)))
    run.seconds = time.perf_counter() - started
    return run


def _merge(total: Run, run: Run) -> None:
    for name, us in run.cpu_us.items():  # per token, weighted by tokens
        total.cpu_us[name] = (total.cpu_us.get(name, 0.0) * total.tokens + us * run.tokens) / max(
            1, total.tokens + run.tokens
        )
    total.first_added_ms += run.first_added_ms
    total.token_ms += run.token_ms
    total.tokens += run.tokens
    total.broken += run.broken
    total.seconds += run.seconds


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def with_cpu(pids: dict[str, int], measured: Awaitable[Run]) -> Run:
    """``measured``'s run, with the CPU time each of ``pids`` spent per token during it."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    run = await measured
    run.cpu_us = {name: (cpu_seconds(pid) - before[name]) * 1e6 / max(1, run.tokens) for name, pid in pids.items()}
    return run


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wait_serving(address: str, deadline: float) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    while True:
        channel = open_channel(address)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except Exception:  # not up yet
            if time.monotonic() > deadline:
                raise
        finally:
            await channel.close()
        await asyncio.sleep(0.2)


def start_floor() -> tuple[subprocess.Popen[bytes], str]:
    """The gRPC floor server; returns its process and address."""
    port = free_port()
    floor = subprocess.Popen([sys.executable, "-m", "bench.bench_generation", "--serve-floor", str(port)], cwd=ROOT)
    return floor, f"127.0.0.1:{port}"


def start_processes(
    home: str, wrapper: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], int, str]:
    """The fake model server and the generation service relaying it (``wrapper`` runs the service,
    e.g. under valgrind); returns both processes, the fake's port and the service's address."""
    fake_port, service_port = free_port(), free_port()
    fake = subprocess.Popen([sys.executable, "-m", "bench.bench_generation", "--serve-fake", str(fake_port)], cwd=ROOT)
    env = {
        **os.environ,
        "GENERATION_BACKEND": "openai",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{fake_port}/v1",
        "OPENAI_MODEL": "fake",
        "OPENAI_STREAM_USAGE": "false",
        "PORT": str(service_port),
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "warning",
        "RAGCHAT_HOME": home,
        "GENERATION_CONTEXT_WINDOW": str(CONTEXT_WINDOW),
    }
    service = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "services.generation"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if wrapper else None,
    )
    return fake, service, fake_port, f"127.0.0.1:{service_port}"


def stop_processes(*processes: subprocess.Popen[bytes], timeout: float = 30) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bench_passages() -> list[common_pb2.Passage]:
    """Eight SciFact abstracts (from the shared data; synthetic text of the same size without it)."""
    corpus = SHARED_DATA / "scifact" / "corpus.jsonl"
    records: list[tuple[str, str]] = []
    if corpus.is_file():
        with corpus.open(encoding="utf-8") as lines:
            for raw in lines:
                record = json.loads(raw)
                if "bench-rate" not in record["text"]:
                    records.append((record["title"], record["text"]))
                if len(records) == PASSAGES:
                    break
    while len(records) < PASSAGES:
        n = len(records)
        records.append(
            (f"Study {n}", " ".join(f"Finding {i} of study {n} was significant (p < 0.05)." for i in range(30)))
        )
    return [
        common_pb2.Passage(chunk_id=f"c{n}", doc_id=f"d{n}", title=title, page=1, text=text, score=1.0 - n / 10)
        for n, (title, text) in enumerate(records)
    ]


def service_messages(rate: int, tokens: int, passages: Sequence[common_pb2.Passage]) -> list[dict[str, str]]:
    """The messages the service sends the model for this request (its own prompt code), for the reference."""
    from services.generation.backends import GenerationInput, GenerationParams, Passage
    from services.generation.backends.llm import LLMGenerator, LLMSettings
    from services.generation.backends.openai_compatible import OpenAIChatModel, OpenAISettings
    from services.generation.formats import openai_messages

    model = OpenAIChatModel(OpenAISettings(base_url="http://unused/v1", model="fake"))
    inp = GenerationInput(
        question=f"bench-rate={rate}",
        passages=tuple(
            Passage(chunk_id=p.chunk_id, doc_id=p.doc_id, title=p.title, page=p.page, text=p.text) for p in passages
        ),
        user_template=USER_TEMPLATE,
        params=GenerationParams(max_new_tokens=tokens),
    )
    request, _, _ = LLMGenerator(model, LLMSettings(context_window=CONTEXT_WINDOW)).plan(inp)
    return openai_messages(request.dialog)


@dataclass
class Row:
    label: str
    rate: int
    tokens: int
    direct: Run
    relay: Run
    floor: Run | None = None


async def measure(tokens_fast: int, tokens_real: int, client_loop: str) -> int:
    with tempfile.TemporaryDirectory() as home:
        fake, service, fake_port, address = start_processes(home)
        floor_process, floor_address = start_floor()
        http: StreamingHttpClient | None = None
        channels: list[grpc.aio.Channel] = []
        try:
            await wait_serving(address, time.monotonic() + 30)
            await wait_serving(floor_address, time.monotonic() + 30)
            http = StreamingHttpClient(f"http://127.0.0.1:{fake_port}/v1", headers={"Accept": "text/event-stream"})
            channels = [open_channel(address), open_channel(floor_address)]
            stub, floor = (generation_pb2_grpc.GenerationServiceStub(channel) for channel in channels)
            # Warm-up: imports, caches, and connections at the measured concurrency. A relayed stream
            # lasts so briefly at 10,000 tokens/s that the service would hold only a few HTTP
            # connections, and 64 slow streams would then each open one on the way to their first
            # token (~0.35 ms here), which the reference, whose 64 requests leave at once, never pays.
            for _ in range(2):
                await run_direct(http, 10_000, 20)
                await run_direct(http, 50, 2)
                await run_relay(stub, 10_000, 20)
                await run_relay(stub, 50, 2)
                await run_relay(floor, 10_000, 20)
            rss = [rss_mb(service.pid)]
            rows: list[Row] = []
            # One stream at a time: the service's own latency, without queueing behind other streams.
            single = Row("single stream", 10_000, 5, Run(), Run(), Run())
            for _ in range(SINGLE_SAMPLES):
                _merge(single.direct, await run_direct(http, 10_000, 5, streams=1))
                assert single.floor is not None
                _merge(single.floor, await run_relay(floor, 10_000, 5, streams=1))
                _merge(single.relay, await run_relay(stub, 10_000, 5, streams=1))
            rows.append(single)
            # 64 concurrent streams, their starts spread over STAGGER seconds (as users arrive).
            me = os.getpid()
            # Each load runs WAVES times, the paths taking turns, for WAVES x 64 first tokens a path.
            relay_pids = {"client": me, "fake": fake.pid, "service": service.pid}
            floor_pids = {"client": me, "floor": floor_process.pid}
            stagger = STAGGER / STREAMS
            for label, rate, tokens in (("fast", 10_000, tokens_fast), ("realistic", 50, tokens_real)):
                row = Row(f"{label}, {STREAMS} streams", rate, tokens, Run(), Run(), Run() if rate <= 1_000 else None)
                for _ in range(WAVES):
                    _merge(row.direct, await with_cpu(relay_pids, run_direct(http, rate, tokens, stagger=stagger)))
                    if row.floor is not None:
                        _merge(row.floor, await with_cpu(floor_pids, run_relay(floor, rate, tokens, stagger=stagger)))
                    _merge(row.relay, await with_cpu(relay_pids, run_relay(stub, rate, tokens, stagger=stagger)))
                rss.append(rss_mb(service.pid))
                rows.append(row)
            # The same realistic load with the prompt of a real question: eight passages (~13 KB) that
            # the service fits to the context window and renders on the way to the first token.
            passages = bench_passages()
            messages = service_messages(50, tokens_real, passages)
            row = Row(f"realistic + {PASSAGES} passages, {STREAMS} streams", 50, tokens_real, Run(), Run())
            for _ in range(WAVES):
                direct = run_direct(http, 50, tokens_real, stagger=stagger, messages=messages)
                _merge(row.direct, await with_cpu(relay_pids, direct))
                relay = run_relay(stub, 50, tokens_real, stagger=stagger, passages=passages)
                _merge(row.relay, await with_cpu(relay_pids, relay))
            rss.append(rss_mb(service.pid))
            rows.append(row)
            # Memory flat: the same load again must not grow the service.
            for _ in range(3):
                await run_relay(stub, 10_000, tokens_fast)
                rss.append(rss_mb(service.pid))
        finally:
            if http is not None:
                await http.aclose()
            for channel in channels:
                await channel.close()
            stop_processes(service, fake, floor_process)
    report(rows, rss, client_loop)
    runs = [run for row in rows for run in (row.direct, row.relay, row.floor) if run is not None]
    return 0 if not any(run.broken for run in runs) else 1


# ---------------------------------------------------------------- instructions (load-independent)

# (label, tokens/s of the fake, tokens per answer, answers counted)
INSTRUCTION_LOADS = (("5 tokens at 10,000/s", 10_000, 5, 60), ("20 tokens at 50/s", 50, 20, 40))


async def _callgrind_total(rate: int, tokens: int, answers: int) -> int:
    """Instructions the service process executes (all threads, user space) from its start to
    its exit, having relayed a warm-up and then ``answers`` answers one after another."""
    with tempfile.TemporaryDirectory() as home:
        out = Path(home) / "callgrind.out"
        fake, service, _, address = start_processes(
            home, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        )
        channel: grpc.aio.Channel | None = None
        try:
            await wait_serving(address, time.monotonic() + 600)
            channel = open_channel(address)
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            await run_relay(stub, 10_000, tokens, streams=5)  # warm-up: connections, imports, caches
            for _ in range(answers):
                run = await run_relay(stub, rate, tokens, streams=1)
                if run.broken:
                    raise RuntimeError(f"broken stream under valgrind: {run.broken}")
        finally:
            if channel is not None:
                await channel.close()
            stop_processes(service, fake, timeout=600)
        for line in out.read_text().splitlines():
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError(f"no summary line in {out}")


async def count_instructions() -> int:
    """Instructions per relayed answer: two runs under callgrind, without and with the answers."""
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    print("Generation service, instructions per relayed answer (valgrind --tool=callgrind, all threads)\n")
    print("| answer | instructions per answer |")
    print("|---|---:|")
    for label, rate, tokens, answers in INSTRUCTION_LOADS:
        base = await _callgrind_total(rate, tokens, 0)
        total = await _callgrind_total(rate, tokens, answers)
        print(f"| {label} | {(total - base) / answers / 1e6:.2f} M |", flush=True)
    return 0


def report(rows: list[Row], rss: list[float], client_loop: str) -> None:
    print(
        f"Generation relay: one stream at a time, then {STREAMS} concurrent streams started over {STAGGER:g} s; "
        f"client on {client_loop} (preliminary: noisy shared 2-core machine, load average "
        f"{os.getloadavg()[0]:.1f})\n"
    )
    print(
        "| backend | tokens/stream | path | first token p50 / p99 (ms) | per token p50 / p99 (ms) "
        "| tokens/s | dropped/reordered |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        paths = [("direct (reference)", row.direct), ("gRPC floor", row.floor), ("via generation service", row.relay)]
        for path, run in paths:
            if run is None:
                continue
            print(
                f"| {row.label} ({row.rate:,}/s) | {row.tokens} | {path} | {pct(run.first_added_ms, 0.5):.2f} / "
                f"{pct(run.first_added_ms, 0.99):.2f} | {pct(run.token_ms, 0.5):.2f} / {pct(run.token_ms, 0.99):.2f} "
                f"| {run.tokens / run.seconds:,.0f} | {len(run.broken)} |"
            )
    print(
        "\n| backend | added to first token p50 / p99 (ms) | of which gRPC alone (floor − direct) p50 "
        "| of which the service (relay − floor) p50 | added per token p50 / p99 (ms) | target |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        first = [pct(row.relay.first_added_ms, q) - pct(row.direct.first_added_ms, q) for q in (0.5, 0.99)]
        token = [pct(row.relay.token_ms, q) - pct(row.direct.token_ms, q) for q in (0.5, 0.99)]
        grpc_part = service_part = "–"
        if row.floor is not None:
            floor_p50 = pct(row.floor.first_added_ms, 0.5)
            grpc_part = f"{floor_p50 - pct(row.direct.first_added_ms, 0.5):.2f}"
            service_part = f"{pct(row.relay.first_added_ms, 0.5) - floor_p50:.2f}"
        verdict = "p50 first ≤ 1 ms: " + ("met" if first[0] <= 1.0 else "NOT met")
        print(
            f"| {row.label} ({row.rate:,}/s) | {first[0]:.2f} / {first[1]:.2f} | {grpc_part} | {service_part} "
            f"| {token[0]:.2f} / {token[1]:.2f} | {verdict} |"
        )
    print(
        "\nCPU time per token by process (µs; the processes share the cores, so each one's work delays the others):\n"
    )
    print("| backend | path | client | fake model server | gRPC floor server | generation service |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        for path, run in (("direct", row.direct), ("gRPC floor", row.floor), ("via generation service", row.relay)):
            if run is None or not run.cpu_us:
                continue
            cells = [run.cpu_us.get(name) for name in ("client", "fake", "floor", "service")]
            print(
                f"| {row.label} ({row.rate:,}/s) | {path} | "
                + " | ".join("–" if value is None else f"{value:.0f}" for value in cells)
                + " |"
            )
    growth = rss[-1] - rss[1] if len(rss) > 1 else 0.0
    print(
        f"\nService RSS (MB) after warm-up, each phase, and 3 repeats of the fast load: "
        f"{', '.join(f'{value:.0f}' for value in rss)} (growth after the first phase: {growth:+.1f} MB; "
        f"median {statistics.median(rss):.0f})"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_generation")
    parser.add_argument("--serve-fake", type=int, metavar="PORT", help="run the fake model server (internal)")
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help="run the gRPC floor server (internal)")
    parser.add_argument("--fast-tokens", type=int, default=400)
    parser.add_argument("--realistic-tokens", type=int, default=100)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count the service's instructions per answer under valgrind instead (slow, load-independent)",
    )
    parser.add_argument(
        "--client-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of this client (both paths); uvloop, as the service's own, makes the direct "
        "reference read the stream exactly as the service does",
    )
    args = parser.parse_args(argv)
    if args.serve_fake is not None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_fake(args.serve_fake))
        return 0
    if args.serve_floor is not None:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(serve_floor(args.serve_floor))  # the service's own loop
        return 0
    run = uvloop.run if args.client_loop == "uvloop" else asyncio.run
    if args.instructions:
        return run(count_instructions())
    return run(measure(args.fast_tokens, args.realistic_tokens, args.client_loop))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
