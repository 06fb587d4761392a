"""The fleet, from one list of services (`services`: module, settings, order): as processes
(`start_fleet`: each started on loopback and registered in the local registry once it logs
`serving`, stopped edge first; `tools/run` runs it, and so do tests and benchmarks that need real
processes) or in this process (`in_process_fleet`: the same services and settings served on
port 0, for tests that reach into a service and benchmarks without process hops)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from libs.messaging.broker import DEFAULT_AMQP_URL, BrokerOptions, BrokerUnreachable, connect
from libs.messaging.local_broker import LocalBroker, LocalBrokerError
from libs.rpcclient.discovery import LocalRegistry
from libs.runtime.config import ServiceSettings
from libs.runtime.processes import ServiceProcess, StopHung, start_service
from libs.server.grpc_app import GrpcApp
from libs.testing.rpc import serving
from tools.commands.certs.authority import ensure
from tools.identity.accounts import init as init_identity

REPO = Path(__file__).resolve().parents[3]
CERTS = REPO / "var" / "certs"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    # The edge stops first, alone, so that no request comes in while the others stop.
    edge: bool = False


# Each service's Prometheus endpoint in local mode (override with <SERVICE>_METRICS_PORT).
METRICS_PORTS = {
    "catalog": 9101,
    "inventory": 9102,
    "orders": 9103,
    "payments": 9104,
    "notifications": 9105,
    "identity": 9106,
    "gateway": 9180,
}


def metrics_address(process: ServiceProcess) -> str | None:
    """host:port of the metrics endpoint the service logged (`metrics`), if it serves one."""
    for line in process.log_lines:
        if line.get("message") == "metrics":
            return f"127.0.0.1:{line['port']}"
    return None


def _sqlite(var: Path, name: str) -> str:
    return f"sqlite+aiosqlite:///{var / name}.sqlite3"


def services(var: Path) -> list[ServiceSpec]:
    identity = var / "identity"
    return [
        # First: the gateway and (when they verify tokens) the services read its keys.
        ServiceSpec(
            "identity",
            "services.identity",
            50056,
            {
                "IDENTITY_DATABASE_URL": _sqlite(var, "identity"),
                "IDENTITY_KEYS_DIR": str(identity / "keys"),
                "IDENTITY_CLIENTS_FILE": str(identity / "clients.json"),
                "IDENTITY_USERS_FILE": str(identity / "users.json"),
            },
        ),
        ServiceSpec(
            "catalog",
            "services.catalog",
            50051,
            {
                "CATALOG_DATABASE_URL": _sqlite(var, "catalog"),
                "CATALOG_SEED_SAMPLE_PRODUCTS": "true",
            },
        ),
        ServiceSpec(
            "inventory",
            "services.inventory",
            50052,
            {"INVENTORY_DATABASE_URL": _sqlite(var, "inventory")},
        ),
        # It finds catalog and inventory through the registry.
        ServiceSpec(
            "orders",
            "services.orders",
            50053,
            {
                "ORDERS_DATABASE_URL": _sqlite(var, "orders"),
                "ORDERS_REGISTRY_FILE": str(var / "registry.json"),
            },
        ),
        ServiceSpec(
            "payments",
            "services.payments",
            50054,
            {
                "PAYMENTS_DATABASE_URL": _sqlite(var, "payments"),
                "PAYMENTS_PROVIDER_LEDGER": str(var / "payment-provider.sqlite3"),
                # It asks orders (through the registry) whether an order may be paid.
                "PAYMENTS_REGISTRY_FILE": str(var / "registry.json"),
            },
        ),
        ServiceSpec(
            "notifications",
            "services.notifications",
            50055,
            {
                "NOTIFICATIONS_DATABASE_URL": _sqlite(var, "notifications"),
                "NOTIFICATIONS_MAILDIR": str(var / "mail"),
            },
        ),
        # Last: the HTTP front door; it finds every service through the registry.
        ServiceSpec(
            "gateway",
            "services.gateway",
            8080,
            edge=True,
            env={
                "GATEWAY_REGISTRY_FILE": str(var / "registry.json"),
                **(
                    {"GATEWAY_REDIS_URL": redis}
                    if (redis := os.environ.get("EMPORIUM_REDIS_URL"))
                    else {}
                ),
            },
        ),
    ]


async def broker_url(var: Path, stack: contextlib.AsyncExitStack) -> str:
    """EMPORIUM_AMQP_URL, else the local broker if it answers, else a private node."""
    configured = os.environ.get("EMPORIUM_AMQP_URL")
    candidate = configured or DEFAULT_AMQP_URL
    try:
        connection = await connect(BrokerOptions(candidate, connect_timeout=3))
        await connection.close()
        print(f"RabbitMQ: using {BrokerOptions(candidate).safe_url}", flush=True)
        return candidate
    except BrokerUnreachable as error:
        if configured:
            raise RuntimeError(f"EMPORIUM_AMQP_URL: {error}") from None
    print("RabbitMQ: none on 127.0.0.1:5672; starting a private node ...", flush=True)
    node = LocalBroker(var / "rabbitmq")
    try:
        await node.start()
    except LocalBrokerError as error:
        raise RuntimeError(str(error)) from None
    stack.push_async_callback(node.stop)
    print(f"RabbitMQ: private node {node.node} on {node.url} (data in {node.directory})")
    return node.url


async def start_fleet(
    var: Path,
    amqp_url: str,
    registry: LocalRegistry,
    *,
    certs: Path = CERTS,
    security: str = "mtls",
    free_ports: bool = False,
    env_overrides: Mapping[str, Mapping[str, str]] | None = None,
    echo_log: bool = True,
    only: Collection[str] | None = None,
) -> dict[str, ServiceProcess]:
    """Starts every service in order (each registered once serving), or those named in `only`;
    the caller stops them (`stop_fleet`). Ports: free ones with `free_ports`, else
    <SERVICE>_PORT, else the spec's. `env_overrides` adds settings per service (the gateway
    bench turns the cache off)."""
    specs = [spec for spec in services(var) if only is None or spec.name in only]
    if unknown := set(only or ()) - {spec.name for spec in services(var)}:
        raise ValueError(f"no such service(s) in the fleet: {', '.join(sorted(unknown))}")
    if any(spec.name == "identity" for spec in specs):
        written = init_identity(var / "identity")
        if written:
            print(f"identity secrets created in {var / 'identity'}: {', '.join(written)}")
    running: dict[str, ServiceProcess] = {}
    try:
        for spec in specs:
            port = (
                "0" if free_ports else os.environ.get(f"{spec.name.upper()}_PORT", str(spec.port))
            )
            print(f"starting {spec.name} on 127.0.0.1:{port} ...", flush=True)
            prefix = spec.name.upper()
            metrics_port = (
                "0"
                if free_ports
                else os.environ.get(f"{prefix}_METRICS_PORT", str(METRICS_PORTS.get(spec.name, 0)))
            )
            env = {
                f"{prefix}_PORT": port,
                f"{prefix}_METRICS_PORT": metrics_port,
                f"{prefix}_SECURITY": security,
                f"{prefix}_CERTS_DIR": str(certs),
                "EMPORIUM_AMQP_URL": amqp_url,
                **spec.env,
                **(env_overrides or {}).get(spec.name, {}),
            }
            if "identity" in running:  # every service verifies tokens with identity's keys
                env["EMPORIUM_IDENTITY_TARGET"] = running["identity"].address
            running[spec.name] = await start_service(spec.module, env, echo_log=echo_log)
            registry.register(spec.name, running[spec.name].address)
    except BaseException:
        await stop_fleet(running, edge_of(services(var)))
        raise
    return running


class Stoppable(Protocol):
    async def terminate(self, within: float = ...) -> int: ...


# Beyond a service's grace period (<SERVICE>_GRACE_SECONDS, 10 s), time to exit before a kill.
EXIT_MARGIN_SECONDS = 5.0


def grace_of(name: str) -> float:
    prefix = name.upper()
    grace = os.environ.get(f"{prefix}_GRACE_SECONDS") or os.environ.get("EMPORIUM_GRACE_SECONDS")
    try:
        return float(grace or 10.0) + EXIT_MARGIN_SECONDS
    except ValueError:
        raise RuntimeError(f"{prefix}_GRACE_SECONDS: not a number ({grace!r})") from None


def edge_of(specs: list[ServiceSpec]) -> frozenset[str]:
    return frozenset(spec.name for spec in specs if spec.edge)


async def stop_fleet(running: Mapping[str, Stoppable], edge: frozenset[str]) -> None:
    """Stops the edge (the gateway) first, then every other service at once; each gets its
    grace period (SIGTERM), then is killed."""

    async def stop(name: str, process: Stoppable) -> None:
        try:
            await process.terminate(within=grace_of(name))
        except ProcessLookupError:
            pass
        except StopHung as hung:  # killed; the printout says where it waited
            print(f"{name} did not stop within its grace period: {hung}", file=sys.stderr)

    tiers = [
        {n: p for n, p in running.items() if n in edge},
        {n: p for n, p in running.items() if n not in edge},
    ]
    for tier in tiers:
        if tier:
            print(f"stopping {', '.join(tier)} ...", flush=True)
            await asyncio.gather(*(stop(name, process) for name, process in tier.items()))


@contextlib.asynccontextmanager
async def running_processes(
    var: Path,
    amqp_url: str,
    *,
    only: Collection[str] | None = None,
    env_overrides: Mapping[str, Mapping[str, str]] | None = None,
    echo_log: bool = False,
) -> AsyncIterator[dict[str, ServiceProcess]]:
    """The fleet as processes for a test: development certificates in var/certs, the registry in
    var/registry.json, free ports; stopped (`stop_fleet`) on leaving, however the test ends."""
    certs = var / "certs"
    ensure(certs)
    running = await start_fleet(
        var,
        amqp_url,
        LocalRegistry(var / "registry.json"),
        certs=certs,
        free_ports=True,
        env_overrides=env_overrides,
        echo_log=echo_log,
        only=only,
    )
    try:
        yield running
    finally:
        await stop_fleet(running, edge_of(services(var)))


@dataclass
class InProcessFleet:
    registry: LocalRegistry
    apps: dict[str, GrpcApp]
    channels: dict[str, grpc.aio.Channel]  # plaintext, to each app


def settings_class_of(spec: ServiceSpec) -> type[ServiceSettings]:
    """`services.<name>.config.<Name>Settings`."""
    found: type[ServiceSettings] = getattr(
        importlib.import_module(f"{spec.module}.config"), f"{spec.name.title()}Settings"
    )
    return found


def settings_of(spec: ServiceSpec, overrides: Mapping[str, Any]) -> ServiceSettings:
    """The spec's environment as the service's settings (`CATALOG_DATABASE_URL` ->
    `database_url`), then `overrides` by field name; an unknown name is an error."""
    settings_class = settings_class_of(spec)
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    values: dict[str, Any] = {
        key.removeprefix(prefix).lower(): value
        for key, value in spec.env.items()
        if key.startswith(prefix)
    }
    values.update(overrides)
    if unknown := set(values) - set(settings_class.model_fields):
        raise ValueError(
            f"{settings_class.__name__} has no setting(s) {', '.join(sorted(unknown))}"
        )
    return settings_class(**values)


@contextlib.asynccontextmanager
async def in_process_fleet(
    var: Path,
    amqp_url: str,
    *,
    only: Collection[str],
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> AsyncIterator[InProcessFleet]:
    """Serves the services named in `only` in this process, in the fleet's order, each on port 0
    and registered in var/registry.json; `settings` overrides per service by field name. With
    identity among them, the others verify tokens with its keys (as in tools/run). The gateway
    is no GrpcApp: its tests serve it themselves (services/gateway/tests/fleet.py).

    The services share this process's one event loop, so how late it runs is everyone's delay
    (the test's own work included), not one server's queue: the loop-delay overload rule is off
    here (`overload_queue_target_ms` 0) unless `settings` turns it on. The other rules hold."""
    specs = [spec for spec in services(var) if spec.name in only and not spec.edge]
    if unknown := set(only) - {spec.name for spec in specs}:
        raise ValueError(f"not an in-process service of the fleet: {', '.join(sorted(unknown))}")
    fleet = InProcessFleet(LocalRegistry(var / "registry.json"), {}, {})
    if "identity" in only:
        init_identity(var / "identity")
    async with contextlib.AsyncExitStack() as stack:
        for spec in specs:
            fields = settings_class_of(spec).model_fields
            overrides: dict[str, Any] = {"overload_queue_target_ms": 0}
            if "amqp_url" in fields:
                overrides["amqp_url"] = amqp_url
            if "identity" in fleet.apps:
                overrides["identity_target"] = fleet.apps["identity"].address
            overrides.update((settings or {}).get(spec.name, {}))
            build = importlib.import_module(f"{spec.module}.app").build
            app: GrpcApp = await build(settings_of(spec, overrides))
            fleet.channels[spec.name] = await stack.enter_async_context(serving(app))
            fleet.apps[spec.name] = app
            fleet.registry.register(spec.name, app.address)
        yield fleet
