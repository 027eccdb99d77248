"""Metrics and tracing on real servers: an RPC is counted; tracing is free when off; spans propagate.

The tracing test runs the real gateway and the real retrieval service (local index) on port 0,
with an in-memory span exporter: a gateway Search must produce a retrieval SERVER span that is
a child of the gateway's, in the same trace.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import grpc.aio
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from ragchat.v1 import gateway_pb2, gateway_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc

from services.common import metrics, tracing
from services.common.channels import open_channel
from services.common.config import Env
from services.common.server import GrpcServer
from services.gateway.config import GatewayConfig
from services.gateway.server import build_app as build_gateway
from services.retrieval.config import RetrievalConfig
from services.retrieval.server import build_app as build_retrieval

REPO = Path(__file__).resolve().parents[3]
SEARCH = "/ragchat.v1.RetrievalService/Search"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    tracing.install("test", SimpleSpanProcessor(spans))
    try:
        yield spans
    finally:
        tracing.shutdown()


@pytest.fixture
async def retrieval(tmp_path: Path) -> AsyncIterator[int]:
    config = RetrievalConfig.from_env(Env({"DATA_DIR": str(tmp_path / "retrieval"), "PORT": "0"}))
    server = GrpcServer(build_retrieval(config), replace(config.server, grace_seconds=0.5))
    port = await server.start()
    try:
        yield port
    finally:
        await server.stop()


async def test_an_rpc_increments_the_request_counter_with_its_status(retrieval: int) -> None:
    registry = metrics.metrics().registry
    labels = {"grpc_service": "ragchat.v1.RetrievalService", "grpc_method": "Search"}
    ok_before = registry.get_sample_value("grpc_server_handled_total", {**labels, "grpc_code": "OK"}) or 0.0
    bad_before = registry.get_sample_value("grpc_server_handled_total", {**labels, "grpc_code": "INVALID_ARGUMENT"})
    channel = open_channel(f"127.0.0.1:{retrieval}")
    stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
    try:
        await stub.Search(retrieval_pb2.SearchRequest(query="anything", owner="alice", top_k=3), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Search(retrieval_pb2.SearchRequest(query="", owner="alice"), timeout=5)
    finally:
        await channel.close()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert registry.get_sample_value("grpc_server_handled_total", {**labels, "grpc_code": "OK"}) == ok_before + 1
    bad_after = registry.get_sample_value("grpc_server_handled_total", {**labels, "grpc_code": "INVALID_ARGUMENT"})
    assert bad_after == (bad_before or 0.0) + 1
    count = registry.get_sample_value("grpc_server_handling_seconds_count", {**labels, "grpc_code": "OK"})
    assert count is not None and count >= 1


async def test_spans_propagate_from_the_gateway_to_retrieval(
    tmp_path: Path, retrieval: int, exporter: InMemorySpanExporter
) -> None:
    gateway_config = GatewayConfig.from_env(
        Env({"PORT": "0", "DATA_DIR": str(tmp_path / "gateway"), "RETRIEVAL_ADDR": f"127.0.0.1:{retrieval}"})
    )
    gateway = GrpcServer(build_gateway(gateway_config), replace(gateway_config.server, grace_seconds=0.5))
    port = await gateway.start()
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        await stub.Search(
            gateway_pb2.GatewaySearchRequest(query="what is in my documents", top_k=3),
            metadata=(("x-ragchat-user", "alice"),),
            timeout=5,
        )
    finally:
        await channel.close()
        await gateway.stop()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    outer = spans["ragchat.v1.GatewayService/Search"]
    inner = spans["ragchat.v1.RetrievalService/Search"]
    assert outer.kind == SpanKind.SERVER and inner.kind == SpanKind.SERVER
    assert outer.parent is None
    assert inner.parent is not None and outer.context is not None and inner.context is not None
    assert inner.context.trace_id == outer.context.trace_id
    assert inner.parent.span_id == outer.context.span_id
    assert inner.parent.is_remote
    assert inner.attributes is not None and inner.attributes["rpc.grpc.status_code"] == "OK"


async def test_a_failed_rpc_is_an_error_span(retrieval: int, exporter: InMemorySpanExporter) -> None:
    channel = open_channel(f"127.0.0.1:{retrieval}")
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await retrieval_pb2_grpc.RetrievalServiceStub(channel).Search(retrieval_pb2.SearchRequest(), timeout=5)
    finally:
        await channel.close()
    (span,) = exporter.get_finished_spans()
    assert not span.status.is_ok
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == "INVALID_ARGUMENT"


def test_tracing_off_by_default_imports_nothing_and_sends_no_trace_context(tmp_path: Path) -> None:
    """A served RPC with the default environment: no OpenTelemetry module loaded, no traceparent sent."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        import grpc.aio
        from ragchat.v1 import retrieval_pb2, retrieval_pb2_grpc
        from services.common.channels import open_channel
        from services.common.config import Env
        from services.common.server import GrpcServer
        from services.retrieval.config import RetrievalConfig
        from services.retrieval.server import build_app

        seen = []

        class Recorder(grpc.aio.ServerInterceptor):
            async def intercept_service(self, continuation, details):
                seen.extend(key for key, _ in details.invocation_metadata)
                return await continuation(details)

        async def main():
            config = RetrievalConfig.from_env(Env({"DATA_DIR": sys.argv[1], "PORT": "0"}))
            real_server = grpc.aio.server
            grpc.aio.server = lambda interceptors, options: real_server(
                interceptors=[Recorder(), *interceptors], options=options)
            server = GrpcServer(build_app(config), config.server)
            port = await server.start()
            channel = open_channel(f"127.0.0.1:{port}")
            stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
            await stub.Search(retrieval_pb2.SearchRequest(query="x", owner="alice"), timeout=5)
            await channel.close()
            await server.stop(0)

        asyncio.run(main())
        loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
        assert "x-request-id" in seen, seen
        assert "traceparent" not in seen, seen
        assert not loaded, loaded
        print("ok")
        """
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "data")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


async def test_serve_until_signalled_serves_metrics_when_a_port_is_set(tmp_path: Path) -> None:
    """METRICS_PORT opens /metrics for the life of the server, and closes it after the drain."""
    import socket

    from services.common.metrics import MetricsConfig
    from services.common.server import serve_until_signalled
    from services.common.tracing import TracingConfig

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    config = RetrievalConfig.from_env(Env({"DATA_DIR": str(tmp_path / "data"), "PORT": "0"}))
    serving = asyncio.create_task(
        serve_until_signalled(
            build_retrieval(config),
            replace(config.server, grace_seconds=0.2),
            metrics_config=MetricsConfig(port=metrics_port),
            tracing_config=TracingConfig(enabled=False),
        )
    )

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as response:
            return str(response.read().decode())

    for _ in range(100):
        try:
            body = await asyncio.to_thread(scrape)
            break
        except OSError:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the metrics endpoint never answered")
    assert "# TYPE grpc_server_handled_total counter" in body
    os.kill(os.getpid(), __import__("signal").SIGTERM)
    await asyncio.wait_for(serving, 10)
    with pytest.raises(urllib.error.URLError, match="refused"):
        await asyncio.to_thread(scrape)
