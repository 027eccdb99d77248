"""The history and call-log contract, for both adapters: SQLite and DynamoDB (moto)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from services.common.errors import FailedPrecondition
from services.gateway.backends import CallLog, CallRecord, ConversationStore, Passage, TurnRecord
from services.gateway.backends import dynamo_schema as schema
from services.gateway.backends.dynamo_store import Aborted, DynamoCallLog, DynamoConversationStore
from services.gateway.backends.sqlite_store import SqliteCallLog, SqliteConversationStore, SqliteDatabase

PASSAGE = Passage("d1:0", "d1", "Handguns", "nics.pdf", 3, "Kentucky ran 250,000 checks.", 7.25, citation=1)


def turn(n: int, at: float, **changes: Any) -> TurnRecord:
    values: dict[str, Any] = {
        "turn_id": f"turn{n}",
        "question": f"질문 {n}: how many checks?",
        "condensed_question": f"question {n}",
        "answer": f"answer {n} [1]",
        "references": [PASSAGE],
        "created_at": at,
        **changes,
    }
    return TurnRecord(**values)


def call(call_id: str, owner: str = "alice", at: float = 1000.0, **changes: Any) -> CallRecord:
    values: dict[str, Any] = {
        "call_id": call_id,
        "request_id": f"req-{call_id}",
        "owner": owner,
        "kind": "chat",
        "created_at": at,
        "conversation_id": "conv1",
        "question": "How many?",
        "condensed_question": "How many checks?",
        "answer": "250,000 [1]",
        "references": [{"doc_id": "d1", "chunk_id": "d1:0", "page": 3, "score": 7.25}],
        "backends": {"retrieval": "local", "generation": "extractive"},
        "latency_ms": {"retrieval": 3.5, "first_token": 12.25, "total": 40.0},
        "prompt_tokens": 42,
        "completion_tokens": 7,
        **changes,
    }
    return CallRecord(**values)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        schema.create_tables(client, "conversations", "calls")
        yield client


@pytest.fixture(params=["sqlite", "dynamodb"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[ConversationStore, CallLog]]:
    if request.param == "sqlite":
        db = SqliteDatabase(tmp_path / "gateway.db")
        db.open()
        yield SqliteConversationStore(db), SqliteCallLog(db)
        db.close()
    else:
        client = request.getfixturevalue("aws")
        conversations = DynamoConversationStore(client, "conversations", calls_table="calls")
        calls = DynamoCallLog(client, "calls")
        await conversations.open()
        await calls.open()
        yield conversations, calls


async def test_turns_are_kept_in_order_per_owner(stores: tuple[ConversationStore, CallLog]) -> None:
    conversations, _ = stores
    await conversations.add_turn("alice", "conv1", "Handgun checks", turn(0, 100.0))
    await conversations.add_turn("alice", "conv1", "ignored: the title is set once", turn(1, 101.5))
    info = await conversations.get("alice", "conv1")
    assert info is not None
    assert (info.title, info.turn_count, info.created_at, info.updated_at) == ("Handgun checks", 2, 100.0, 101.5)
    turns = await conversations.turns("alice", "conv1")
    assert [t.turn_id for t in turns] == ["turn0", "turn1"]
    assert turns[0] == turn(0, 100.0), "every field round-trips, Korean text and references included"
    assert await conversations.get("bob", "conv1") is None
    assert await conversations.turns("bob", "conv1") == []


async def test_recent_lists_most_recently_updated_first(stores: tuple[ConversationStore, CallLog]) -> None:
    conversations, _ = stores
    for i, at in enumerate([100.0, 300.0, 200.0]):
        await conversations.add_turn("alice", f"conv{i}", f"title {i}", turn(i, at))
    await conversations.add_turn("bob", "convb", "bob's", turn(9, 400.0))
    assert [c.conversation_id for c in await conversations.recent("alice", 10)] == ["conv1", "conv2", "conv0"]
    assert [c.conversation_id for c in await conversations.recent("alice", 2)] == ["conv1", "conv2"]
    assert [c.conversation_id for c in await conversations.recent("bob", 10)] == ["convb"]


async def test_rename_and_delete_are_scoped_to_the_owner(stores: tuple[ConversationStore, CallLog]) -> None:
    conversations, _ = stores
    await conversations.add_turn("alice", "conv1", "old", turn(0, 100.0))
    await conversations.add_turn("alice", "conv1", "old", turn(1, 101.0))
    assert await conversations.rename("bob", "conv1", "stolen") is None
    assert await conversations.delete("bob", "conv1") is False
    renamed = await conversations.rename("alice", "conv1", "새 제목")
    assert renamed is not None and renamed.title == "새 제목" and renamed.turn_count == 2
    assert await conversations.delete("alice", "conv1") is True
    assert await conversations.get("alice", "conv1") is None
    assert await conversations.turns("alice", "conv1") == []
    assert await conversations.delete("alice", "conv1") is False
    assert await conversations.rename("alice", "missing", "x") is None


async def test_concurrent_turns_of_one_conversation_are_all_kept(stores: tuple[ConversationStore, CallLog]) -> None:
    conversations, _ = stores
    await conversations.add_turn("alice", "conv1", "t", turn(0, 100.0))
    await asyncio.gather(*(conversations.add_turn("alice", "conv1", "t", turn(i, 100.0 + i)) for i in (1, 2)))
    info = await conversations.get("alice", "conv1")
    assert info is not None and info.turn_count == 3
    assert sorted(t.turn_id for t in await conversations.turns("alice", "conv1")) == ["turn0", "turn1", "turn2"]


async def test_call_log_serves_owner_time_request_and_conversation(stores: tuple[ConversationStore, CallLog]) -> None:
    _, calls = stores
    await calls.record(call("c1", at=1000.0))
    await calls.record(call("c2", at=1002.0, request_id="req-shared", conversation_id="conv2"))
    await calls.record(call("c3", at=1001.0, request_id="req-shared", kind="upload", conversation_id=""))
    await calls.record(call("c4", owner="bob", at=1003.0))
    assert [r.call_id for r in await calls.for_owner("alice", 10)] == ["c2", "c3", "c1"]
    assert [r.call_id for r in await calls.for_owner("alice", 1)] == ["c2"]
    assert [r.call_id for r in await calls.by_request_id("req-shared")] == ["c3", "c2"]
    assert [r.call_id for r in await calls.for_conversation("alice", "conv1")] == ["c1"]
    assert [r.call_id for r in await calls.for_conversation("bob", "conv1")] == ["c4"]
    [first] = await calls.by_request_id("req-c1")
    assert first == call("c1", at=1000.0), "every field round-trips"


async def test_a_turn_and_its_call_record_are_written_in_one_transaction(
    stores: tuple[ConversationStore, CallLog],
) -> None:
    conversations, calls = stores
    record = call("c1", conversation_id="conv1", answer="twelve")
    await conversations.add_turn("alice", "conv1", "title", turn(0, 100.0), record)
    assert await calls.by_request_id("req-c1") == [record]
    assert len(await conversations.turns("alice", "conv1")) == 1
    # The same record again (e.g. replayed): refused as a whole, neither a second record nor a second turn.
    with pytest.raises(Exception):  # noqa: B017,PT011 - each store words the conflict its own way
        await conversations.add_turn("alice", "conv1", "title", turn(0, 100.0), record)
    assert await calls.by_request_id("req-c1") == [record]
    assert len(await conversations.turns("alice", "conv1")) == 1, "the turn is not kept without its record"


async def test_dynamo_call_record_is_written_exactly_once(aws: Any) -> None:
    calls = DynamoCallLog(aws, "calls")
    record = call("c1", status="CANCELLED", error="the client went away")
    await calls.record(record)
    await calls.record(record)  # e.g. a retry after a lost response
    assert await calls.by_request_id("req-c1") == [record]
    assert aws.scan(TableName="calls")["Count"] == 1


async def test_dynamo_turn_and_conversation_are_written_together_or_not_at_all(aws: Any) -> None:
    conversations = DynamoConversationStore(aws, "conversations")
    # A turn item already occupies the slot the next turn would take: the transaction must fail
    # as a whole and leave no conversation behind.
    aws.put_item(
        TableName="conversations",
        Item={"owner": {"S": "alice"}, "sk": {"S": schema.turn_sort_key("conv1", 0)}, "turn_id": {"S": "stale"}},
    )
    with pytest.raises(Aborted, match="not saved"):
        await conversations.add_turn("alice", "conv1", "title", turn(0, 100.0))
    assert await conversations.get("alice", "conv1") is None
    assert aws.scan(TableName="conversations")["Count"] == 1


async def test_dynamo_missing_table_fails_at_start_naming_it(aws: Any) -> None:
    with pytest.raises(FailedPrecondition, match="table nope does not exist"):
        await DynamoCallLog(aws, "nope").open()


def test_schema_serves_the_documented_keys() -> None:
    conversations, calls = schema.table_definitions("c", "l")
    assert [k["AttributeName"] for k in conversations["KeySchema"]] == ["owner", "sk"]
    assert [k["AttributeName"] for k in calls["KeySchema"]] == ["owner", "call_key"]
    indexes = {i["IndexName"]: [k["AttributeName"] for k in i["KeySchema"]] for i in calls["GlobalSecondaryIndexes"]}
    assert indexes == {"by_request": ["request_id", "call_key"], "by_conversation": ["conversation_key", "call_key"]}
    assert schema.call_key(5.5, "x") < schema.call_key(10.25, "a"), "keys sort by time"
