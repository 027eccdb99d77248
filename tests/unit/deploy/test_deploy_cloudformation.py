"""The CloudFormation template: cfn-lint clean, least privilege, tables as the services define
them, and outputs that are exactly what the EKS overlays read."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.gateway.backends import dynamo_schema
from services.ingest.backends import dynamo_schema as ingest_schema
from tests.unit.deploy.deploy_render import REPO

TEMPLATE = REPO / "deploy" / "ragchat.yaml"
CFN_LINT = str(Path(sys.executable).with_name("cfn-lint"))
# Actions AWS offers no resource-level permission for: the only ones allowed on Resource "*",
# each with the reason (and, where AWS offers one, a condition narrowing it).
STAR_RESOURCE_ALLOWED = {
    "cloudwatch:PutMetricData": "no resource-level permission; limited by the cloudwatch:namespace condition",
    "logs:DescribeLogGroups": "no resource-level permission",
}


class _Tag:
    def __init__(self, tag: str, value: Any) -> None:
        self.tag, self.value = tag, value

    def __repr__(self) -> str:
        return f"{self.tag} {self.value!r}"


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form intrinsic functions (!Ref, !Sub, !If, ...) kept as tags."""


def _construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> _Tag:
    if isinstance(node, yaml.ScalarNode):
        return _Tag(suffix, loader.construct_scalar(node))
    if isinstance(node, yaml.SequenceNode):
        return _Tag(suffix, loader.construct_sequence(node, deep=True))
    assert isinstance(node, yaml.MappingNode)
    return _Tag(suffix, loader.construct_mapping(node, deep=True))


_Loader.add_multi_constructor("!", _construct)


def template() -> dict[str, Any]:
    return dict(yaml.load(TEMPLATE.read_text(), Loader=_Loader))


def statements(node: Any) -> Iterator[dict[str, Any]]:
    """Every policy statement in the template, through !If branches."""
    if isinstance(node, _Tag):
        yield from statements(node.value)
    elif isinstance(node, dict):
        if "Effect" in node and "Action" in node:
            yield node
        for value in node.values():
            yield from statements(value)
    elif isinstance(node, list):
        for value in node:
            yield from statements(value)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_cfn_lint_passes() -> None:
    result = subprocess.run([CFN_LINT, str(TEMPLATE)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_fails_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE.read_text().replace("BillingMode: PAY_PER_REQUEST", "BillingMode: PAY_PER_REQUESTS", 1))
    result = subprocess.run([CFN_LINT, str(broken)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0


def test_least_privilege_no_wildcard_actions_no_star_resources() -> None:
    found = list(statements(template()["Resources"]))
    assert len(found) > 10
    for statement in found:
        if statement.get("Effect") == "Deny":
            continue
        actions = [a for a in as_list(statement["Action"]) if isinstance(a, str)]
        for action in actions:
            assert "*" not in action, f"wildcard action {action}"
        if statement.get("Resource") == "*":
            assert all(a in STAR_RESOURCE_ALLOWED for a in actions), f"Resource '*' for {actions}"


def test_the_kendra_role_trusts_kendra_and_only_it_may_be_passed() -> None:
    resources = template()["Resources"]
    trust = resources["KendraRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "kendra.amazonaws.com"}]
    passes = [s for s in statements(resources) if "iam:PassRole" in as_list(s["Action"])]
    assert passes
    for statement in passes:
        resource = statement["Resource"]
        assert isinstance(resource, _Tag) and resource.tag == "GetAtt" and resource.value == "KendraRole.Arn"
        assert statement["Condition"]["StringEquals"]["iam:PassedToService"] == "kendra.amazonaws.com"


def test_each_service_role_trusts_only_its_own_service_account() -> None:
    resources = template()["Resources"]
    for service in ("gateway", "ingest", "retrieval", "generation"):
        trust = resources[f"{service.title()}Role"]["Properties"]["AssumeRolePolicyDocument"]
        assert isinstance(trust, _Tag) and trust.tag == "Sub"
        assert f'"system:serviceaccount:${{Namespace}}:{service}"' in trust.value
        assert "sts:AssumeRoleWithWebIdentity" in trust.value


def test_the_bucket_is_encrypted_private_and_tls_only() -> None:
    resources = template()["Resources"]
    bucket = resources["DocumentBucket"]["Properties"]
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    (deny,) = resources["DocumentBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


@pytest.mark.parametrize(
    ("resource", "definition"),
    [
        ("ConversationsTable", dynamo_schema.conversations_table("x")),
        ("CallsTable", dynamo_schema.calls_table("x")),
        ("IngestDocumentsTable", ingest_schema.documents_table("x")),
        ("IngestJobsTable", ingest_schema.jobs_table("x")),
        ("IngestUploadsTable", ingest_schema.uploads_table("x")),
    ],
)
def test_tables_match_the_services_schemas(resource: str, definition: dict[str, Any]) -> None:
    table = template()["Resources"][resource]["Properties"]

    def keyed(items: list[dict[str, Any]], key: str) -> dict[str, Any]:
        return {item[key]: item for item in items}

    assert table["BillingMode"] == definition["BillingMode"]
    assert keyed(table["AttributeDefinitions"], "AttributeName") == keyed(
        definition["AttributeDefinitions"], "AttributeName"
    )
    assert table["KeySchema"] == definition["KeySchema"]
    assert keyed(table.get("GlobalSecondaryIndexes", []), "IndexName") == keyed(
        definition.get("GlobalSecondaryIndexes", []), "IndexName"
    )


@pytest.mark.parametrize("overlay", ["eks", "eks-kendra"])
def test_stack_outputs_are_what_the_overlay_reads(overlay: str) -> None:
    outputs = template()["Outputs"]
    lines = (REPO / "k8s" / "overlays" / overlay / "stack-outputs" / "stack-outputs.env").read_text().splitlines()
    keys = {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}
    conditional = {name for name, output in outputs.items() if "Condition" in output}
    always = set(outputs) - conditional
    assert always <= keys, f"missing in {overlay}: {sorted(always - keys)}"
    assert keys <= set(outputs), f"not a stack output: {sorted(keys - set(outputs))}"
    wanted = (
        {"KendraIndexId", "KendraRoleArn"}
        if overlay == "eks-kendra"
        else {"KnowledgeBaseId", "KnowledgeBaseDataSourceId"}
    )
    assert keys & conditional == wanted
