"""Acceptance 4 of the order saga: poison and forged messages on `payments.charge` and on
orders' payment-results queue (garbage bytes, a wrong type, a negative amount, an unknown
order, someone else's amount) are dead-lettered at once with their reason, nothing reaches the
payment provider, and the flow goes on: a real order placed after them is confirmed and the
audit balances. On a real broker, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message
from google.type import money_pb2

from emporium.orders.v1 import orders_service_pb2 as pb
from emporium.payments.v1 import payment_messages_pb2 as payments
from libs.messaging.envelope import DEAD_LETTER_REASON_HEADER, to_amqp
from services.payments.adapters.simulator import ledger_requests
from tests.saga.shop import running_shop

CHARGE = "payments.charge"
RESULTS = "orders.payment-results"
USD = money_pb2.Money(currency_code="USD", units=19)


async def poison(
    channel: aio_pika.abc.AbstractChannel,
    queue: str,
    tag: str,
    body: bytes | Message,
    message_type: str = "",
) -> None:
    raw = body if isinstance(body, bytes) else body.SerializeToString()
    kind = message_type or (body.DESCRIPTOR.full_name if isinstance(body, Message) else "")
    await channel.default_exchange.publish(
        to_amqp(body=raw, message_type=kind, message_id=tag), routing_key=queue, mandatory=True
    )


async def dead_letters(amqp_url: str, queue: str, count: int) -> dict[str, str]:
    """The first `count` dead letters of `queue`: message id -> the reason."""
    connection = await aio_pika.connect(amqp_url)
    found: dict[str, str] = {}
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=count)
        dlq = await channel.get_queue(f"{queue}.dlq")
        async with dlq.iterator() as messages:
            message: AbstractIncomingMessage
            async for message in messages:
                found[message.message_id or ""] = str(message.headers[DEAD_LETTER_REASON_HEADER])
                if len(found) == count:
                    return found
    finally:
        await connection.close()
    raise AssertionError("the DLQ iterator ended")


async def test_poison_is_dead_lettered_with_its_reason_and_the_flow_goes_on(
    database_url: str, amqp_url: str, tmp_path: Path
) -> None:
    async with running_shop(database_url, amqp_url, tmp_path, units=10) as shop:
        real = await shop.place(quantity=2)  # 2 x 9.50 USD
        forged_order = real.name
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        await poison(
            channel,
            CHARGE,
            "garbage",
            b"\xff\x00 not protobuf",
            "emporium.payments.v1.AuthorizePayment",
        )
        await poison(channel, CHARGE, "wrong-type", wrappers_pb2.StringValue(value="charge me"))
        await poison(
            channel,
            CHARGE,
            "negative",
            payments.AuthorizePayment(
                order="orders/nobody",
                customer="customers/eve",
                amount=money_pb2.Money(currency_code="USD", units=-50),
                payment_method="cards/visa",
            ),
        )
        await poison(
            channel,
            CHARGE,
            "unknown-order",
            payments.AuthorizePayment(
                order="orders/nobody",
                customer="customers/eve",
                amount=USD,
                payment_method="cards/visa",
            ),
        )
        await poison(
            channel,
            CHARGE,
            "wrong-amount",
            payments.AuthorizePayment(
                order=forged_order,
                customer="customers/ann",
                amount=money_pb2.Money(currency_code="USD", units=1),
                payment_method="cards/visa",
            ),
        )
        await poison(
            channel, RESULTS, "garbage", b"\xff\x00", "emporium.payments.v1.PaymentAuthorized"
        )
        await poison(channel, RESULTS, "wrong-type", payments.VoidPayment(order="orders/x"))
        await poison(
            channel,
            RESULTS,
            "invalid",
            payments.PaymentCaptured(payment="??", order="orders/x", amount=USD),
        )
        await poison(
            channel,
            RESULTS,
            "unknown-order",
            payments.PaymentAuthorized(
                payment="payments/nobody", order="orders/nobody", amount=USD
            ),
        )
        await connection.close()

        charge_dead = await asyncio.wait_for(dead_letters(amqp_url, CHARGE, 5), 20)
        results_dead = await asyncio.wait_for(dead_letters(amqp_url, RESULTS, 4), 20)
        # The real order, placed before the poison, still goes through.
        final = await asyncio.wait_for(shop.final_state(real.name), 20)
        report = await shop.settled_audit(within=20)

    assert final.state == pb.ORDER_STATE_CONFIRMED
    assert report.ok, report.text()
    assert "unreadable" in charge_dead["garbage"]
    assert "google.protobuf.StringValue" in charge_dead["wrong-type"]
    assert "amount must be greater than zero" in charge_dead["negative"]
    assert "ORDER_NOT_FOUND" in charge_dead["unknown-order"]
    assert "NOT_THE_ORDERS_PAYMENT" in charge_dead["wrong-amount"]
    assert "unreadable" in results_dead["garbage"]
    assert "emporium.payments.v1.VoidPayment" in results_dead["wrong-type"]
    assert "payment" in results_dead["invalid"]
    assert "ORDER_NOT_FOUND" in results_dead["unknown-order"]
    # Only the real order's payment ever reached the provider.
    assert set(ledger_requests(tmp_path / "ledger.sqlite3")) == {real.name.removeprefix("orders/")}
