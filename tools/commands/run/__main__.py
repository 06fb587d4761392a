"""`python -m tools.commands.run`: start every service on embedded defaults and wait for Ctrl-C.

Each service runs as its own process, with its own SQLite file under var/, on a fixed loopback
port (override with <SERVICE>_PORT). RabbitMQ is EMPORIUM_AMQP_URL if set, else the broker on
127.0.0.1:5672 if one answers, else a private node started for this run under var/rabbitmq.
The launcher waits until each service logs `serving`, prints how to call it, forwards
SIGINT/SIGTERM for a graceful stop, and exits non-zero if a service dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from libs.messaging.broker import DEFAULT_AMQP_URL, BrokerOptions, BrokerUnreachable, connect
from libs.messaging.local_broker import LocalBroker, LocalBrokerError
from libs.rpcclient.discovery import LocalRegistry
from libs.runtime.processes import ServiceProcess, start_service
from tools.commands.certs.__main__ import ensure as ensure_certificates
from tools.identity.__main__ import init as init_identity
from tools.monitoring.prometheus import LocalPrometheus, LocalPrometheusError

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


_JSON_FIELD = "python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])'"


def curl_walkthrough(gateway: str, secrets: Path) -> list[str]:
    """Shell lines a new user can paste: stock as staff, sign up, page through products,
    order with an Idempotency-Key, watch it over SSE until CONFIRMED, read it with its products.
    tests/e2e/test_front_door_curl.py runs exactly these lines."""
    json_header = "-H 'Content-Type: application/json'"
    return [
        f"G=http://{gateway}",
        f'STAFF=$(curl -s $G/v1/token {json_header} -d "{{\\"grant_type\\": \\"password\\", '
        f'\\"username\\": \\"staff\\", \\"password\\": \\"$(cat {secrets}/staff)\\"}}" '
        f"| {_JSON_FIELD} access_token)",
        f'curl -s $G/v1/inventory/items:adjust -H "Authorization: Bearer $STAFF" {json_header} '
        '-d \'[{"item": "inventory/items/mug-01", "delta": 10}]\'; echo',
        f'curl -s "$G/v1/users?user_id=ann" {json_header} '
        '-d \'{"password": "correct horse battery"}\'; echo',
        f'TOKEN=$(curl -s $G/v1/token {json_header} -d \'{{"grant_type": "password", '
        f'"username": "ann", "password": "correct horse battery"}}\' | {_JSON_FIELD} access_token)',
        'curl -si "$G/v1/products?page_size=2" | grep -i \'^link:\'    # rel="next": the next page',
        f'ORDER=$(curl -s $G/v1/orders -H "Authorization: Bearer $TOKEN" '
        '-H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" '
        f'{json_header} -d \'{{"customer": "customers/ann", "lines": [{{"product": '
        f'"products/mug-01", "quantity": 2}}]}}\' | {_JSON_FIELD} name)',
        'curl -sN "$G/v1/$ORDER:watch" -H "Authorization: Bearer $TOKEN"    '
        "# Server-Sent Events until CONFIRMED",
        'curl -s "$G/v1/$ORDER?view=FULL" -H "Authorization: Bearer $TOKEN"; echo    '
        "# with each line's productDetails",
    ]


def banner(running: dict[str, ServiceProcess], amqp_url: str, var: Path) -> str:
    certs = CERTS.relative_to(REPO)
    grpcurl = (
        f"{REPO / '.venv/bin/grpcurl'} -cacert {certs}/ca.pem "
        f"-cert {certs}/operator.pem -key {certs}/operator-key.pem"
    )

    def call(service: str, method: str, body: object | None = None) -> str:
        data = f"-d '{json.dumps(body)}' " if body is not None else ""
        return f"  {grpcurl} {data}{running[service].address} {method}"

    lines = ["", "Emporium is running:"]
    lines += [f"  {name:<14} {process.address}" for name, process in running.items()]
    gateway = running["gateway"].address
    lines += [
        "",
        f"The front door is http://{gateway} (OpenAPI: /openapi.json, docs: /docs, GraphQL: "
        "/graphql). As a new customer, with curl:",
        *(f"  {line}" for line in curl_walkthrough(gateway, var / "identity" / "secrets")),
        "",
        "Try it (mTLS with the operator's development certificate; grpcurl finds the API",
        "through server reflection):",
        f"  {grpcurl} {running['catalog'].address} list",
        call(
            "catalog",
            "emporium.catalog.v1.CatalogService/ListProducts",
            {"page_size": 3, "order_by": "price desc"},
        ),
        call("catalog", "emporium.catalog.v1.CatalogService/WatchProducts", {"after_revision": 0}),
        "",
        "Stock a product, order it, and watch the order until payment confirms it:",
        call(
            "inventory",
            "emporium.inventory.v1.InventoryService/AdjustStock",
            {"item": "inventory/items/mug-01", "delta": 10},
        ),
        call(
            "orders",
            "emporium.orders.v1.OrdersService/CreateOrder",
            {
                "order": {
                    "customer": "customers/ann",
                    "lines": [{"product": "products/mug-01", "quantity": 2}],
                },
                "request_id": str(uuid.uuid4()),
            },
        ),
        call(
            "orders",
            "emporium.orders.v1.OrdersService/WatchOrder",
            {"name": "orders/<the id CreateOrder returned>"},
        ),
        '  (PENDING_PAYMENT, AUTHORIZED, then CONFIRMED; with "payment_method": "cards/declined"',
        "  in the order, CANCELLED. The customer's notifications land in "
        f"{(var / 'mail' / 'new').relative_to(REPO) if var.is_relative_to(REPO) else var}.)",
        call("payments", "emporium.payments.v1.PaymentsService/ListPayments", {}),
        "",
        "Metrics (Prometheus text; EMPORIUM_OBSERVE=1 also runs a local Prometheus):",
        *(
            f"  {name:<14} http://{address}/metrics"
            for name, process in running.items()
            if (address := metrics_address(process))
        ),
        "",
        f"RabbitMQ: {BrokerOptions(amqp_url).safe_url}",
        "  tools/broker queues             depth and consumers of every queue and stream",
        "  tools/audit                     do money and stock balance? (exit 1 if not)",
        "  tools/broker replay orders.events --from first",
        "",
        "Logs are JSON lines on stderr. Ctrl-C stops everything gracefully.",
    ]
    return "\n".join(lines)


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
) -> dict[str, ServiceProcess]:
    """Starts every service in order (each registered once serving); the caller terminates
    them. Ports: free ones with `free_ports`, else <SERVICE>_PORT, else the spec's.
    `env_overrides` adds settings per service (the gateway bench turns the cache off)."""
    written = init_identity(var / "identity")
    if written:
        print(f"identity secrets created in {var / 'identity'}: {', '.join(written)}")
    running: dict[str, ServiceProcess] = {}
    try:
        for spec in services(var):
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
    async def terminate(self) -> int: ...

    async def kill(self) -> None: ...


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
            await asyncio.wait_for(process.terminate(), grace_of(name))
        except ProcessLookupError:
            pass
        except TimeoutError:
            print(f"{name} did not stop within its grace period; killing it", file=sys.stderr)
            await process.kill()

    tiers = [
        {n: p for n, p in running.items() if n in edge},
        {n: p for n, p in running.items() if n not in edge},
    ]
    for tier in tiers:
        if tier:
            print(f"stopping {', '.join(tier)} ...", flush=True)
            await asyncio.gather(*(stop(name, process) for name, process in tier.items()))


async def observe(
    running: dict[str, ServiceProcess], var: Path, stack: contextlib.AsyncExitStack
) -> None:
    """Starts a local Prometheus scraping every service (and evaluating the alerting rules)."""
    targets = {n: a for n, p in running.items() if (a := metrics_address(p)) is not None}
    port = int(os.environ.get("EMPORIUM_PROMETHEUS_PORT", "9090"))
    print(f"starting Prometheus on 127.0.0.1:{port} ...", flush=True)
    prometheus = LocalPrometheus(var / "prometheus", targets, port)
    try:
        await prometheus.start()
    except LocalPrometheusError as error:
        raise RuntimeError(f"EMPORIUM_OBSERVE: {error}") from None
    stack.push_async_callback(prometheus.stop)
    print(
        f"Prometheus: {prometheus.url} (graphs: /graph, alerts: /alerts, targets: /targets; "
        f"data in {prometheus.directory})",
        flush=True,
    )


async def run(var: Path) -> int:
    async with contextlib.AsyncExitStack() as stack:
        return await _run(var, stack)


async def _run(var: Path, stack: contextlib.AsyncExitStack) -> int:
    running: dict[str, ServiceProcess] = {}
    registry = LocalRegistry(var / "registry.json")
    registry.path.unlink(missing_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        amqp_url = await broker_url(var, stack)
        running.update(await start_fleet(var, amqp_url, registry))
        print(banner(running, amqp_url, var), flush=True)
        if os.environ.get("EMPORIUM_OBSERVE") == "1":
            await observe(running, var, stack)
        exited = [asyncio.ensure_future(p.process.wait()) for p in running.values()]
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopping, *exited], return_when=asyncio.FIRST_COMPLETED)
        if stopping not in done:
            dead = [name for name, p in running.items() if p.process.returncode is not None]
            print(f"service(s) exited unexpectedly: {', '.join(dead)}", file=sys.stderr)
            return 1
        return 0
    except RuntimeError as error:
        print(f"could not start: {error}", file=sys.stderr)
        return 1
    finally:
        await stop_fleet(running, edge_of(services(var)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--var",
        type=Path,
        default=REPO / "var",
        help="where the services keep their embedded databases",
    )
    args = parser.parse_args()
    args.var.mkdir(parents=True, exist_ok=True)
    written = ensure_certificates(CERTS)
    if written:
        print(f"development certificates created in {CERTS}: {', '.join(written)}")
    raise SystemExit(asyncio.run(run(args.var)))


if __name__ == "__main__":
    main()
