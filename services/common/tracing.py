"""OpenTelemetry tracing across the services, off by default (``OTEL_ENABLED=false``).

When on, every RPC a service handles becomes a SERVER span, a child of the caller's span when the
call carries W3C ``traceparent`` metadata; every call a service makes carries the current span's
context, so that one question is one trace: gateway → retrieval, generation, ingest. Spans go to
the OTLP/gRPC exporter, configured by the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_TRACES_SAMPLER``, ``OTEL_RESOURCE_ATTRIBUTES``, ...), which
the OpenTelemetry SDK reads itself.

When off, nothing of OpenTelemetry is imported and each hook is one ``None`` check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.common.config import Env

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TracingConfig:
    """``OTEL_ENABLED``: export traces (default false)."""

    enabled: bool

    @classmethod
    def from_env(cls, env: Env) -> TracingConfig:
        return cls(enabled=env.flag("OTEL_ENABLED", False))


@dataclass
class _Tracing:
    provider: TracerProvider
    tracer: Tracer


_state: _Tracing | None = None


def enabled() -> bool:
    return _state is not None


def install(service: str, processor: SpanProcessor | None = None) -> None:
    """Turn tracing on for this process; spans go to ``processor`` (default: batched OTLP export).

    ``service`` is the ``service.name`` resource attribute unless ``OTEL_SERVICE_NAME`` says otherwise.
    """
    global _state
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource.create({"service.name": service}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    if processor is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        processor = BatchSpanProcessor(OTLPSpanExporter())
    provider.add_span_processor(processor)
    if _state is not None:
        _state.provider.shutdown()
    _state = _Tracing(provider, provider.get_tracer("ragchat"))
    log.info("tracing on", extra={"service_name": resource.attributes.get("service.name")})


def shutdown() -> None:
    """Flush the spans still buffered and turn tracing off."""
    global _state
    state, _state = _state, None
    if state is not None:
        state.provider.shutdown()


def start_server_span(method: str, metadata: Iterable[Any] | None) -> Span | None:
    """A SERVER span for ``method``, child of the caller's context in ``metadata``, made current.

    Call it inside the RPC's own task (the interceptor does): the span stays current for the rest
    of that task, so that the calls the handler makes carry it. None when tracing is off.
    """
    state = _state
    if state is None:
        return None
    from opentelemetry import context, propagate, trace

    carrier: dict[str, str] = {}
    for item in metadata or ():
        key, value = item[0], item[1]
        if isinstance(value, str):
            carrier[key] = value
    service, _, name = method.lstrip("/").rpartition("/")
    span = state.tracer.start_span(
        method.lstrip("/"),
        context=propagate.extract(carrier),
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )
    # The RPC task's context is its own and ends with it: nothing to detach.
    context.attach(trace.set_span_in_context(span))
    return span


def end_server_span(span: Span | None, code: str) -> None:
    """End ``span`` with the RPC's status code name (``OK``, ``NOT_FOUND``, ...)."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("rpc.grpc.status_code", code)
    if code != "OK":
        span.set_status(Status(StatusCode.ERROR, code))
    span.end()


def inject(metadata: MutableMapping[str, str]) -> None:
    """Add the current span's context (``traceparent``, ...) to outgoing call metadata."""
    if _state is None:
        return
    from opentelemetry import propagate

    propagate.inject(metadata)
