"""The Kubernetes manifests under mesh/: custom resources valid against the Linkerd and Istio
schemas (mesh/schemas, or EMPORIUM_CRD_SCHEMAS), workloads hardened and probed on their
protocol, and every kustomization pointing at files that exist."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tools.contracts.check import REPO

MESH = REPO / "mesh"
BUILTIN_GROUPS = {
    "v1",
    "apps/v1",
    "kustomize.config.k8s.io/v1beta1",
    "kustomize.config.k8s.io/v1alpha1",
}


def documents() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(MESH.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((path, document))
    return found


def schema_for(document: dict[str, Any]) -> Path:
    group, version = str(document["apiVersion"]).split("/")
    root = Path(os.environ.get("EMPORIUM_CRD_SCHEMAS", str(MESH / "schemas")))
    kind = str(document["kind"]).lower()
    return root / group / f"{kind}_{version}.json"


def test_manifests_exist() -> None:
    kinds = {document["kind"] for _, document in documents()}
    assert {"Deployment", "Service", "ServiceAccount", "PeerAuthentication", "Server"} <= kinds


@pytest.mark.parametrize(
    ("path", "document"),
    [(p, d) for p, d in documents() if d["apiVersion"] not in BUILTIN_GROUPS],
    ids=lambda value: value.name if isinstance(value, Path) else value.get("kind", ""),
)
def test_custom_resources_match_their_schemas(path: Path, document: dict[str, Any]) -> None:
    schema_path = schema_for(document)
    assert schema_path.is_file(), f"no schema {schema_path} for {path} (set EMPORIUM_CRD_SCHEMAS)"
    jsonschema.validate(document, json.loads(schema_path.read_text()))


def test_schema_validation_rejects_a_bad_mode() -> None:
    bad = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "x"},
        "spec": {"mtls": {"mode": "SOMETIMES"}},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json.loads(schema_for(bad).read_text()))


def _emporium_containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return [c for c in containers if str(c["image"]).startswith("emporium/")]


def test_deployments_are_hardened_and_probed_on_their_protocol() -> None:
    deployments = [d for _, d in documents() if d["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]
            assert {"requests", "limits"} <= set(container["resources"])
        for container in _emporium_containers(deployment):
            # gRPC services are probed with gRPC health; the HTTP gateway on /healthz.
            port = container["ports"][0]["name"]
            for probe in ("readinessProbe", "livenessProbe"):
                expected = "grpc" if port == "grpc" else "httpGet"
                assert expected in container[probe], (deployment["metadata"]["name"], probe)


def test_services_name_their_port_by_protocol() -> None:
    for _, service in (item for item in documents() if item[1]["kind"] == "Service"):
        names = [port["name"] for port in service["spec"]["ports"]]
        expected = {"gateway": ["http"], "redis": ["redis"]}.get(service["metadata"]["name"])
        assert names == (expected or ["grpc"]), service["metadata"]["name"]


def test_kustomizations_point_at_existing_files() -> None:
    for path in MESH.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        for entry in kustomization.get("resources", []) + kustomization.get("components", []):
            assert (path.parent / entry).exists(), f"{path}: {entry} does not exist"


def test_services_run_in_mesh_mode_explicitly() -> None:
    """Behind the mesh, in-process TLS is off; that must be said, never a default."""
    for _, deployment in (item for item in documents() if item[1]["kind"] == "Deployment"):
        for container in _emporium_containers(deployment):
            env = {entry["name"]: entry.get("value") for entry in container["env"]}
            security = [value for name, value in env.items() if name.endswith("_SECURITY")]
            assert security == ["mesh"], deployment["metadata"]["name"]


def test_mesh_authorization_matches_the_services_policies() -> None:
    """The committed Istio and Linkerd authorization is what `python -m tools.mesh` generates
    from services/*/api/policy.py today (regenerate after changing a policy)."""
    from tools.mesh.__main__ import OUTPUTS, render

    for path, build in OUTPUTS.items():
        assert path.read_text() == render(build()), f"{path} is stale: run python -m tools.mesh"


def test_istio_authorization_names_every_method() -> None:
    from tools.mesh.__main__ import SERVICES, istio

    paths = {
        path
        for document in istio()
        for rule in document["spec"]["rules"]
        for to in rule["to"]
        for path in to["operation"]["paths"]
    }
    for _, descriptors, _ in SERVICES:
        for descriptor in descriptors:  # none: a health endpoint only
            for method in descriptor.methods:
                assert f"/{descriptor.full_name}/{method.name}" in paths
