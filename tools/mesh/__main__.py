"""`python -m tools.mesh`: writes the mesh resources that follow from the code, so the mesh
enforces and retries what the services do in-process. tests/contract/test_mesh.py fails when the
committed files drift.

- Authorization from the services' per-method policies (services/<name>/api/policy.py).
  Istio: one AuthorizationPolicy per service, a rule per group of methods with the same callers;
  principals are `cluster.local/ns/emporium/sa/<account>`, and the Istio overlays rewrite the
  trust domain (ConfigMap mesh-identity) and the namespace (the overlay's) in them.
  Linkerd: per service a Server; per group of methods an HTTPRoute (policy.linkerd.io/v1beta3),
  a MeshTLSAuthentication naming ServiceAccounts (so no namespace or trust domain is written
  down) and an AuthorizationPolicy; health checks (kubelet probes) and /metrics are open to the
  network; everything else is denied (the namespace's default inbound policy).
- Resilience from the contracts: a timeout on every unary method (the client kit's default
  deadline) and retries of UNAVAILABLE for the idempotent ones only (the client kit's rule,
  libs.rpcclient.upstream.is_idempotent). Istio: a VirtualService (retries off for the rest:
  Istio retries by default) and a DestinationRule (connection pool, outlier detection) per
  service. Linkerd: GRPCRoutes on each Service with retry.linkerd.io/* and timeout.linkerd.io/*.
- NetworkPolicies: deny by default, one allow per real edge: the gRPC calls the code makes
  (tools/mesh/calls.py), the databases, the broker, Redis, the ingress and Prometheus.

`python -m tools.mesh secrets --env dev|prod` writes the git-ignored mesh/local/<env> the
overlays read: every Secret, the image reference and (optionally) the trust domain.
"""

from __future__ import annotations

import argparse
import sys

from tools.mesh.resources import OUTPUTS, REPO, render, unused_grants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    from tools.mesh.secrets import add_arguments, write_local

    add_arguments(commands.add_parser("secrets", help="write mesh/local/<env> (never committed)"))
    args = parser.parse_args()
    if args.command == "secrets":
        write_local(args)
        return
    for path, build in OUTPUTS.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(build()))
        print(f"wrote {path.relative_to(REPO)}")
    for grant in unused_grants():
        print(f"warning: unused grant {grant} (no code of the caller calls it)", file=sys.stderr)


if __name__ == "__main__":
    main()
