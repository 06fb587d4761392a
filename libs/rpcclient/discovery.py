"""Where a logical service name (inventory, catalog, ...) lives.

Local mode reads the registry file the dev launcher writes (several replicas per service are
balanced round-robin); Kubernetes mode uses cluster DNS; `<SERVICE>_TARGET` overrides either.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class UnknownService(LookupError):
    pass


class Resolver(Protocol):
    def target(self, service: str) -> str:
        """A gRPC target URI for `service`."""
        ...


@dataclass(frozen=True)
class LocalRegistry:
    """A JSON file {"inventory": ["127.0.0.1:50061", ...], ...}."""

    path: Path

    def target(self, service: str) -> str:
        override = os.environ.get(f"{service.upper()}_TARGET")
        if override:
            return override
        try:
            addresses = json.loads(self.path.read_text()).get(service) or []
        except FileNotFoundError:
            raise UnknownService(f"no service registry at {self.path}") from None
        if not addresses:
            raise UnknownService(f"{service} is not in the registry {self.path}")
        return "ipv4:" + ",".join(addresses)

    def register(self, service: str, address: str) -> None:
        entries = json.loads(self.path.read_text()) if self.path.exists() else {}
        entries.setdefault(service, [])
        if address not in entries[service]:
            entries[service].append(address)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(json.dumps(entries, indent=2))
        scratch.replace(self.path)


@dataclass(frozen=True)
class KubernetesDns:
    namespace: str = "emporium"
    port: int = 50051
    cluster_domain: str = "cluster.local"

    def target(self, service: str) -> str:
        override = os.environ.get(f"{service.upper()}_TARGET")
        if override:
            return override
        return f"dns:///{service}.{self.namespace}.svc.{self.cluster_domain}:{self.port}"


@dataclass(frozen=True)
class Addresses:
    """Targets given by settings (`{"identity": "dns:///identity:50051"}`), for a service that
    knows where its one or two upstreams are without a registry."""

    targets: Mapping[str, str]

    def target(self, service: str) -> str:
        try:
            return self.targets[service]
        except KeyError:
            raise UnknownService(f"no address set for {service}") from None
