"""``python -m services.generation`` as a process: uvloop, a real answer relayed, SIGTERM.

The service runs its OpenAI-compatible backend against a server-sent-events server on the
test's loop; the test reads the service's JSON log from its stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from ragchat.v1 import generation_pb2, generation_pb2_grpc

from services.common.channels import open_channel
from tests.integration.generation.generation_fakes import RawServer, chunk, read_request

REPO = Path(__file__).resolve().parents[3]


def sse_event(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta, 'finish_reason': finish}]})}\n\n".encode()


async def model_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for frame in (sse_event("Blue"), sse_event(" light"), sse_event(None, "stop"), b"data: [DONE]\n\n"):
            writer.write(chunk(frame))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def next_log(stdout: asyncio.StreamReader, msg: str) -> dict[str, Any]:
    while line := await stdout.readline():
        entry: dict[str, Any] = json.loads(line)
        if entry.get("msg") == msg:
            return entry
    raise AssertionError(f"the service's log ended before {msg!r}")


async def test_the_service_process_runs_on_uvloop_relays_and_stops_on_sigterm(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with RawServer(model_server) as model:
        env = {
            **os.environ,
            "GENERATION_BACKEND": "openai",
            "OPENAI_BASE_URL": model.url("/v1"),
            "OPENAI_MODEL": "fake",
            "OPENAI_STREAM_USAGE": "false",
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "info",
            "RAGCHAT_HOME": str(tmp_path),
            "METRICS_PORT": "0",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.generation", cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE
        )
        assert process.stdout is not None
        try:
            listening = await asyncio.wait_for(next_log(process.stdout, "listening"), 30)
            assert (listening["port"], listening["event_loop"]) == (port, "uvloop")
            await asyncio.wait_for(next_log(process.stdout, "serving"), 30)
            # Start-up's objects are out of the collector's reach (no full-collection pauses).
            frozen = await asyncio.wait_for(next_log(process.stdout, "start-up objects frozen"), 30)
            assert frozen["frozen_objects"] > 10_000
            channel = open_channel(f"127.0.0.1:{port}")
            try:
                stub = generation_pb2_grpc.GenerationServiceStub(channel)
                for _ in range(2):
                    responses = [r async for r in stub.Generate(generation_pb2.GenerateRequest(question="Why?"))]
                    # Tokens that reach the service together are relayed as one piece.
                    pieces = [r.token for r in responses if r.WhichOneof("event") == "token"]
                    assert "".join(pieces) == "Blue light" and len(pieces) in (1, 2)
                    assert responses[-1].done.finish_reason == "stop"
            finally:
                await channel.close()
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(next_log(process.stdout, "stopped"), 30)
            assert await asyncio.wait_for(process.wait(), 30) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert model.connections == 1  # both answers on one kept-alive connection
