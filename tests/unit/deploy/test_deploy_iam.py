"""Least privilege, checked both ways: each service's IRSA role in ``deploy/ragchat.yaml`` allows
exactly the IAM actions that the AWS calls in that service's code need: no more, no fewer.

The calls are read from the code: in each module that talks to AWS, every attribute or string
that names an operation of the AWS service its client is for (the operation names come from
botocore's own service models, so a misspelling finds nothing and a new call is found). Each
operation maps to its IAM action (``<prefix>:<Operation>``) except where IAM differs, listed in
``IAM_FOR`` with the reason. Backends switched by a CloudFormation condition (Kendra or a Bedrock
Knowledge Base) are compared with the statements under that condition.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass

import botocore.session
import pytest

from tests.unit.deploy.deploy_render import REPO
from tests.unit.deploy.test_deploy_cloudformation import _Tag, as_list, template

SERVICES = ("gateway", "ingest", "retrieval", "generation")


@dataclass(frozen=True)
class Adapter:
    """A module that calls AWS: the botocore services its clients are for, and the stack condition
    under which its backend is deployed (None: always)."""

    module: str
    aws: tuple[str, ...]
    condition: str | None = None


ADAPTERS: dict[str, list[Adapter]] = {
    "gateway": [Adapter("services/gateway/backends/dynamo_store.py", ("dynamodb",))],
    "ingest": [
        Adapter("services/ingest/backends/s3_blob_store.py", ("s3",)),
        Adapter("services/ingest/backends/dynamo_registry.py", ("dynamodb",)),
    ],
    "retrieval": [
        Adapter("services/retrieval/backends/kendra.py", ("kendra",), "UseKendra"),
        Adapter(
            "services/retrieval/backends/bedrock_kb.py", ("bedrock-agent-runtime", "bedrock-agent"), "UseKnowledgeBase"
        ),
    ],
    "generation": [Adapter("services/generation/backends/sagemaker.py", ("sagemaker-runtime",))],
}
# Backends in the code that the stack does not deploy: their actions are deliberately not granted.
NOT_DEPLOYED = {"generation": [Adapter("services/generation/backends/bedrock.py", ("bedrock-runtime",))]}

# Where the IAM actions an operation needs are not simply "<prefix>:<Operation>", and why.
IAM_FOR: dict[tuple[str, str], tuple[frozenset[str], str]] = {
    ("s3", "HeadObject"): (
        frozenset({"s3:GetObject", "s3:ListBucket"}),
        "HEAD needs s3:GetObject; without s3:ListBucket a missing key answers 403 instead of 404",
    ),
    ("s3", "GetObject"): (
        frozenset({"s3:GetObject", "s3:ListBucket"}),
        "without s3:ListBucket a missing key answers 403 (AccessDenied) instead of NoSuchKey",
    ),
    ("kendra", "BatchPutDocument"): (
        frozenset({"kendra:BatchPutDocument", "iam:PassRole"}),
        "the S3Path route passes the Kendra role (RoleArn) to Kendra",
    ),
    ("bedrock-runtime", "ConverseStream"): (
        frozenset({"bedrock:InvokeModelWithResponseStream"}),
        "Converse has no IAM action of its own",
    ),
    ("dynamodb", "TransactWriteItems"): (
        frozenset(),
        "no action of its own: each item needs its operation's action (see TRANSACTION_ITEMS)",
    ),
}
# A transaction item's kind (a dict key in the code) → the action it needs.
TRANSACTION_ITEMS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
}


@functools.cache
def operations(aws: str) -> dict[str, str]:
    """The botocore client's method names of ``aws`` → their operation names."""
    model = botocore.session.get_session().get_service_model(aws)
    return {botocore.xform_name(name): name for name in model.operation_names}


@functools.cache
def iam_prefix(aws: str) -> str:
    return str(botocore.session.get_session().get_service_model(aws).signing_name)


def names_in(source: str) -> set[str]:
    """Every attribute name and every whole string constant in the source."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
    return found


def calls_in(source: str, aws: tuple[str, ...]) -> set[tuple[str, str]]:
    """The (botocore service, operation) pairs the source calls."""
    names = names_in(source)
    return {
        (service, operation) for service in aws for method, operation in operations(service).items() if method in names
    }


def actions_for(source: str, aws: tuple[str, ...]) -> set[str]:
    actions: set[str] = set()
    for service, operation in calls_in(source, aws):
        if (service, operation) in IAM_FOR:
            actions |= IAM_FOR[service, operation][0]
        else:
            actions.add(f"{iam_prefix(service)}:{operation}")
        if (service, operation) == ("dynamodb", "TransactWriteItems"):
            actions |= {action for kind, action in TRANSACTION_ITEMS.items() if kind in names_in(source)}
    return actions


def code_actions(service: str) -> dict[str | None, set[str]]:
    """The actions the service's deployed code needs, by stack condition."""
    needed: dict[str | None, set[str]] = {}
    for adapter in ADAPTERS[service]:
        source = (REPO / adapter.module).read_text()
        needed.setdefault(adapter.condition, set()).update(actions_for(source, adapter.aws))
    return needed


