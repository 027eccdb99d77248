"""Client channels between services: request ids, message limits, keepalive, bounded retries."""

from __future__ import annotations

import json

import grpc.aio

from services.common.interceptors import client_interceptors

# gRPC's own retry: only UNAVAILABLE (the peer is not reachable or is restarting), only
# before any response arrived, a bounded number of times with backoff.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def open_channel(target: str, *, max_message_bytes: int = 32 * 1024 * 1024) -> grpc.aio.Channel:
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _SERVICE_CONFIG),
    ]
    return grpc.aio.insecure_channel(target, options=options, interceptors=client_interceptors())
