"""The Kubernetes manifests: every overlay renders, validates against Kubernetes 1.29–1.33 in strict
mode, follows the hardening rules, and matches what the services actually read (drift test)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from ragchat.v1 import gateway_pb2, generation_pb2, ingest_pb2, retrieval_pb2

from services.common.aws import AwsConfig
from services.common.config import Env
from services.common.metrics import MetricsConfig
from services.common.tracing import TracingConfig
from services.gateway.config import GatewayConfig
from services.generation.config import GenerationConfig
from services.ingest.config import IngestConfig
from services.retrieval.config import RetrievalConfig
from tests.unit.deploy.deploy_render import (
    OVERLAYS,
    REPO,
    SERVICES,
    Manifest,
    container_env,
    named,
    of_kind,
    render,
    workload,
)
from ui.web import WebConfig

KUBERNETES_VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33")
PROTO_SERVICE = {
    "gateway": gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
    "ingest": ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
    "retrieval": retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name,
    "generation": generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,
}
# What each container's process reads from the environment: its own configuration, plus the
# shared metrics, tracing and AWS client settings that every service reads at start.
SHARED_READERS: list[Callable[[Env], Any]] = [MetricsConfig.from_env, TracingConfig.from_env, AwsConfig.from_env]
READERS: dict[str, list[Callable[[Env], Any]]] = {
    "gateway": [GatewayConfig.from_env, *SHARED_READERS],
    "ingest": [IngestConfig.from_env, *SHARED_READERS],
    "retrieval": [RetrievalConfig.from_env, *SHARED_READERS],
    "generation": [GenerationConfig.from_env, *SHARED_READERS],
    "ui": [WebConfig.from_env],
}
# Variables read by a library rather than by our configuration, and the library (its source is
# searched for the name, so that a misspelt or retired variable still fails).
LIBRARY_VARIABLES = {"GRADIO_ANALYTICS_ENABLED": "gradio", "GRADIO_TEMP_DIR": "gradio"}


class RecordingEnv(Env):
    """An Env over a mapping that records every variable name the configuration asks for."""

    def __init__(self, environ: dict[str, str]) -> None:
        super().__init__(environ)
        self.read: set[str] = set()

    def raw(self, name: str) -> str | None:
        self.read.add(name)
        return super().raw(name)


def read_by(name: str, environ: dict[str, str]) -> tuple[set[str], list[Any]]:
    env = RecordingEnv(environ)
    configs = [reader(env) for reader in READERS[name]]
    return env.read, configs


def library_reads(variable: str, package: str) -> bool:
    spec = find_spec(package)
    assert spec is not None and spec.submodule_search_locations is not None
    root = Path(next(iter(spec.submodule_search_locations)))
    return any(variable in path.read_text(errors="ignore") for path in root.rglob("*.py"))


def containers(doc: Manifest) -> list[Manifest]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def port_named(container: Manifest, name: str) -> int:
    ports = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == name]
    assert len(ports) == 1, f"{container['name']}: no port named {name}"
    return int(ports[0])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly_against_every_supported_kubernetes(overlay: str) -> None:
    docs = render(overlay)
    assert docs
    failures = []
    for doc in docs:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
                failures.append(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {error}")
    assert not failures, "\n".join(failures[:20])


def test_the_validator_rejects_a_misspelt_field_and_an_unknown_api_version() -> None:
    """The two mistakes the validation above exists for must fail (strict mode, schema lookup)."""
    deployment = named(render("local"), "Deployment", "gateway")
    misspelt = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, "1.33", strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate({**deployment, "apiVersion": "apps/v1beta3"}, "1.33", strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened_probed_and_bounded(overlay: str) -> None:
    docs = render(overlay)
    for doc in of_kind(docs, "Deployment", "StatefulSet"):
        pod = doc["spec"]["template"]["spec"]
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        mounts_needed = set()
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert probe in container, f"{where}: no {probe}"
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{where}: /tmp must be a writable volume"
            mounts_needed |= {m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"] for v in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in doc["spec"].get("volumeClaimTemplates", [])}
        assert mounts_needed <= volumes | claims, f"{where}: a mount without a volume"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", [*SERVICES, "ui"])
def test_manifests_match_what_the_service_reads(overlay: str, name: str) -> None:
    """Drift: env names, ports, probes, peers, paths and image all agree with the code."""
    docs = render(overlay)
    doc = workload(docs, name)
    (container,) = containers(doc)
    environ = container_env(docs, container)
    read, configs = read_by(name, environ)  # a value the service would refuse fails here

    unread = sorted(set(environ) - read - set(LIBRARY_VARIABLES))
    assert not unread, f"{overlay}/{name}: set but never read by the {name} service: {unread}"
    for variable, package in LIBRARY_VARIABLES.items():
        if variable in environ:
            assert library_reads(variable, package), f"{package} does not read {variable}"

    mounts = [m["mountPath"] for m in container["volumeMounts"]]

    def writable(path: str) -> bool:
        return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)

    service = next(s for s in of_kind(docs, "Service") if s["metadata"]["name"] == name)
    if name == "ui":
        web = configs[0]
        assert port_named(container, "http") == web.port
        assert web.host == "0.0.0.0"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] in ("http", web.port)
        assert writable(environ["GRADIO_TEMP_DIR"])
        peers = {"GATEWAY_ADDR": web.gateway}
    else:
        config, metrics_config = configs[0], configs[1]
        port = config.server.port
        assert port_named(container, "grpc") == port, f"{overlay}/{name}: container port != PORT"
        assert config.server.host == "0.0.0.0", "HOST must bind every interface in a pod"
        for probe in ("readinessProbe", "startupProbe"):
            assert container[probe]["grpc"] == {"port": port, "service": PROTO_SERVICE[name]}, probe
        assert container["livenessProbe"]["grpc"]["port"] == port
        assert metrics_config.port == port_named(container, "metrics")
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == metrics_config.port
        data = getattr(config, "data_dir", None)  # generation keeps no data
        assert data is None or writable(str(data)), f"{overlay}/{name}: DATA_DIR {data} is not on a volume"
        sleep = container["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0] == "sleep"
        grace = doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > config.server.grace_seconds + float(sleep[1]), "the drain must fit the grace period"
        peers = {var: value for var, value in environ.items() if var.endswith("_ADDR")}
    assert any(p.get("targetPort") in (port_named(container, p["name"]), p["name"]) for p in service["spec"]["ports"])

    for variable, address in peers.items():
        # dns:/// + a headless Service: the channel sees every pod and balances calls over them.
        assert address.startswith("dns:///"), f"{overlay}/{name}: {variable}={address} must be dns:///<service>:<port>"
        host, _, peer_port = address.removeprefix("dns:///").rpartition(":")
        peer = named(docs, "Service", host)
        assert int(peer_port) in [p["port"] for p in peer["spec"]["ports"]], f"{variable}={address}: no such port"
        assert peer["spec"].get("clusterIP") == "None", f"{variable}={address}: Service {host} is not headless"
        selected = peer["spec"]["selector"]["app.kubernetes.io/name"]
        assert selected == variable.removesuffix("_ADDR").lower(), f"{variable}={address} selects {selected} pods"

    image = container["image"]
    assert re.fullmatch(rf"(.+/)?ragchat/{name}:[\w.-]+", image), f"{overlay}/{name}: image {image}"
    dockerfile = (REPO / "docker" / f"{name}.Dockerfile").read_text()
    module = "ui.web" if name == "ui" else f"services.{name}"
    assert f'ENTRYPOINT ["python", "-m", "{module}"]' in dockerfile
    exposed = port_named(container, "http" if name == "ui" else "grpc")
    assert f"EXPOSE {exposed}" in dockerfile


def test_the_drift_check_catches_an_unread_variable_and_a_bad_value() -> None:
    docs = render("local")
    (container,) = containers(workload(docs, "retrieval"))
    environ = container_env(docs, container)
    read, _ = read_by("retrieval", {**environ, "RETRIEVAL_TOPK": "5"})
    assert "RETRIEVAL_TOPK" not in read
    with pytest.raises(ValueError, match="PORT"):
        read_by("retrieval", {**environ, "PORT": "fifty"})


def test_eks_scales_budgets_spreads_and_fences_the_services() -> None:
    docs = render("eks")
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")}
    assert targets == {"gateway", "generation", "ingest"}
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        assert "replicas" not in workload(docs, hpa["spec"]["scaleTargetRef"]["name"])["spec"]
        assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"], hpa["metadata"]["name"]
    # No pod keeps state on EKS (S3 and DynamoDB do): no volume claims, no single-pod Recreate.
    assert not of_kind(docs, "PersistentVolumeClaim", "StatefulSet")
    for deployment in of_kind(docs, "Deployment"):
        assert deployment["spec"].get("strategy", {}).get("type", "RollingUpdate") == "RollingUpdate"
        for volume in deployment["spec"]["template"]["spec"]["volumes"]:
            assert "persistentVolumeClaim" not in volume, deployment["metadata"]["name"]
    pod_labels = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in of_kind(docs, "Deployment")
    }
    budgets = {
        p["metadata"]["name"]: p["spec"]["selector"]["matchLabels"] for p in of_kind(docs, "PodDisruptionBudget")
    }
    for name, labels in pod_labels.items():
        assert budgets[name].items() <= labels.items(), f"the budget of {name} selects none of its pods"
        spread = workload(docs, name)["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}

    def allowed_sources(target: str) -> set[str]:
        sources: set[str] = set()
        for policy in of_kind(docs, "NetworkPolicy"):
            if policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") != target:
                continue
            for rule in policy["spec"].get("ingress", []):
                if {p["port"] for p in rule["ports"]} & {"grpc", "http"}:
                    for peer in rule["from"]:
                        if "podSelector" in peer:
                            sources.add(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
                        if "ipBlock" in peer:
                            ipaddress.ip_network(peer["ipBlock"]["cidr"])
                            sources.add("alb")
                        assert "namespaceSelector" not in peer, "only Prometheus may come from another namespace"
        return sources

    assert named(docs, "NetworkPolicy", "default-deny-ingress")["spec"]["podSelector"] == {}
    assert allowed_sources("gateway") == {"ui", "alb"}
    assert allowed_sources("ui") == {"alb"}
    assert allowed_sources("ingest") == {"gateway"}
    assert allowed_sources("retrieval") == {"gateway", "ingest"}
    assert allowed_sources("generation") == {"gateway", "ingest"}

    ui_ingress = named(docs, "Ingress", "ui")
    assert ui_ingress["spec"]["ingressClassName"] == "alb"
    assert ui_ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/certificate-arn"].startswith("arn:aws")


@pytest.mark.parametrize("overlay", ["eks", "eks-kendra"])
def test_eks_uses_the_aws_backends_and_irsa_roles_from_the_stack_outputs(overlay: str) -> None:
    docs = render(overlay)
    outputs = named(docs, "ConfigMap", "stack-outputs")["data"]
    for name in SERVICES:
        account = named(docs, "ServiceAccount", name)
        assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == outputs[f"{name.title()}RoleArn"]
    assert "annotations" not in named(docs, "ServiceAccount", "ui").get("metadata", {})
    env = {n: container_env(docs, containers(workload(docs, n))[0]) for n in SERVICES}
    assert env["ingest"]["BLOB_BACKEND"] == "s3" and env["ingest"]["S3_BUCKET"] == outputs["BucketName"]
    assert env["gateway"]["HISTORY_BACKEND"] == "dynamodb"
    assert env["gateway"]["DYNAMO_CALLS_TABLE"] == outputs["CallsTableName"]
    assert env["gateway"]["AUTH_MODE"] == "jwt"
    assert env["ingest"]["INGEST_REGISTRY"] == "dynamodb"
    assert env["ingest"]["DYNAMO_DOCUMENTS_TABLE"] == outputs["IngestDocumentsTableName"]
    assert env["ingest"]["DYNAMO_JOBS_TABLE"] == outputs["IngestJobsTableName"]
    assert env["ingest"]["DYNAMO_UPLOADS_TABLE"] == outputs["IngestUploadsTableName"]
    assert env["generation"]["GENERATION_BACKEND"] == "sagemaker"
    assert env["retrieval"]["RETRIEVAL_BACKEND"] == ("kendra" if overlay == "eks-kendra" else "bedrock-kb")
    rendered = "\n".join(str(doc) for doc in docs)
    assert "from-stack-outputs" not in rendered, "a value was not replaced from the stack outputs"


def test_local_keeps_state_on_persistent_volumes() -> None:
    docs = render("local")
    retrieval = named(docs, "StatefulSet", "retrieval")
    assert [c["metadata"]["name"] for c in retrieval["spec"]["volumeClaimTemplates"]] == ["data"]
    assert not [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "retrieval"]
    for name in ("gateway", "ingest"):
        deployment = named(docs, "Deployment", name)
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
        named(docs, "PersistentVolumeClaim", claim)
        assert "emptyDir" not in volumes["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_peers_are_headless_and_the_ingress_backends_are_not(overlay: str) -> None:
    """gRPC callers dial headless Services (every pod's address: calls balanced per call); the ALB
    and port-forwards use the ordinary Services."""
    docs = render(overlay)
    for name in ("ingest", "retrieval", "generation", "gateway-pods"):
        assert named(docs, "Service", name)["spec"].get("clusterIP") == "None", f"{overlay}: {name} is not headless"
    for name in ("gateway", "ui"):
        assert "clusterIP" not in named(docs, "Service", name)["spec"], f"{overlay}: {name} must keep a virtual IP"
    for ingress in of_kind(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = named(docs, "Service", path["backend"]["service"]["name"])
                assert "clusterIP" not in backend["spec"], f"{overlay}: the ingress backend must not be headless"
