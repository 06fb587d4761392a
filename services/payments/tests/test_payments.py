"""The payments worker and PaymentsService in-process, on a real broker (fresh vhost) and on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import grpc
import pytest
from google.type import money_pb2

from emporium.payments.v1 import payment_messages_pb2 as messages
from emporium.payments.v1 import payments_service_pb2 as pb
from emporium.payments.v1 import payments_service_pb2_grpc as pb_grpc
from libs.messaging.broker import BrokerOptions
from libs.messaging.envelope import Outgoing, command, decode
from libs.messaging.publisher import Publisher
from libs.messaging.topology import Topology
from libs.testing.broker import EventTap
from libs.testing.rpc import rich_error, serving
from services.payments.adapters.charge_queue import CHARGE_QUEUE
from services.payments.adapters.simulator import ledger_charges, ledger_requests
from services.payments.app import build
from services.payments.config import PaymentsSettings

EUR_12 = money_pb2.Money(currency_code="EUR", units=12, nanos=500_000_000)


@dataclass
class Worker:
    stub: pb_grpc.PaymentsServiceAsyncStub
    publisher: Publisher
    tap: EventTap
    ledger: Path


@asynccontextmanager
async def running(
    database_url: str, amqp_url: str, ledger: Path, transient_failure_rate: float = 0.0
) -> AsyncIterator[Worker]:
    settings = PaymentsSettings(
        database_url=database_url,
        amqp_url=amqp_url,
        provider_ledger=ledger,
        provider_latency_seconds=0.0,
        provider_transient_failure_rate=transient_failure_rate,
        max_deliveries=3,
        retry_delays_seconds=(0.05,),
        outbox_poll_seconds=0.2,
        grace_seconds=2,
    )
    publisher = Publisher(BrokerOptions(amqp_url), Topology())
    async with EventTap(amqp_url, "payments.#") as tap, serving(await build(settings)) as channel:
        await publisher.start()
        try:
            yield Worker(pb_grpc.PaymentsServiceStub(channel), publisher, tap, ledger)
        finally:
            await publisher.close()


@pytest.fixture
async def worker(database_url: str, amqp_url: str, tmp_path: Path) -> AsyncIterator[Worker]:
    async with running(database_url, amqp_url, tmp_path / "ledger.sqlite3") as started:
        yield started


def charge(order: str, card: str = "cards/visa", message_id: str | None = None) -> Outgoing:
    outgoing = command(
        CHARGE_QUEUE,
        messages.ChargePayment(
            order=f"orders/{order}", customer="customers/ada", amount=EUR_12, payment_method=card
        ),
    )
    if message_id is None:
        return outgoing
    return Outgoing(outgoing.exchange, outgoing.routing_key, outgoing.body, message_id)


def outcomes(tap: EventTap) -> dict[str, str]:
    found = {e.order: "succeeded" for e in tap.bodies(messages.PaymentSucceeded)}
    found |= {e.order: "failed" for e in tap.bodies(messages.PaymentFailed)}
    return found


async def test_charges_each_order_once_and_publishes_the_outcome(worker: Worker) -> None:
    await worker.publisher.publish(charge("o1", message_id="m-1"))
    await worker.publisher.publish(charge("o1", message_id="m-1"))  # a duplicate delivery
    await worker.publisher.publish(charge("o1", message_id="m-1b"))  # asked again
    await worker.publisher.publish(charge("o2", card="cards/declined"))
    await worker.publisher.publish(charge("o3"))
    await asyncio.wait_for(worker.tap.wait_for(lambda events: len(events) >= 3), 10)

    assert outcomes(worker.tap) == {
        "orders/o1": "succeeded",
        "orders/o2": "failed",
        "orders/o3": "succeeded",
    }
    assert ledger_charges(worker.ledger) == {"o1": 1, "o2": 1, "o3": 1}
    paid = await worker.stub.GetPayment(pb.GetPaymentRequest(name="payments/o1"))
    assert paid.state == pb.PAYMENT_STATE_SUCCEEDED
    assert paid.amount == EUR_12
    assert paid.provider_reference.startswith("sim_")
    declined = await worker.stub.GetPayment(pb.GetPaymentRequest(name="payments/o2"))
    assert (declined.state, declined.decline_reason) == (pb.PAYMENT_STATE_FAILED, "card declined")


async def test_lists_page_by_page_and_refunds(worker: Worker) -> None:
    for order in ("a", "b", "c"):
        await worker.publisher.publish(charge(order))
    await asyncio.wait_for(worker.tap.wait_for(lambda events: len(events) == 3), 10)

    first = await worker.stub.ListPayments(pb.ListPaymentsRequest(page_size=2))
    second = await worker.stub.ListPayments(
        pb.ListPaymentsRequest(page_size=2, page_token=first.next_page_token)
    )
    names = [p.name for p in [*first.payments, *second.payments]]
    assert sorted(names) == ["payments/a", "payments/b", "payments/c"]
    assert second.next_page_token == ""

    refunded = await worker.stub.RefundPayment(pb.RefundPaymentRequest(name="payments/a"))
    again = await worker.stub.RefundPayment(pb.RefundPaymentRequest(name="payments/a"))
    assert refunded.state == again.state == pb.PAYMENT_STATE_REFUNDED


async def test_bad_requests_get_clear_statuses(worker: Worker) -> None:
    await worker.publisher.publish(charge("declined", card="cards/declined"))
    await asyncio.wait_for(worker.tap.wait_for(lambda events: len(events) == 1), 10)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await worker.stub.RefundPayment(pb.RefundPaymentRequest(name="payments/declined"))
    error = rich_error(refused.value)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.info is not None and error.info.reason == "PAYMENT_NOT_REFUNDABLE"

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await worker.stub.GetPayment(pb.GetPaymentRequest(name="payments/nope"))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await worker.stub.GetPayment(pb.GetPaymentRequest(name="orders/x"))
    assert rich_error(malformed.value).fields == ["name"]


async def test_provider_outage_retries_then_dead_letters(
    amqp_url: str, tmp_path: Path, database_url: str
) -> None:
    async with running(database_url, amqp_url, tmp_path / "ledger.sqlite3", 1.0) as worker:
        await worker.publisher.publish(charge("unlucky"))
        # Not polling: the request never reaches the ledger; the payment stays PENDING
        # until the message is dead-lettered after max_deliveries (3) attempts.
        dead = await asyncio.wait_for(_first_dead_letter(amqp_url), 10)
        assert dead.order == "orders/unlucky"
        assert ledger_requests(worker.ledger) == {}
        pending = await worker.stub.GetPayment(pb.GetPaymentRequest(name="payments/unlucky"))
        assert pending.state == pb.PAYMENT_STATE_PENDING


async def _first_dead_letter(amqp_url: str) -> messages.ChargePayment:
    """Waits for the first message in the charge queue's DLQ (and leaves it there)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(f"{CHARGE_QUEUE}.dlq")
        async with queue.iterator() as dead_letters:
            async for message in dead_letters:
                await message.reject(requeue=True)
                return decode(message, messages.ChargePayment)
        raise AssertionError("the DLQ iterator ended")
    finally:
        await connection.close()
