"""The ingest registry's DynamoDB tables: the single source of their key schema and indexes.

The deployment (``deploy/ragchat.yaml``) and the tests build the tables from
:func:`table_definitions`; ``python -m services.ingest.backends.dynamo_schema`` prints them as
``CreateTable`` JSON. All three are on-demand (PAY_PER_REQUEST).

**Documents** (``DYNAMO_DOCUMENTS_TABLE``), hash key ``pk``, two kinds of item:

* a document: ``pk = "doc#<doc_id>"`` with the :class:`~services.ingest.backends.Document` fields,
  ``owner_source`` (see :func:`source_key`), ``job_ids`` (its jobs) and ``latest_job_id``;
* a content claim: ``pk = content_key(owner, sha256)`` with the ``doc_id`` holding that content.
  It is written in the same transaction as the document, on condition that it does not exist:
  two pods storing the same bytes for the same owner at once make exactly one document.

GSIs (documents only: a claim has none of their keys): ``by_owner`` (``owner`` + ``created_at``,
the owner's list), ``by_source`` (``owner_source`` + ``created_at``, the versions of a file) and
``by_status`` (``status`` + ``updated_at``, e.g. deletions to finish).

**Jobs** (``DYNAMO_JOBS_TABLE``), hash ``job_id`` + range ``sk``, one item collection per job:

* the job: ``sk = "job"`` with ``doc_id``, ``owner``, ``stage``, ``message``, ``duplicate``,
  ``created_at``, ``updated_at``, ``last_seq`` (its last event), and while it is not DONE or
  FAILED ``unfinished`` plus its lease: ``lease_owner`` (the process running it) and
  ``lease_expires_at`` (epoch seconds, renewed while it runs);
* its events: ``sk = event_key(seq)``, read in order with one strongly consistent query.

GSI ``by_unfinished`` (``unfinished`` + ``created_at``, keys only): sparse, the jobs to resume.

**Uploads** (``DYNAMO_UPLOADS_TABLE``), hash ``upload_id``: direct uploads handed out and not yet
committed (removed on commit, so the table stays small and is scanned for expired ones).
"""

from __future__ import annotations

import json
import sys
from typing import Any

DOCUMENT_PREFIX = "doc#"
CONTENT_PREFIX = "content#"
JOB_SORT_KEY = "job"
EVENT_PREFIX = "event#"
# The value of ``unfinished`` on the jobs that have one (the sparse index's single partition).
UNFINISHED = "1"
BY_OWNER = "by_owner"
BY_SOURCE = "by_source"
BY_STATUS = "by_status"
BY_UNFINISHED = "by_unfinished"


def document_key(doc_id: str) -> str:
    return f"{DOCUMENT_PREFIX}{doc_id}"


def content_key(owner: str, sha256: str) -> str:
    # The owner's length first, so that no (owner, sha256) pair can spell another's key.
    return f"{CONTENT_PREFIX}{len(owner)}:{owner}#{sha256}"


def source_key(owner: str, source: str) -> str:
    return f"{len(owner)}:{owner}/{source}"


def event_key(seq: int) -> str:
    return f"{EVENT_PREFIX}{seq:010d}"


def _index(name: str, hash_key: str, range_key: str, projection: str = "ALL") -> dict[str, Any]:
    return {
        "IndexName": name,
        "KeySchema": [{"AttributeName": hash_key, "KeyType": "HASH"}, {"AttributeName": range_key, "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": projection},
    }


def documents_table(name: str) -> dict[str, Any]:
    """``CreateTable`` parameters of the documents table."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "owner", "AttributeType": "S"},
            {"AttributeName": "owner_source", "AttributeType": "S"},
            {"AttributeName": "status", "AttributeType": "S"},
            {"AttributeName": "created_at", "AttributeType": "N"},
            {"AttributeName": "updated_at", "AttributeType": "N"},
        ],
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        "GlobalSecondaryIndexes": [
            _index(BY_OWNER, "owner", "created_at"),
            _index(BY_SOURCE, "owner_source", "created_at"),
            _index(BY_STATUS, "status", "updated_at"),
        ],
    }


def jobs_table(name: str) -> dict[str, Any]:
    """``CreateTable`` parameters of the jobs table (jobs and their events)."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "job_id", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "unfinished", "AttributeType": "S"},
            {"AttributeName": "created_at", "AttributeType": "N"},
        ],
        "KeySchema": [{"AttributeName": "job_id", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        "GlobalSecondaryIndexes": [_index(BY_UNFINISHED, "unfinished", "created_at", "KEYS_ONLY")],
    }


def uploads_table(name: str) -> dict[str, Any]:
    """``CreateTable`` parameters of the pending-uploads table."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": "upload_id", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "upload_id", "KeyType": "HASH"}],
    }


def table_definitions(
    documents: str = "ragchat-ingest-documents",
    jobs: str = "ragchat-ingest-jobs",
    uploads: str = "ragchat-ingest-uploads",
) -> list[dict[str, Any]]:
    return [documents_table(documents), jobs_table(jobs), uploads_table(uploads)]


def create_tables(client: Any, documents: str, jobs: str, uploads: str) -> None:
    """Create the three tables with a boto3 DynamoDB client and wait until they are active."""
    for definition in table_definitions(documents, jobs, uploads):
        client.create_table(**definition)
        client.get_waiter("table_exists").wait(TableName=definition["TableName"])


def main(argv: list[str]) -> int:
    names = argv if len(argv) == 3 else []
    sys.stdout.write(json.dumps(table_definitions(*names), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
