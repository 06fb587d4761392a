"""The Kubernetes deployment under mesh/: every overlay (dev and prod, each with Linkerd and
Istio) renders with kustomize after `python -m tools.mesh secrets`, its built-in objects
validate strictly against Kubernetes' own schemas, its custom resources against their CRDs'
(mesh/schemas, unknown fields are errors), checkov passes (skips named in mesh/checkov.yaml),
nothing it references is missing, and the generated mesh resources match the code (policies,
calls, contracts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tools.commands.contracts.check import REPO
from tools.mesh import overlays

MESH = REPO / "mesh"
KUBERNETES_VERSION = "1.32.0"  # the oldest Kubernetes the manifests support (mesh/README.md)
# Made by the RabbitMQ cluster operator for the RabbitmqCluster.
OPERATOR_SECRETS = {"emporium-rabbitmq-default-user"}
FLEET = {"identity", "catalog", "inventory", "orders", "payments", "notifications", "gateway"}
Document = dict[str, Any]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Document]]:
    """overlay -> its objects, rendered from a copy of mesh/ with fresh mesh/local secrets."""
    mesh = overlays.prepare(tmp_path_factory.mktemp("deploy"))
    return {overlay: overlays.render(mesh, overlay) for overlay in overlays.OVERLAYS}


def _all(rendered: dict[str, list[Document]]) -> Iterator[tuple[str, Document]]:
    for overlay, documents in rendered.items():
        for document in documents:
            yield overlay, document


def _is_builtin(document: Document) -> bool:
    group = str(document["apiVersion"]).rpartition("/")[0]
    return "." not in group or (group.endswith(".k8s.io") and not group.startswith("gateway."))


def test_every_overlay_is_complete(rendered: dict[str, list[Document]]) -> None:
    for overlay, documents in rendered.items():
        kinds = {d["kind"] for d in documents}
        assert {
            "Namespace", "Deployment", "StatefulSet", "Service", "ServiceAccount", "Secret",
            "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "RabbitmqCluster",
        } <= kinds, overlay  # fmt: skip
        mesh = overlay.split("/")[1]
        expected = (
            {"Server", "HTTPRoute", "GRPCRoute", "Gateway", "MeshTLSAuthentication"}
            if mesh == "linkerd"
            else {"PeerAuthentication", "AuthorizationPolicy", "DestinationRule", "VirtualService"}
        )
        assert expected <= kinds, overlay
        (namespace,) = (d["metadata"] for d in documents if d["kind"] == "Namespace")
        if mesh == "linkerd":
            assert namespace["annotations"] == {
                "linkerd.io/inject": "enabled",
                "config.linkerd.io/default-inbound-policy": "deny",
            }
        else:
            assert namespace["labels"]["istio-injection"] == "enabled"
        namespaces = {d["metadata"].get("namespace") for d in documents if d["kind"] != "Namespace"}
        assert namespaces == {"emporium"}, overlay


def test_builtin_objects_validate_strictly(rendered: dict[str, list[Document]]) -> None:
    checked = 0
    for overlay, document in _all(rendered):
        if not _is_builtin(document):
            continue
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{overlay}: {document['kind']}/{document['metadata']['name']}: {error}")
        checked += 1
    assert checked > 100


def test_strict_validation_rejects_an_unknown_field() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "template": {"spec": {"containers": []}}, "replica": 2},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def schema_for(document: Document) -> Path:
    group, version = str(document["apiVersion"]).split("/")
    root = Path(os.environ.get("EMPORIUM_CRD_SCHEMAS", str(MESH / "schemas")))
    return root / group / f"{str(document['kind']).lower()}_{version}.json"


def test_custom_resources_match_their_crds(rendered: dict[str, list[Document]]) -> None:
    for overlay, document in _all(rendered):
        if _is_builtin(document):
            continue
        path = schema_for(document)
        name = f"{overlay}: {document['apiVersion']} {document['kind']}"
        assert path.is_file(), f"{name}: no CRD schema {path} (the API server would reject it)"
        spec = {k: v for k, v in document.items() if k not in ("apiVersion", "kind", "metadata")}
        try:
            jsonschema.validate(spec, json.loads(path.read_text()))
        except jsonschema.ValidationError as error:
            pytest.fail(f"{name}/{document['metadata']['name']}: {error.message}")


def test_crd_validation_rejects_unknown_fields_and_versions() -> None:
    bad = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
           "spec": {"mtls": {"mode": "STRICT", "sometimes": True}}}  # fmt: skip
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"spec": bad["spec"]}, json.loads(schema_for(bad).read_text()))
    never_served = {"apiVersion": "policy.linkerd.io/v1", "kind": "HTTPRoute"}
    assert not schema_for(never_served).exists()


def test_checkov_passes(rendered: dict[str, list[Document]], tmp_path: Path) -> None:
    checkov = Path(sys.prefix).parent / "build" / "checkov" / "bin" / "checkov"
    assert checkov.is_file(), f"{checkov} is missing: run tools/setup (setup_checkov)"
    for overlay, documents in rendered.items():
        (tmp_path / f"{overlay.replace('/', '-')}.yaml").write_text(
            yaml.safe_dump_all(documents, sort_keys=False)
        )
    done = subprocess.run(
        [str(checkov), "--compact", "--output", "json",
         "--config-file", str(MESH / "checkov.yaml"), "--directory", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    report = json.loads(done.stdout)
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"
        for check in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert report["summary"]["passed"] > 1000


def test_everything_referenced_is_rendered(rendered: dict[str, list[Document]]) -> None:
    """Nothing to create by hand: every Secret, ConfigMap and ServiceAccount a pod uses is in
    the overlay (but the RabbitMQ operator's own Secret)."""
    for overlay, documents in rendered.items():
        have = {(d["kind"], d["metadata"]["name"]) for d in documents}
        for document in documents:
            if document["kind"] not in ("Deployment", "StatefulSet"):
                continue
            pod = document["spec"]["template"]["spec"]
            wanted = {("ServiceAccount", pod["serviceAccountName"])}
            for volume in pod.get("volumes", []):
                if "secret" in volume:
                    wanted.add(("Secret", volume["secret"]["secretName"]))
                if "configMap" in volume:
                    wanted.add(("ConfigMap", volume["configMap"]["name"]))
            for container in pod["containers"]:
                for entry in container.get("env", []):
                    ref = entry.get("valueFrom", {}).get("secretKeyRef")
                    if ref and ref["name"] not in OPERATOR_SECRETS:
                        wanted.add(("Secret", ref["name"]))
            missing = wanted - have
            assert not missing, f"{overlay}: {document['metadata']['name']} needs {missing}"


def test_workloads_are_hardened_and_probed(rendered: dict[str, list[Document]]) -> None:
    for overlay, document in _all(rendered):
        if document["kind"] not in ("Deployment", "StatefulSet"):
            continue
        name = f"{overlay}: {document['metadata']['name']}"
        pod = document["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert {"requests", "limits"} <= set(container["resources"]), name
            assert container["imagePullPolicy"] == "IfNotPresent", name
            assert "readinessProbe" in container and "livenessProbe" in container, name
        if document["metadata"]["name"] in FLEET:
            (container,) = pod["containers"]
            assert pod["securityContext"]["fsGroup"] == 10001, name
            # Istio's PeerAuthentication for the metrics port selects pods by it.
            labels = document["spec"]["template"]["metadata"]["labels"]
            assert labels["app.kubernetes.io/part-of"] == "emporium", name
            assert container["image"].split(":")[0].endswith("emporium/services"), name
            expected = "httpGet" if container["ports"][0]["name"] == "http" else "grpc"
            assert expected in container["readinessProbe"], name
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert [v for k, v in env.items() if k.endswith("_SECURITY")] == ["mesh"], name


def test_services_write_only_to_their_volumes(rendered: dict[str, list[Document]]) -> None:
    """Writable volumes only where a service writes: payments' simulator ledger."""
    for overlay, document in _all(rendered):
        if document["kind"] != "Deployment" or document["metadata"]["name"] not in FLEET:
            continue
        pod = document["spec"]["template"]["spec"]
        writable = {
            m["mountPath"]
            for c in pod["containers"]
            for m in c.get("volumeMounts", [])
            if not m.get("readOnly")
        }
        env = {e["name"]: e.get("value") for c in pod["containers"] for e in c["env"]}
        if document["metadata"]["name"] == "payments":
            assert writable == {"/var/lib/payments"}, overlay
            assert str(env["PAYMENTS_PROVIDER_LEDGER"]).startswith("/var/lib/payments/"), overlay
        else:
            assert not writable, f"{overlay}: {document['metadata']['name']} {writable}"


def test_images_are_set_by_the_overlays(rendered: dict[str, list[Document]]) -> None:
    for overlay, document in _all(rendered):
        if document["kind"] == "Deployment" and document["metadata"]["name"] in FLEET:
            image = document["spec"]["template"]["spec"]["containers"][0]["image"]
            expected = {
                "dev": "emporium/services:dev",
                "prod": overlays.PROD_IMAGE,
            }[overlay.split("/")[0]]
            assert image == expected, overlay


def test_istio_principals_follow_the_namespace_and_trust_domain(
    rendered: dict[str, list[Document]],
) -> None:
    for overlay in ("dev/istio", "prod/istio"):
        documents = rendered[overlay]
        accounts = {d["metadata"]["name"] for d in documents if d["kind"] == "ServiceAccount"}
        domain = overlays.PROD_TRUST_DOMAIN if overlay.startswith("prod") else "cluster.local"
        principals = [
            principal
            for d in documents
            if d["kind"] == "AuthorizationPolicy"
            for rule in d["spec"]["rules"]
            for source in rule.get("from", [])
            for principal in source["source"].get("principals", [])
        ]
        assert principals
        for principal in principals:
            trust_domain, ns, namespace, sa, account = principal.split("/")
            assert (trust_domain, ns, namespace, sa) == (domain, "ns", "emporium", "sa"), principal
            assert account in accounts, f"{overlay}: {principal} names no ServiceAccount"


def test_linkerd_identities_name_service_accounts(rendered: dict[str, list[Document]]) -> None:
    for overlay in ("dev/linkerd", "prod/linkerd"):
        documents = rendered[overlay]
        accounts = {d["metadata"]["name"] for d in documents if d["kind"] == "ServiceAccount"}
        for d in documents:
            if d["kind"] == "MeshTLSAuthentication":
                for ref in d["spec"].get("identityRefs", []):
                    assert ref["kind"] == "ServiceAccount" and ref["name"] in accounts, ref
                assert d["spec"].get("identities", ["*"]) == ["*"], d["metadata"]["name"]


def test_mesh_resources_match_the_code() -> None:
    """The committed generated files are what `python -m tools.mesh` makes from the services'
    policies, contracts and calls today (regenerate after changing one)."""
    from tools.mesh.resources import OUTPUTS, render

    for path, build in OUTPUTS.items():
        assert path.read_text() == render(build()), f"{path} is stale: run python -m tools.mesh"


def test_no_grant_goes_unused() -> None:
    """A service's policy admits a fleet service only to methods that service's code calls."""
    from tools.mesh.resources import unused_grants

    assert unused_grants() == []


def test_every_method_is_authorized_and_routed() -> None:
    from tools.mesh.resources import SERVICES, istio_authorization, linkerd_resilience

    paths = {
        path
        for document in istio_authorization()
        for rule in document["spec"]["rules"]
        for to in rule["to"]
        for path in to["operation"].get("paths", [])
    }
    routed = {
        (match["method"]["service"], match["method"]["method"])
        for route in linkerd_resilience()
        for rule in route["spec"]["rules"]
        for match in rule["matches"]
    }
    for _, descriptors, _ in SERVICES:
        for descriptor in descriptors:
            for method in descriptor.methods:
                assert f"/{descriptor.full_name}/{method.name}" in paths
                # A Service with routes refuses calls that match none.
                assert (descriptor.full_name, method.name) in routed


def test_retries_only_for_idempotent_methods() -> None:
    """Retried: unary methods the contract declares idempotent (or AIP Get/List); the rest
    never (Istio would retry them by default)."""
    from google.protobuf.descriptor_pb2 import MethodOptions

    from tools.mesh.resources import SERVICES, istio_resilience, linkerd_resilience

    safe = {MethodOptions.IDEMPOTENT, MethodOptions.NO_SIDE_EFFECTS}
    expected = {
        f"/{d.full_name}/{m.name}"
        for _, descriptors, _ in SERVICES
        for d in descriptors
        for m in d.methods
        if not (m.client_streaming or m.server_streaming)
        and (m.GetOptions().idempotency_level in safe or m.name.startswith(("Get", "List")))
    }
    istio = {
        match["uri"]["exact"]
        for service in istio_resilience()
        if service["kind"] == "VirtualService"
        for route in service["spec"]["http"]
        if route["retries"]["attempts"] > 0
        for match in route["match"]
    }
    linkerd = {
        f"/{match['method']['service']}/{match['method']['method']}"
        for route in linkerd_resilience()
        if "retry.linkerd.io/grpc" in route["metadata"]["annotations"]
        for rule in route["spec"]["rules"]
        for match in rule["matches"]
    }
    assert istio == linkerd == expected
    assert "/emporium.identity.v1.IdentityService/IssueToken" not in expected
