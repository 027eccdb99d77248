"""The ``grpc.aio`` server bootstrap shared by every service.

The server listens first with health NOT_SERVING, opens its backends, then turns SERVING.
Until then every call but health checks and reflection is refused with UNAVAILABLE (which the
callers' channels retry), never handed to a servicer whose backends are not open yet.
SIGTERM or SIGINT turns health NOT_SERVING, refuses new calls the same way, lets in-flight calls
(streams included) finish within the grace period, then closes the backends.
``serve_until_signalled`` also serves the Prometheus metrics (``METRICS_PORT``) and turns
tracing on (``OTEL_ENABLED``) for the life of the server.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.common import metrics, tracing
from services.common.config import Env, ServerConfig
from services.common.interceptors import ReadinessGate, ServerInterceptor
from services.common.lifecycle import follow_supervisor
from services.common.metrics import MetricsConfig
from services.common.tracing import TracingConfig

log = logging.getLogger(__name__)


async def _nothing() -> None:
    return None


@dataclass
class ServiceApp:
    """What a service contributes to the shared server.

    ``service_names`` are the full proto names (for health and reflection); ``register`` adds
    the servicers; ``start`` opens backends (health stays NOT_SERVING until it returns);
    ``stop`` closes them after the server has drained.
    """

    name: str
    service_names: Sequence[str]
    register: Callable[[grpc.aio.Server], None]
    start: Callable[[], Awaitable[None]] = _nothing
    stop: Callable[[], Awaitable[None]] = _nothing


@dataclass
class GrpcServer:
    app: ServiceApp
    config: ServerConfig
    port: int = 0
    _server: grpc.aio.Server | None = None
    _health: HealthServicer = field(default_factory=HealthServicer)
    _gate: ReadinessGate | None = None

    async def start(self) -> int:
        """Bind, serve with NOT_SERVING, open the backends, turn SERVING; returns the bound port."""
        options = [
            ("grpc.max_send_message_length", self.config.max_message_bytes),
            ("grpc.max_receive_message_length", self.config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        if self.config.max_connection_age_seconds > 0:
            # No grace limit: a call in flight (a long answer stream) finishes on the old connection.
            options.append(("grpc.max_connection_age_ms", round(self.config.max_connection_age_seconds * 1000)))
        self._gate = ReadinessGate(self.app.name)
        # The gate inside the access log: refusals are logged and counted like any answer.
        server = grpc.aio.server(interceptors=[ServerInterceptor(), self._gate], options=options)
        self.app.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [*self.app.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
        for name in ("", *self.app.service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = server.add_insecure_port(f"{self.config.host}:{self.config.port}")
        if self.port == 0:
            raise OSError(f"{self.app.name}: cannot listen on {self.config.host}:{self.config.port}")
        await server.start()
        self._server = server
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]  # "asyncio" or "uvloop"
        log.info("listening", extra={"port": self.port, "host": self.config.host, "event_loop": loop})
        try:
            await self.app.start()
        except BaseException:
            await server.stop(0)
            raise
        self._gate.open()
        for name in ("", *self.app.service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"port": self.port})
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        if self._gate is not None:
            self._gate.close()
        await self._health.enter_graceful_shutdown()
        log.info("draining", extra={"grace_seconds": self.config.grace_seconds if grace is None else grace})
        await server.stop(self.config.grace_seconds if grace is None else grace)
        await self.app.stop()
        log.info("stopped")


async def serve_until_signalled(
    app: ServiceApp,
    config: ServerConfig,
    *,
    metrics_config: MetricsConfig | None = None,
    tracing_config: TracingConfig | None = None,
) -> None:
    """Run ``app`` until SIGTERM or SIGINT, then shut down gracefully.

    Metrics and tracing settings default to the environment's (``METRICS_PORT``, ``OTEL_ENABLED``).
    """
    metrics_config = metrics_config or MetricsConfig.from_env(Env())
    tracing_config = tracing_config or TracingConfig.from_env(Env())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    follow_supervisor()  # with the handlers in place: a supervisor already gone stops us cleanly
    endpoint = metrics.serve(config.host, metrics_config.port) if metrics_config.port else None
    if tracing_config.enabled:
        tracing.install(app.name)
    try:
        server = GrpcServer(app, config)
        await server.start()
        # What start-up built (modules, models, clients, caches) lives as long as the process:
        # frozen, the cyclic collector no longer walks it, and a full collection stops being a
        # pause of ~5 ms for every call and stream in flight.
        gc.collect()
        gc.freeze()
        log.info("start-up objects frozen", extra={"frozen_objects": gc.get_freeze_count()})
        await stop.wait()
        log.info("signal received, shutting down")
        await server.stop()
    finally:
        tracing.shutdown()
        if endpoint is not None:
            endpoint.close()
