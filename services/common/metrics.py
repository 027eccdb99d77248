"""Prometheus metrics of a service, and the small functions services update them with.

Every RPC is counted and timed by the server interceptor (:func:`observe_rpc`), by gRPC service,
method and status code, with the names of the go-grpc-prometheus convention so that existing
dashboards work. Services add what only they know: tokens (:func:`count_tokens`), retrieval
latency (:func:`observe_retrieval`), the ingest queue (:func:`set_ingest_queue_depth`) and ingest
failures (:func:`count_ingest_failure`).

The metrics live in a registry of their own, created on first use (nothing happens at import).
They are served over HTTP at ``/metrics`` only when ``METRICS_PORT`` is set (default 0: off, so
that ``ragchat up`` opens no extra ports); the Kubernetes manifests set it to 9464 on every pod.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from services.common.config import Env

log = logging.getLogger(__name__)

# Seconds: from a cached lookup (1 ms) to a long generated answer (5 min).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

TokenKind = Literal["prompt", "completion"]


@dataclass(frozen=True)
class MetricsConfig:
    """``METRICS_PORT``: the port of the ``/metrics`` endpoint; 0 (the default) serves none."""

    port: int

    @classmethod
    def from_env(cls, env: Env) -> MetricsConfig:
        return cls(port=env.integer("METRICS_PORT", 0, minimum=0, maximum=65535))


class Metrics:
    """The collectors of one process, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.rpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by service, method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its end (the last message of a stream), in seconds.",
            ["grpc_service", "grpc_method", "grpc_code"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "ragchat_tokens",
            "Tokens processed by the generation backends: prompt (input) and completion (output).",
            ["kind", "backend"],
            registry=self.registry,
        )
        self.retrieval_seconds = Histogram(
            "ragchat_retrieval_seconds",
            "Time the retrieval backend took to answer a search, in seconds.",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ingest_queue_depth = Gauge(
            "ragchat_ingest_queue_depth",
            "Ingest jobs waiting or running in this process.",
            registry=self.registry,
        )
        self.ingest_failures = Counter(
            "ragchat_ingest_failures",
            "Ingest jobs that failed, by the stage that failed (extract, index, summarize, ...).",
            ["stage"],
            registry=self.registry,
        )


_lock = threading.Lock()
_metrics: Metrics | None = None


def metrics() -> Metrics:
    """This process's metrics, created on first use."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def split_method(method: str) -> tuple[str, str]:
    """``/ragchat.v1.GatewayService/Chat`` → (``ragchat.v1.GatewayService``, ``Chat``)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return (service, name) if service else ("unknown", name)


def observe_rpc(method: str, code: str, seconds: float) -> None:
    """One finished RPC: ``method`` as gRPC names it, ``code`` a ``grpc.StatusCode`` name."""
    service, name = split_method(method)
    collectors = metrics()
    collectors.rpc_handled.labels(service, name, code).inc()
    collectors.rpc_seconds.labels(service, name, code).observe(seconds)


def count_tokens(kind: TokenKind, count: int, backend: str) -> None:
    if count > 0:
        metrics().tokens.labels(kind, backend).inc(count)


def observe_retrieval(backend: str, seconds: float) -> None:
    metrics().retrieval_seconds.labels(backend).observe(seconds)


def set_ingest_queue_depth(depth: int) -> None:
    metrics().ingest_queue_depth.set(depth)


def count_ingest_failure(stage: str) -> None:
    metrics().ingest_failures.labels(stage).inc()


class MetricsEndpoint:
    """The ``/metrics`` HTTP endpoint (a daemon thread), stopped with :meth:`close`."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(host: str, port: int) -> MetricsEndpoint:
    """Serve this process's metrics at ``http://host:port/metrics`` (port 0: any free port)."""
    server, thread = start_http_server(port, addr=host, registry=metrics().registry)
    endpoint = MetricsEndpoint(server, thread)
    log.info("metrics endpoint listening", extra={"metrics_port": endpoint.port, "host": host})
    return endpoint
