"""The Dockerfiles (no container engine runs here, so they are checked as text): multi-stage on
python:3.11-slim, non-root, generated code built inside, the service's module as entry point, and
an installed set that covers every third-party module the image's code imports."""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.unit.deploy.deploy_render import REPO

IMAGES = {
    "gateway": "services.gateway",
    "ingest": "services.ingest",
    "retrieval": "services.retrieval",
    "generation": "services.generation",
    "ui": "ui.web",
}
FIRST_PARTY = ("services", "ui", "ragchat")


def module_path(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py", base / "__main__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_distributions(entry: str) -> dict[str, set[str]]:
    """Every third-party top-level module reachable from ``entry`` through first-party imports, with
    the distributions that provide it (several for namespace packages such as ``opentelemetry``)."""
    seen: set[str] = set()
    third_party: set[str] = set()
    queue = [entry, f"{entry}.__main__"]
    while queue:
        module = queue.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_path(module)
        if path is None:
            continue
        package = module if path.name in ("__init__.py", "__main__.py") else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base])
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            for name in names:
                top = name.split(".")[0]
                if top in FIRST_PARTY:
                    queue.append(name.strip("."))
                elif top and top not in sys.stdlib_module_names and top != "__future__":
                    third_party.add(top)
    distributions = metadata.packages_distributions()
    return {top: {canonicalize_name(d) for d in distributions[top]} for top in third_party if top in distributions}


@cache
def closure(names: tuple[str, ...]) -> frozenset[str]:
    """The distributions pip installs for ``names`` (their dependencies without extras, here)."""
    found: set[str] = set()
    queue = list(names)
    while queue:
        name = canonicalize_name(queue.pop())
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                queue.append(requirement.name)
    return frozenset(found)


def image_requirements(name: str) -> tuple[str, ...]:
    lines = (REPO / "docker" / "requirements" / f"{name}.txt").read_text().splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def pinned() -> set[str]:
    names: set[str] = set()
    for file in ("requirements.txt", "constraints.txt"):
        for line in (REPO / file).read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                names.add(canonicalize_name(re.split(r"[\[=]", line)[0]))
    return names


@pytest.mark.parametrize(("name", "module"), IMAGES.items())
def test_dockerfile_is_multi_stage_slim_non_root_and_builds_its_code(name: str, module: str) -> None:
    text = (REPO / "docker" / f"{name}.Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert len(re.findall(r"^FROM ", text, flags=re.M)) >= 2
    runtime = text.split("AS runtime", 1)[1]
    assert re.search(r"^USER 10001:10001$", runtime, flags=re.M), "the runtime stage must end as a non-root user"
    assert "grpcio-tools" not in runtime and "grpc_tools.protoc" in text, "generated code is built in the build stage"
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime and "compileall" in runtime, "read-only root: bytecode at build"
    assert f'ENTRYPOINT ["python", "-m", "{module}"]' in runtime
    assert find_spec(module) is not None
    assert f"docker/requirements/{name}.txt" in text
    assert "-c requirements.txt -c constraints.txt" in text, "versions pinned by the repository's pins"
    ignore = (REPO / "docker" / f"{name}.Dockerfile.dockerignore").read_text()
    assert ignore.startswith("#") and "\n**\n" in ignore


@pytest.mark.parametrize(("name", "module"), IMAGES.items())
def test_the_image_installs_every_module_its_code_imports_all_pinned(name: str, module: str) -> None:
    requirements = image_requirements(name)
    assert {canonicalize_name(r) for r in requirements} <= pinned(), "an image requirement is not pinned"
    installed = closure(requirements)
    missing = sorted(top for top, provided_by in imported_distributions(module).items() if not provided_by & installed)
    assert not missing, (
        f"{name} image: the code imports {missing}; add their packages to docker/requirements/{name}.txt"
    )


def test_the_import_check_sees_lazy_imports() -> None:
    """boto3 is imported inside functions only (services.common.aws): it must still be found."""
    assert "boto3" in imported_distributions("services.common.aws")


def test_the_retrieval_image_bakes_the_embedding_model_with_an_existing_exporter() -> None:
    text = (REPO / "docker" / "retrieval.Dockerfile").read_text()
    match = re.search(r"^ARG EMBEDDING_EXPORT_SCRIPT=(\S+)$", text, flags=re.M)
    assert match is not None
    assert (REPO / match.group(1)).is_file(), f"{match.group(1)} (the ONNX export step) does not exist"
    assert f"COPY {match.group(1)} " in text, "the export script is copied into the build stage"
    assert "COPY --from=embedding-model" in text.split("AS runtime", 1)[1]
