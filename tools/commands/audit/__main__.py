"""tools/audit: prove that money and stock balance on a running Emporium.

  tools/audit [--settled] [--registry FILE] [--certs DIR] [--insecure] [--ledger FILE]

Reads every order (OrdersService.ListOrders), reservation and stock level
(InventoryService.ListReservations, ListStockLevels) and the payment provider's records
(the payments provider port; the simulator's ledger is PAYMENTS_PROVIDER_LEDGER), prints a
report and exits 1 on any violation (2 on a bad setting or an unreachable service). Without
--settled, what is still on its way (an order not terminal, a capture being made) is listed as
in flight; with it, that counts as a violation too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import grpc

from emporium.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from emporium.orders.v1 import orders_service_pb2_grpc as orders_grpc
from libs.rpcclient.channels import ChannelFactory
from libs.rpcclient.discovery import LocalRegistry, UnknownService
from libs.security.credentials import CertificateFiles
from services.payments.adapters.simulator import SimulatedProvider
from tools.commands.audit.reading import Sources, audit

REPO = Path(__file__).resolve().parents[3]


class AuditError(Exception):
    """Printed as `error: ...`; exit status 2."""


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tools/audit",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--settled", action="store_true", help="in-flight work is a violation")
    parser.add_argument(
        "--registry",
        type=Path,
        default=REPO / "var" / "registry.json",
        help="the launcher's discovery registry (default var/registry.json)",
    )
    parser.add_argument(
        "--certs",
        type=Path,
        default=REPO / "var" / "certs",
        help="the operator's mTLS certificate directory (default var/certs)",
    )
    parser.add_argument("--insecure", action="store_true", help="plaintext gRPC (no mTLS)")
    parser.add_argument(
        "--ledger",
        type=Path,
        default=Path(
            os.environ.get("PAYMENTS_PROVIDER_LEDGER", REPO / "var" / "payment-provider.sqlite3")
        ),
        help="the payment simulator's ledger (default PAYMENTS_PROVIDER_LEDGER, else"
        " var/payment-provider.sqlite3)",
    )
    return parser.parse_args(argv)


async def run(arguments: argparse.Namespace) -> int:
    if not arguments.registry.exists():
        raise AuditError(f"--registry {arguments.registry} does not exist; is tools/run running?")
    if not arguments.ledger.exists():
        raise AuditError(
            f"--ledger {arguments.ledger} does not exist (PAYMENTS_PROVIDER_LEDGER names the"
            " payment simulator's ledger)"
        )
    credentials = None
    if not arguments.insecure:
        operator = CertificateFiles.for_service(arguments.certs, "operator")
        if operator.missing():
            missing = ", ".join(str(p) for p in operator.missing())
            raise AuditError(f"--certs {arguments.certs}: missing {missing} (or pass --insecure)")
        credentials = operator.channel_credentials()
    factory = ChannelFactory(LocalRegistry(arguments.registry), credentials=credentials)
    try:
        orders_channel, inventory_channel = factory.channel("orders"), factory.channel("inventory")
    except UnknownService as error:
        raise AuditError(f"{error} (in {arguments.registry})") from error
    provider = SimulatedProvider(arguments.ledger)
    try:
        sources = Sources(
            orders_grpc.OrdersServiceStub(orders_channel),
            inventory_grpc.InventoryServiceStub(inventory_channel),
            provider,
        )
        print(f"auditing orders, inventory and the provider ledger {arguments.ledger}", flush=True)
        report = await audit(
            sources,
            settled=arguments.settled,
            progress=lambda line: print(f"  read {line}", flush=True),
        )
    except grpc.aio.AioRpcError as error:
        raise AuditError(f"{error.code().name}: {error.details()}") from error
    finally:
        provider.close()
        await orders_channel.close(None)
        await inventory_channel.close(None)
    print(report.text())
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    arguments = parse(sys.argv[1:] if argv is None else argv)
    try:
        return asyncio.run(run(arguments))
    except AuditError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
