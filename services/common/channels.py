"""Client channels between services: request ids, message limits, keepalive, bounded retries and
client-side round-robin load balancing.

A gRPC channel keeps one long-lived HTTP/2 connection per backend address, so behind a plain
Kubernetes ClusterIP Service (one virtual IP) every call of a client goes to the one pod its
connection landed on. On EKS the internal services are therefore *headless* Services and their
peers dial ``dns:///<service>:<port>``: DNS returns every ready pod's address, the channel opens
a subchannel to each, and ``round_robin`` spreads the calls over them. A plain ``host:port``
target (local runs) goes through the same DNS resolver; with a single address round_robin
behaves like the default pick_first.
"""

from __future__ import annotations

import json

import grpc.aio

from services.common.interceptors import client_interceptors

# gRPC's own retry: only UNAVAILABLE (the peer is not reachable or is restarting), only
# before any response arrived, a bounded number of times with backoff.
_RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.2s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{"name": [{}], "retryPolicy": _RETRY_POLICY}],
    }
)


def open_channel(target: str, *, max_message_bytes: int = 32 * 1024 * 1024) -> grpc.aio.Channel:
    """A channel to ``target``: ``host:port``, ``dns:///host:port`` or any target grpc resolves."""
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", SERVICE_CONFIG),
        # The configuration above is the one in force: a DNS TXT record may not replace it.
        ("grpc.service_config_disable_resolution", 1),
    ]
    return grpc.aio.insecure_channel(target, options=options, interceptors=client_interceptors())
