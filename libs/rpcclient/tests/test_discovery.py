"""Discovery: the local registry (several replicas, balanced round-robin by the channel) and
Kubernetes DNS targets, and the <SERVICE>_TARGET override of both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from libs.rpcclient.channels import ChannelFactory
from libs.rpcclient.discovery import KubernetesDns, LocalRegistry, UnknownService
from libs.rpcclient.upstream import Upstream


class Counting(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls = 0

    async def Check(self, request: Any, context: Any) -> Any:
        self.calls += 1
        return HealthCheckResponse(status=HealthCheckResponse.SERVING)


@pytest.fixture
async def replicas() -> AsyncIterator[list[tuple[str, Counting]]]:
    started = []
    for _ in range(2):
        servicer, server = Counting(), grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        started.append((server, f"127.0.0.1:{port}", servicer))
    yield [(address, servicer) for _, address, servicer in started]
    for server, _, _ in started:
        await server.stop(None)


async def test_registry_replicas_are_all_used(
    replicas: list[tuple[str, Counting]], tmp_path: Path
) -> None:
    registry = LocalRegistry(tmp_path / "registry.json")
    for address, _ in replicas:
        registry.register("health", address)
    assert registry.target("health") == "ipv4:" + ",".join(a for a, _ in replicas)
    upstream = Upstream("health", ChannelFactory(registry).channel("health"))
    stub = upstream.stub(health_pb2_grpc.HealthStub)
    calls = 0
    while any(servicer.calls == 0 for _, servicer in replicas) and calls < 200:
        await stub.Check(HealthCheckRequest())
        calls += 1
    assert all(servicer.calls > 0 for _, servicer in replicas)
    await upstream.close()


def test_unknown_service_is_named(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path / "registry.json")
    with pytest.raises(UnknownService, match="no service registry"):
        registry.target("inventory")
    registry.register("catalog", "127.0.0.1:1")
    with pytest.raises(UnknownService, match="inventory is not in the registry"):
        registry.target("inventory")


def test_kubernetes_dns_target_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    dns = KubernetesDns(namespace="shop", port=50051)
    assert dns.target("inventory") == "dns:///inventory.shop.svc.cluster.local:50051"
    monkeypatch.setenv("INVENTORY_TARGET", "dns:///inventory.elsewhere:443")
    assert dns.target("inventory") == "dns:///inventory.elsewhere:443"