def role_actions(service: str) -> dict[str | None, set[str]]:
    """The actions the service's role allows, by the condition of the statement (None: always)."""
    role = template()["Resources"][f"{service.title()}Role"]["Properties"]
    allowed: dict[str | None, set[str]] = {}
    for policy in role["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            condition = None
            if isinstance(statement, _Tag):
                assert statement.tag == "If", f"{service}: unexpected {statement.tag} around a statement"
                condition, statement, otherwise = statement.value
                assert isinstance(otherwise, _Tag) and otherwise.value == "AWS::NoValue"
            assert statement["Effect"] == "Allow"
            allowed.setdefault(condition, set()).update(as_list(statement["Action"]))
    return allowed


def clients_made(source: str) -> set[str]:
    """The AWS services of the clients the source makes: ``make_client("s3", …)``, ``….client("s3")``,
    or ``make_client`` handed to a call with its arguments (``asyncio.to_thread(make_client, "kendra", …)``)."""

    def name(node: ast.expr) -> str:
        return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""

    made: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        arguments: list[ast.expr] = list(node.args)
        if name(node.func) not in ("make_client", "client"):
            handed = [i for i, argument in enumerate(arguments) if name(argument) == "make_client"]
            arguments = arguments[handed[0] + 1 :] if handed else []
        if arguments and isinstance(arguments[0], ast.Constant) and isinstance(arguments[0].value, str):
            made.add(arguments[0].value)
    return made


@pytest.mark.parametrize("service", SERVICES)
def test_each_role_allows_exactly_what_its_code_calls(service: str) -> None:
    needed, allowed = code_actions(service), role_actions(service)
    for condition in sorted(set(needed) | set(allowed), key=str):
        want, have = needed.get(condition, set()), allowed.get(condition, set())
        where = f"{service} ({condition or 'always'})"
        assert not want - have, f"{where}: the code calls AWS without permission for {sorted(want - have)}"
        assert not have - want, f"{where}: the role allows {sorted(have - want)}, which the code never calls"


def test_the_calls_read_from_the_code_are_the_expected_ones() -> None:
    """What the reading finds in the adapters today: a reading that found nothing could not fail."""
    assert code_actions("ingest")[None] == {
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:ListBucket",
        "dynamodb:DescribeTable",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:Query",
        "dynamodb:Scan",
        "dynamodb:BatchWriteItem",
    }
    assert code_actions("retrieval")["UseKendra"] >= {"kendra:Retrieve", "kendra:BatchPutDocument", "iam:PassRole"}
    assert "bedrock:GetKnowledgeBaseDocuments" in code_actions("retrieval")["UseKnowledgeBase"]
    assert code_actions("generation") == {
        None: {"sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpointWithResponseStream"}
    }


def test_a_new_call_or_client_in_the_code_is_found() -> None:
    source = (
        "def f(client):\n"
        '    client.create_table(TableName="t")\n'
        '    client.transact_write_items(TransactItems=[{"ConditionCheck": {}}])\n'
    )
    assert actions_for(source, ("dynamodb",)) == {"dynamodb:CreateTable", "dynamodb:ConditionCheckItem"}
    assert actions_for("x = request.query_text", ("kendra",)) == set()
    made = 'make_client("s3", aws)\nboto3.client("sqs")\nasyncio.to_thread(make_client, "kendra", aws)\nf("sns")\n'
    assert clients_made(made) == {"s3", "sqs", "kendra"}


def test_every_aws_client_the_services_make_has_an_adapter_here() -> None:
    """A client made anywhere in a service (make_client("…") or boto3's .client("…")) is for an AWS
    service that one of its listed adapters covers, so no module's calls go unchecked."""
    for service in SERVICES:
        covered = {aws for adapter in ADAPTERS[service] + NOT_DEPLOYED.get(service, []) for aws in adapter.aws}
        made = {aws for path in (REPO / "services" / service).rglob("*.py") for aws in clients_made(path.read_text())}
        assert made <= covered, f"{service} makes clients for {sorted(made - covered)}: list its adapter here"
        assert made, f"{service}: no AWS client found; the search is broken"


@pytest.mark.parametrize(
    ("service", "tables"),
    [
        ("gateway", {"ConversationsTable", "CallsTable"}),
        ("ingest", {"IngestDocumentsTable", "IngestJobsTable", "IngestUploadsTable"}),
    ],
)
def test_each_role_reaches_its_own_tables_only(service: str, tables: set[str]) -> None:
    role = template()["Resources"][f"{service.title()}Role"]["Properties"]
    reached: set[str] = set()
    for policy in role["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            if any(str(action).startswith("dynamodb:") for action in as_list(statement["Action"])):
                reached |= set(re.findall(r"(\w+Table)\.Arn", repr(statement["Resource"])))
    assert reached == tables
