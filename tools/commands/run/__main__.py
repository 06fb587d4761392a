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
from pathlib import Path

from libs.messaging.broker import BrokerOptions
from libs.rpcclient.discovery import LocalRegistry
from libs.runtime.processes import ServiceProcess
from tools.commands.certs.authority import ensure as ensure_certificates
from tools.commands.run.fleet import (
    CERTS,
    REPO,
    broker_url,
    edge_of,
    metrics_address,
    services,
    start_fleet,
    stop_fleet,
)
from tools.commands.run.walkthrough import curl_walkthrough
from tools.monitoring.prometheus import LocalPrometheus, LocalPrometheusError


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
