"""The Prometheus metrics: the functions services call, the configuration, the HTTP endpoint."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from services.common import metrics
from services.common.config import ConfigError, Env
from services.common.metrics import MetricsConfig


def sample(name: str, **labels: str) -> float:
    return metrics.metrics().registry.get_sample_value(name, labels) or 0.0


def test_metrics_port_is_off_by_default_and_validated() -> None:
    assert MetricsConfig.from_env(Env({})).port == 0
    assert MetricsConfig.from_env(Env({"METRICS_PORT": "9464"})).port == 9464
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        MetricsConfig.from_env(Env({"METRICS_PORT": "70000"}))


def test_an_rpc_is_counted_and_timed_by_service_method_and_code() -> None:
    labels = {"grpc_service": "ragchat.v1.TestService", "grpc_method": "Unit", "grpc_code": "NOT_FOUND"}
    before = sample("grpc_server_handled_total", **labels)
    metrics.observe_rpc("/ragchat.v1.TestService/Unit", "NOT_FOUND", 0.02)
    assert sample("grpc_server_handled_total", **labels) == before + 1
    assert sample("grpc_server_handling_seconds_bucket", **labels, le="0.025") >= 1
    assert sample("grpc_server_handling_seconds_bucket", **labels, le="0.01") == 0


def test_service_metrics_update() -> None:
    before_tokens = sample("ragchat_tokens_total", kind="completion", backend="unit")
    metrics.count_tokens("completion", 12, "unit")
    metrics.count_tokens("completion", 0, "unit")
    assert sample("ragchat_tokens_total", kind="completion", backend="unit") == before_tokens + 12

    metrics.observe_retrieval("unit", 0.004)
    assert sample("ragchat_retrieval_seconds_bucket", backend="unit", le="0.005") >= 1

    metrics.set_ingest_queue_depth(3)
    assert sample("ragchat_ingest_queue_depth") == 3
    before_failures = sample("ragchat_ingest_failures_total", stage="extract")
    metrics.count_ingest_failure("extract")
    assert sample("ragchat_ingest_failures_total", stage="extract") == before_failures + 1


def test_split_method() -> None:
    assert metrics.split_method("/ragchat.v1.GatewayService/Chat") == ("ragchat.v1.GatewayService", "Chat")
    assert metrics.split_method("Chat") == ("unknown", "Chat")


def test_the_endpoint_serves_the_text_format_and_closes() -> None:
    metrics.observe_rpc("/ragchat.v1.TestService/Served", "OK", 0.001)
    endpoint = metrics.serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=5) as response:
            body = response.read().decode()
    finally:
        endpoint.close()
    line = 'grpc_server_handled_total{grpc_code="OK",grpc_method="Served",grpc_service="ragchat.v1.TestService"} 1.0'
    assert line in body
    with pytest.raises(urllib.error.URLError, match="refused"):
        urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=1)
