"""DynamoDB throttling: botocore's bounded retries, then RESOURCE_EXHAUSTED, end to end.

A local HTTP server speaks DynamoDB's JSON protocol: DescribeTable succeeds, every other
operation is throttled (HTTP 400 ProvisionedThroughputExceededException). boto3 is pointed at it
with AWS_ENDPOINT_URL, so botocore's real retry handler and error parser run.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.clients.errors import RagchatClientError
from services.clients.gateway import GatewayClient
from services.common.aws import AwsConfig, make_client
from services.common.config import Env
from services.common.errors import ResourceExhausted
from services.gateway.backends.dynamo_store import DynamoCallLog, DynamoConversationStore
from tests.integration.gateway.suite import start_suite
from tests.unit.gateway.test_gateway_stores import call

ATTEMPTS = 3


@pytest.fixture
def throttling_dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Counter[str]]]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    requests: Counter[str] = Counter()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            operation = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            requests[operation] += 1
            reply: dict[str, object]
            if operation == "DescribeTable":
                status, reply = 200, {"Table": {"TableName": body.get("TableName"), "TableStatus": "ACTIVE"}}
            else:
                status, reply = (
                    400,
                    {
                        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                        "message": "The level of configured provisioned throughput for the table was exceeded.",
                    },
                )
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def aws_env(endpoint: str) -> dict[str, str]:
    # legacy mode: DynamoDB's own 50 ms base backoff keeps the test fast; the bound is the same.
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_RETRY_MODE": "legacy",
        "AWS_MAX_ATTEMPTS": str(ATTEMPTS),
    }


async def test_throttled_writes_are_retried_a_bounded_number_of_times(
    throttling_dynamodb: tuple[str, Counter[str]],
) -> None:
    endpoint, requests = throttling_dynamodb

    client = make_client("dynamodb", AwsConfig.from_env(Env(aws_env(endpoint))))
    with pytest.raises(ResourceExhausted, match="throttling"):
        await DynamoCallLog(client, "calls").record(call("c1"))
    assert requests["PutItem"] == ATTEMPTS
    with pytest.raises(ResourceExhausted):
        await DynamoConversationStore(client, "conversations").get("alice", "conv1")
    assert requests["GetItem"] == ATTEMPTS


async def test_the_gateway_answers_resource_exhausted_when_dynamodb_throttles(
    throttling_dynamodb: tuple[str, Counter[str]],
    tmp_path: Path,
) -> None:
    endpoint, requests = throttling_dynamodb
    suite = await start_suite(tmp_path, HISTORY_BACKEND="dynamodb", **aws_env(endpoint))
    client = GatewayClient(suite.gateway, user="alice")
    try:
        with pytest.raises(RagchatClientError) as caught:
            await client.list_conversations()
        assert caught.value.code == "RESOURCE_EXHAUSTED" and "throttling" in caught.value.message
        with pytest.raises(RagchatClientError) as caught:
            await client.ask("How much power?", conversation_id="conv1")
        assert caught.value.code == "RESOURCE_EXHAUSTED"
        # A new conversation streams its answer, then saving the turn is throttled: an error
        # event, and nothing half-written (the turn is not stored).
        with pytest.raises(RagchatClientError) as caught:
            await client.ask("How much power?")
        assert caught.value.code == "RESOURCE_EXHAUSTED"
        # The call records are written after the client has its answer: wait for the retries.
        for _ in range(100):
            if requests["PutItem"] >= 2 * ATTEMPTS:
                break
            await asyncio.sleep(0.05)
    finally:
        await client.close()
        await suite.stop()
    assert requests["Query"] == ATTEMPTS
    assert requests["TransactWriteItems"] == 0, "the turn was never written: reading its conversation failed first"
    assert requests["PutItem"] == 2 * ATTEMPTS, "each chat call tried its call record, with bounded retries"
