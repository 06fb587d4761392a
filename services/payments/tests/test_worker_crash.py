"""Acceptance: kill -9 a payments worker with unacknowledged authorizations in flight. Every one
is redelivered to the surviving worker and each payment is authorized exactly once, as the payment
provider's ledger shows."""

from __future__ import annotations

import asyncio
from pathlib import Path

from google.type import money_pb2

from emporium.payments.v1 import payment_messages_pb2 as messages
from libs.messaging.broker import BrokerOptions
from libs.messaging.contract import fleet_contract
from libs.messaging.envelope import command
from libs.messaging.publisher import Publisher
from libs.messaging.topology import Topology
from libs.runtime.processes import start_service
from libs.testing.broker import EventTap
from services.payments.adapters.simulator import ledger_charges, ledger_requests

CHARGE_QUEUE = fleet_contract().topology("payments").work_queues[0].name

ORDERS = 60


async def test_killed_worker_loses_no_charge_and_doubles_none(
    amqp_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    env = {
        "PAYMENTS_AMQP_URL": amqp_url,
        "PAYMENTS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'payments.sqlite3'}",
        "PAYMENTS_PROVIDER_LEDGER": str(ledger),
        "PAYMENTS_PROVIDER_LATENCY_SECONDS": "0.4",
        # Spread over 0.4 to 1.2 s, a worker's charges settle one after another, so when the
        # first has settled the rest of its batch is still at the provider: with one latency
        # for all, a batch could settle and be acked at once, before the kill.
        "PAYMENTS_PROVIDER_LATENCY_JITTER_SECONDS": "0.8",
        "PAYMENTS_PREFETCH": "20",
        "PAYMENTS_CONCURRENCY": "20",
        "PAYMENTS_OUTBOX_POLL_SECONDS": "0.2",
        "PAYMENTS_CHECK_ORDERS": "false",  # the workers alone: every order is payable
    }
    doomed = await start_service("services.payments", env)
    survivor = await start_service("services.payments", env)
    try:
        async with EventTap(amqp_url, "payments.#") as tap:
            publisher = Publisher(BrokerOptions(amqp_url), Topology())
            await publisher.start()
            await asyncio.gather(
                *(
                    publisher.publish(
                        command(
                            CHARGE_QUEUE,
                            messages.AuthorizePayment(
                                order=f"orders/o{i}",
                                customer="customers/ada",
                                amount=money_pb2.Money(currency_code="EUR", units=5),
                                payment_method="cards/visa",
                            ),
                        )
                    )
                    for i in range(ORDERS)
                )
            )
            await publisher.close()
            # Both workers hold up to 20 unacked charges each; once the first settles, the
            # rest of its batch is charged at the provider or on the way there.
            await doomed.wait_for_log("payment settled")
            await doomed.kill()  # SIGKILL: no shutdown, no acks

            paid = {f"orders/o{i}" for i in range(ORDERS)}
            await asyncio.wait_for(tap.wait_for(lambda _: _orders_settled(tap) >= paid), 60)
    finally:
        await doomed.kill()
        await survivor.terminate()

    charges = ledger_charges(ledger)
    assert charges == {f"o{i}": 1 for i in range(ORDERS)}  # each authorized exactly once
    # The killed worker's authorizations were redelivered after its death, and the survivor
    # asked the provider for the outcome of their key before (instead of) asking again.
    assert ledger_requests(ledger, "outcome")


def _orders_settled(tap: EventTap) -> set[str]:
    return {event.order for event in tap.bodies(messages.PaymentAuthorized)}
