"""The gateway's DynamoDB tables: the single source of their key schema and indexes.

The deployment (CloudFormation/CDK/Terraform) and the tests build the tables from
:func:`table_definitions`; ``python -m services.gateway.backends.dynamo_schema`` prints them as
``CreateTable`` JSON. Both tables are on-demand (PAY_PER_REQUEST).

**Conversations** (``DYNAMO_CONVERSATIONS_TABLE``), one item collection per user:

* ``owner`` (hash) + ``sk`` (range). A conversation is ``sk = "c#<conversation_id>"`` with
  ``conversation_id``, ``title``, ``created_at``, ``updated_at``, ``turn_count``; its turns are
  ``sk = "t#<conversation_id>#<seq, 8 digits>"`` (read in order with ``begins_with``).
* GSI ``by_updated`` (``owner`` + ``updated_at``): a user's conversations, most recent first.
  Sparse: only conversation items have ``updated_at``.

**Calls** (``DYNAMO_CALLS_TABLE``), the call log:

* ``owner`` (hash) + ``call_key`` (range) ``"<created_at, %017.6f>#<call_id>"``: a user's calls
  by time (the original's query). The key is derived from the record, so a conditional put
  (``attribute_not_exists``) makes a retried write a no-op: exactly one item per call.
* GSI ``by_request`` (``request_id`` + ``call_key``): the calls of one request id.
* GSI ``by_conversation`` (``conversation_key`` = ``"<owner>#<conversation_id>"`` + ``call_key``):
  the calls of one conversation in order. Sparse: document calls have no conversation.
"""

from __future__ import annotations

import json
import sys
from typing import Any

CONVERSATION_PREFIX = "c#"
TURN_PREFIX = "t#"
BY_UPDATED = "by_updated"
BY_REQUEST = "by_request"
BY_CONVERSATION = "by_conversation"


def conversation_sort_key(conversation_id: str) -> str:
    return f"{CONVERSATION_PREFIX}{conversation_id}"


def turn_sort_key(conversation_id: str, seq: int) -> str:
    return f"{TURN_PREFIX}{conversation_id}#{seq:08d}"


def turn_prefix(conversation_id: str) -> str:
    return f"{TURN_PREFIX}{conversation_id}#"


def call_key(created_at: float, call_id: str) -> str:
    return f"{created_at:017.6f}#{call_id}"


def conversation_key(owner: str, conversation_id: str) -> str:
    # conversation ids are [A-Za-z0-9_-]: the last '#' always separates them from the owner.
    return f"{owner}#{conversation_id}"


def _index(name: str, hash_key: str, range_key: str) -> dict[str, Any]:
    return {
        "IndexName": name,
        "KeySchema": [{"AttributeName": hash_key, "KeyType": "HASH"}, {"AttributeName": range_key, "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "ALL"},
    }


def conversations_table(name: str) -> dict[str, Any]:
    """``CreateTable`` parameters of the conversations table."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "owner", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "updated_at", "AttributeType": "N"},
        ],
        "KeySchema": [{"AttributeName": "owner", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        "GlobalSecondaryIndexes": [_index(BY_UPDATED, "owner", "updated_at")],
    }


def calls_table(name: str) -> dict[str, Any]:
    """``CreateTable`` parameters of the call-log table."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "owner", "AttributeType": "S"},
            {"AttributeName": "call_key", "AttributeType": "S"},
            {"AttributeName": "request_id", "AttributeType": "S"},
            {"AttributeName": "conversation_key", "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": "owner", "KeyType": "HASH"},
            {"AttributeName": "call_key", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            _index(BY_REQUEST, "request_id", "call_key"),
            _index(BY_CONVERSATION, "conversation_key", "call_key"),
        ],
    }


def table_definitions(
    conversations: str = "ragchat-conversations", calls: str = "ragchat-calls"
) -> list[dict[str, Any]]:
    return [conversations_table(conversations), calls_table(calls)]


def create_tables(client: Any, conversations: str, calls: str) -> None:
    """Create both tables with a boto3 DynamoDB client and wait until they are active."""
    for definition in table_definitions(conversations, calls):
        client.create_table(**definition)
        client.get_waiter("table_exists").wait(TableName=definition["TableName"])


def main(argv: list[str]) -> int:
    names = argv if len(argv) == 2 else []
    sys.stdout.write(json.dumps(table_definitions(*names), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
