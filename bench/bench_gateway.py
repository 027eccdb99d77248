"""Gateway benchmark: overhead per turn, and 64 concurrent streaming conversations.

The gateway runs as its own process (``python -m services.gateway``, SQLite history and call
log) in front of fake retrieval and generation gRPC servers in this process.

1. Overhead: the same turns, one at a time, through the gateway and, as the reference, the
   same Search + Generate calls made directly to the fakes. The gateway's overhead per turn is
   the difference of the medians (condensing, prompt building, relaying, history, call log,
   one more gRPC hop). Target: p50 ≤ 5 ms.
2. Load: 64 conversations streaming concurrently for ``--seconds`` (60) against a generator
   emitting 50 tokens/s; each conversation asks follow-up after follow-up. Target: zero errors
   and exactly one call-log record per turn (counted in the gateway's database afterwards).

``python -m bench gateway`` (or ``make bench``); ``python -m bench.bench_gateway --seconds 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ragchat.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)

from services.common.config import Env, ServerConfig
from services.common.server import GrpcServer, ServiceApp

REPO = Path(__file__).resolve().parents[1]
PASSAGES = [
    common_pb2.Passage(
        chunk_id=f"d1:{i}",
        doc_id="d1",
        title="Handgun checks",
        source="nics.pdf",
        page=i + 1,
        text=f"In month {i}, Kentucky ran {250_000 + i} handgun background checks. " * 4,
        score=10.0 - i,
    )
    for i in range(5)
]


class FakeRetrieval(retrieval_pb2_grpc.RetrievalServiceServicer):
    async def Search(
        self, request: retrieval_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.SearchResponse:
        return retrieval_pb2.SearchResponse(passages=PASSAGES[: request.top_k or 5], backend="fake")

    async def IndexDocument(
        self, request_iterator: object, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.IndexDocumentResponse:
        raise NotImplementedError("the fake retrieval service only searches")

    async def DeleteDocument(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.DeleteIndexedDocumentResponse:
        raise NotImplementedError("the fake retrieval service only searches")


class FakeGeneration(generation_pb2_grpc.GenerationServiceServicer):
    """Streams ``tokens`` words, ``interval`` seconds apart, then cites the first passage."""

    def __init__(self) -> None:
        self.tokens = 20
        self.interval = 0.0

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        for i in range(self.tokens):
            if self.interval:
                await asyncio.sleep(self.interval)
            yield generation_pb2.GenerateResponse(token=f"word{i} ")
        used = [request.passages[0].chunk_id] if request.passages else []
        yield generation_pb2.GenerateResponse(
            done=generation_pb2.GenerateDone(
                usage=common_pb2.Usage(prompt_tokens=300, completion_tokens=self.tokens),
                finish_reason="stop",
                used_chunk_ids=used,
                model="fake",
            )
        )

    async def Summarize(
        self, request: generation_pb2.SummarizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        raise NotImplementedError("the fake generation service only answers")
        yield generation_pb2.GenerateResponse()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_fake(name: str, register: ServiceApp) -> tuple[GrpcServer, int]:
    config = ServerConfig.from_env(Env({"PORT": "0", "SHUTDOWN_GRACE_SECONDS": "1"}), 0)
    server = GrpcServer(register, config)
    return server, await server.start()


async def wait_serving(target: str, process: asyncio.subprocess.Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the gateway did not become healthy")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Turn:
    ok: bool
    total_ms: float
    first_token_ms: float
    tokens: int
    error: str = ""
    conversation_id: str = ""


async def gateway_turn(
    stub: gateway_pb2_grpc.GatewayServiceStub, user: str, question: str, conversation_id: str
) -> Turn:
    metadata = (("x-ragchat-user", user),)
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    cid = conversation_id
    try:
        async for event in stub.Chat(
            gateway_pb2.ChatRequest(question=question, conversation_id=conversation_id), metadata=metadata
        ):
            kind = event.WhichOneof("event")
            if kind == "started":
                cid = event.started.conversation_id
            elif kind == "token":
                tokens += 1
                if not first:
                    first = time.perf_counter()
            elif kind == "error":
                return Turn(False, 0, 0, tokens, f"{event.error.code}: {event.error.message}", cid)
    except grpc.aio.AioRpcError as error:
        return Turn(False, 0, 0, tokens, f"{error.code().name}: {error.details()}", cid)
    now = time.perf_counter()
    return Turn(True, (now - started) * 1000, (first - started) * 1000, tokens, "", cid)


async def direct_turn(
    retrieval: retrieval_pb2_grpc.RetrievalServiceStub,
    generation: generation_pb2_grpc.GenerationServiceStub,
    question: str,
) -> float:
    """The reference: what the gateway calls downstream, called directly."""
    started = time.perf_counter()
    found = await retrieval.Search(retrieval_pb2.SearchRequest(owner="bench", query=question, top_k=5))
    request = generation_pb2.GenerateRequest(
        system="You are ragchat.",
        passages=found.passages,
        question=question,
        user_template="<documents>\n{context}\n</documents>\n\nQuestion: {question}",
        passage_template='<document n="{n}">{text}</document>',
        language="en",
    )
    async for _ in generation.Generate(request):
        pass
    return (time.perf_counter() - started) * 1000


@dataclass
class LoadResult:
    turns: list[Turn] = field(default_factory=list)


async def conversation_loop(
    stub: gateway_pb2_grpc.GatewayServiceStub, user: str, until: float, result: LoadResult
) -> None:
    cid = ""
    n = 0
    while time.monotonic() < until:
        question = "How many handgun checks were run in Kentucky?" if n == 0 else f"And in month {n}?"
        turn = await gateway_turn(stub, user, question, cid)
        result.turns.append(turn)
        cid = turn.conversation_id or cid
        n += 1


def count_records(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT status, COUNT(*) FROM calls WHERE kind = 'chat' GROUP BY status").fetchall()
        duplicates = conn.execute("SELECT COUNT(*) - COUNT(DISTINCT call_id) FROM calls").fetchone()[0]
    counts = {str(status): int(n) for status, n in rows}
    counts["duplicates"] = int(duplicates)
    return counts


async def run(seconds: float, overhead_turns: int, conversations: int, rate: float, answer_tokens: int) -> int:
    generation = FakeGeneration()
    retrieval_server, retrieval_port = await start_fake(
        "retrieval",
        ServiceApp(
            name="fake-retrieval",
            service_names=["ragchat.v1.RetrievalService"],
            register=lambda s: retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(FakeRetrieval(), s),
        ),
    )
    generation_server, generation_port = await start_fake(
        "generation",
        ServiceApp(
            name="fake-generation",
            service_names=["ragchat.v1.GenerationService"],
            register=lambda s: generation_pb2_grpc.add_GenerationServiceServicer_to_server(generation, s),
        ),
    )
    home = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "DATA_DIR": str(home),
        "RETRIEVAL_ADDR": f"127.0.0.1:{retrieval_port}",
        "GENERATION_ADDR": f"127.0.0.1:{generation_port}",
        "INGEST_ADDR": "127.0.0.1:9",
        "LOG_LEVEL": "warning",
        "SHUTDOWN_GRACE_SECONDS": "30",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.gateway", cwd=REPO, env=env, stdout=subprocess.DEVNULL
    )
    target = f"127.0.0.1:{port}"
    try:
        await wait_serving(target, process)
        async with (
            grpc.aio.insecure_channel(target) as gateway_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{retrieval_port}") as retrieval_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{generation_port}") as generation_channel,
        ):
            gateway = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
            retrieval = retrieval_pb2_grpc.RetrievalServiceStub(retrieval_channel)
            direct_generation = generation_pb2_grpc.GenerationServiceStub(generation_channel)

            # 1. Overhead, serial, unthrottled generator; interleaved so drift hits both alike.
            generation.tokens, generation.interval = 20, 0.0
            for _ in range(20):  # warm-up
                await gateway_turn(gateway, "warm", "warm up question", "")
                await direct_turn(retrieval, direct_generation, "warm up question")
            via_gateway: list[float] = []
            direct: list[float] = []
            cid = ""
            for i in range(overhead_turns):
                if i % 10 == 0:
                    cid = ""  # ten turns per conversation: history grows, as in use
                turn = await gateway_turn(gateway, "overhead", f"How many checks in month {i}?", cid)
                if not turn.ok:
                    raise RuntimeError(turn.error)
                cid = turn.conversation_id
                via_gateway.append(turn.total_ms)
                direct.append(await direct_turn(retrieval, direct_generation, f"How many checks in month {i}?"))

            # 2. Load.
            generation.tokens, generation.interval = answer_tokens, 1.0 / rate
            result = LoadResult()
            started = time.monotonic()
            until = started + seconds
            await asyncio.gather(
                *(conversation_loop(gateway, f"user{i:02d}", until, result) for i in range(conversations))
            )
            elapsed = time.monotonic() - started
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()
        await retrieval_server.stop(0)
        await generation_server.stop(0)

    records = count_records(home / "gateway.db")
    shutil.rmtree(home, ignore_errors=True)
    load_turns = result.turns
    ok = [t for t in load_turns if t.ok]
    errors = [t for t in load_turns if not t.ok]
    expected_records = overhead_turns + 20 + len(load_turns)
    logged = sum(n for status, n in records.items() if status != "duplicates")
    overhead_p50 = statistics.median(via_gateway) - statistics.median(direct)
    overhead_p95 = percentile(via_gateway, 0.95) - percentile(direct, 0.95)

    print(f"\nGateway overhead per turn ({overhead_turns} serial turns, 20-token answers, SQLite history and log)\n")
    print("| path | p50 ms | p95 ms |")
    print("|---|---:|---:|")
    print(
        f"| direct Search + Generate (reference) | {statistics.median(direct):.2f} | {percentile(direct, 0.95):.2f} |"
    )
    print(f"| through the gateway | {statistics.median(via_gateway):.2f} | {percentile(via_gateway, 0.95):.2f} |")
    print(f"| **gateway overhead** (difference) | **{overhead_p50:.2f}** | {overhead_p95:.2f} |")
    print(f"\nratio gateway / direct at p50: {statistics.median(via_gateway) / statistics.median(direct):.2f}")

    print(
        f"\nLoad: {conversations} concurrent streaming conversations for {elapsed:.0f} s, "
        f"fake generator at {rate:g} tokens/s, {answer_tokens}-token answers\n"
    )
    first = [t.first_token_ms for t in ok]
    totals = [t.total_ms for t in ok]
    ideal_ms = answer_tokens / rate * 1000
    print("| measure | value |")
    print("|---|---:|")
    print(f"| turns completed | {len(ok)} |")
    print(f"| errors | {len(errors)} |")
    print(f"| tokens relayed per second | {sum(t.tokens for t in ok) / elapsed:.0f} |")
    print(f"| first token p50 / p95 ms | {percentile(first, 0.5):.1f} / {percentile(first, 0.95):.1f} |")
    print(
        f"| turn p50 / p95 ms (generator alone: {ideal_ms:.0f}) | "
        f"{percentile(totals, 0.5):.0f} / {percentile(totals, 0.95):.0f} |"
    )
    print(f"| chat call records / chat calls made | {logged} / {expected_records} |")
    print(f"| duplicate call records | {records['duplicates']} |")
    if errors:
        print(f"\nfirst error: {errors[0].error}")

    passed = overhead_p50 <= 5.0 and not errors and logged == expected_records and records["duplicates"] == 0
    print(f"\nresult: {'PASS' if passed else 'FAIL'} (overhead p50 ≤ 5 ms, zero errors, one record per call)")
    return 0 if passed else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load phase")
    parser.add_argument("--overhead-turns", type=int, default=300)
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--rate", type=float, default=50.0, help="fake generator tokens per second")
    parser.add_argument("--answer-tokens", type=int, default=50)
    args = parser.parse_args(argv)
    return asyncio.run(run(args.seconds, args.overhead_turns, args.conversations, args.rate, args.answer_tokens))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
