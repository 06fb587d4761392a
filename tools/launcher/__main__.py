"""`python -m tools.launcher`: start every service on embedded defaults and wait for Ctrl-C.

Each service runs as its own process, with its own SQLite file under var/, on a fixed loopback
port (override with <SERVICE>_PORT). The launcher waits until each logs `serving`, prints how to
call it, forwards SIGINT/SIGTERM for a graceful stop, and exits non-zero if a service dies.
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
from dataclasses import dataclass, field
from pathlib import Path

from libs.rpcclient.discovery import LocalRegistry
from libs.runtime.processes import ServiceProcess, start_service
from tools.certificates.__main__ import ensure as ensure_certificates

REPO = Path(__file__).resolve().parents[2]
CERTS = REPO / "var" / "certs"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    port: int
    env: dict[str, str] = field(default_factory=dict)


def services(var: Path) -> list[ServiceSpec]:
    return [
        ServiceSpec(
            "catalog",
            "services.catalog",
            50051,
            {
                "CATALOG_DATABASE_URL": f"sqlite+aiosqlite:///{var / 'catalog.sqlite3'}",
                "CATALOG_SEED_SAMPLE_PRODUCTS": "true",
            },
        ),
        ServiceSpec(
            "inventory",
            "services.inventory",
            50052,
            {"INVENTORY_DATABASE_URL": f"sqlite+aiosqlite:///{var / 'inventory.sqlite3'}"},
        ),
        # Started last: it finds catalog and inventory through the registry.
        ServiceSpec(
            "orders",
            "services.orders",
            50053,
            {
                "ORDERS_DATABASE_URL": f"sqlite+aiosqlite:///{var / 'orders.sqlite3'}",
                "ORDERS_REGISTRY_FILE": str(var / "registry.json"),
            },
        ),
    ]


def banner(running: dict[str, ServiceProcess]) -> str:
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
    lines += [
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
        "Stock a product, order it, and watch the order:",
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
        "",
        "Logs are JSON lines on stderr. Ctrl-C stops everything gracefully.",
    ]
    return "\n".join(lines)


async def run(var: Path) -> int:
    running: dict[str, ServiceProcess] = {}
    registry = LocalRegistry(var / "registry.json")
    registry.path.unlink(missing_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for spec in services(var):
            port = os.environ.get(f"{spec.name.upper()}_PORT", str(spec.port))
            print(f"starting {spec.name} on 127.0.0.1:{port} ...", flush=True)
            prefix = spec.name.upper()
            env = {
                f"{prefix}_PORT": port,
                f"{prefix}_SECURITY": "mtls",
                f"{prefix}_CERTS_DIR": str(CERTS),
                **spec.env,
            }
            running[spec.name] = await start_service(spec.module, env, echo_log=True)
            registry.register(spec.name, running[spec.name].address)
        print(banner(running), flush=True)
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
        print("stopping ...", flush=True)
        for process in running.values():
            with contextlib.suppress(ProcessLookupError):
                await process.terminate()


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
