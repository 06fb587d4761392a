"""The payments worker and PaymentsService in-process, on a real broker (fresh vhost) and on
SQLite and PostgreSQL: authorize, capture, void and refund, commands arriving out of order,
bad commands dead-lettered without touching the provider, and the reconciler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import grpc
import pytest
from google.protobuf.message import Message
from google.type import money_pb2

from emporium.payments.v1 import payment_messages_pb2 as messages
from emporium.payments.v1 import payments_service_pb2 as pb
from emporium.payments.v1 import payments_service_pb2_grpc as pb_grpc
from libs.messaging.broker import BrokerOptions
from libs.messaging.contract import fleet_contract
from libs.messaging.envelope import DEAD_LETTER_REASON_HEADER, Outgoing, command
from libs.messaging.publisher import Publisher
from libs.messaging.topology import Topology
from libs.testing.broker import EventTap
from libs.testing.rpc import rich_error, serving
from services.payments.adapters.simulator import SimulatedProvider, ledger_charges, ledger_requests
from services.payments.app import build
from services.payments.config import PaymentsSettings
from services.payments.domain.model import ProviderStatus

CHARGE_QUEUE = fleet_contract().topology("payments").work_queues[0].name

EUR_12 = money_pb2.Money(currency_code="EUR", units=12, nanos=500_000_000)


@dataclass
class Worker:
    stub: pb_grpc.PaymentsServiceAsyncStub
    publisher: Publisher
    tap: EventTap
    ledger: Path

    async def send(self, body: Message, message_id: str | None = None) -> None:
        outgoing = command(CHARGE_QUEUE, body)
        if message_id is not None:
            outgoing = Outgoing(outgoing.exchange, outgoing.routing_key, body, message_id)
        await self.publisher.publish(outgoing)

    async def events_of(self, order: str, count: int = 1) -> list[str]:
        """The names of the first `count` events about `order`, once they arrived."""
        await asyncio.wait_for(self.tap.wait_for(lambda _: len(self._of(order)) >= count), 10)
        return self._of(order)

    def _of(self, order: str) -> list[str]:
        found = []
        for message in self.tap.events:
            body = _EVENTS[message.type or ""]()
            body.ParseFromString(message.body)
            if getattr(body, "order", "") == f"orders/{order}":
                found.append(type(body).__name__)
        return found


_EVENTS: dict[str, type[Message]] = {
    m.DESCRIPTOR.full_name: m
    for m in (
        messages.PaymentAuthorized,
        messages.PaymentDeclined,
        messages.PaymentCaptured,
        messages.PaymentVoided,
        messages.PaymentRefunded,
    )
}


@asynccontextmanager
async def running(
    database_url: str,
    amqp_url: str,
    ledger: Path,
    transient_failure_rate: float = 0.0,
    reconcile_after_seconds: float = 120.0,
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
        reconcile_after_seconds=reconcile_after_seconds,
        reconcile_every_seconds=0.2,
        check_orders=False,  # the worker alone: every order is payable
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


def authorize(order: str, card: str = "cards/visa", amount: money_pb2.Money = EUR_12) -> Message:
    return messages.AuthorizePayment(
        order=f"orders/{order}", customer="customers/ada", amount=amount, payment_method=card
    )


def void(order: str) -> Message:
    return messages.VoidPayment(
        order=f"orders/{order}", customer="customers/ada", amount=EUR_12, reason="cancelled"
    )


async def provider_record(ledger: Path, key: str) -> ProviderStatus | None:
    provider = SimulatedProvider(ledger)
    try:
        record = await provider.outcome(key)
    finally:
        provider.close()
    return None if record is None else record.status


async def test_authorizes_each_order_once_then_captures(worker: Worker) -> None:
    await worker.send(authorize("o1"), message_id="m-1")
    await worker.send(authorize("o1"), message_id="m-1")  # a duplicate delivery
    await worker.send(authorize("o2", card="cards/declined"))
    assert await worker.events_of("o1") == ["PaymentAuthorized"]
    assert await worker.events_of("o2") == ["PaymentDeclined"]
    authorized = await worker.stub.GetPayment(pb.GetPaymentRequest(name="payments/o1"))
    assert authorized.state == pb.PAYMENT_STATE_AUTHORIZED
    assert authorized.provider_reference.startswith("sim_")

    await worker.send(messages.CapturePayment(order="orders/o1"))
    assert (await worker.events_of("o1", 2))[1] == "PaymentCaptured"
    captured = await worker.stub.GetPayment(pb.GetPaymentRequest(name="payments/o1"))
    assert (captured.state, captured.amount) == (pb.PAYMENT_STATE_SUCCEEDED, EUR_12)
    declined = await worker.stub.GetPayment(pb.GetPaymentRequest(name="payments/o2"))
    assert (declined.state, declined.decline_reason) == (pb.PAYMENT_STATE_FAILED, "card declined")
    assert ledger_charges(worker.ledger) == {"o1": 1, "o2": 1}
    assert await provider_record(worker.ledger, "o1") is ProviderStatus.CAPTURED


async def test_a_void_before_the_authorize_keeps_it_from_the_provider(worker: Worker) -> None:
    await worker.send(void("early"))
    assert await worker.events_of("early") == ["PaymentVoided"]
    await worker.send(authorize("early"))
    # The late authorize answers with the payment's state instead of reaching the provider.
    assert await worker.events_of("early", 2) == ["PaymentVoided", "PaymentVoided"]
    voided = await worker.stub.GetPayment(pb.GetPaymentRequest(name="payments/early"))
    assert voided.state == pb.PAYMENT_STATE_VOIDED
    assert ledger_requests(worker.ledger) == {}


async def test_voids_an_authorization_and_refunds_a_capture(worker: Worker) -> None:
    await worker.send(authorize("held"))
    await worker.send(authorize("paid"))
    await worker.events_of("held")
    await worker.events_of("paid")
    await worker.send(void("held"))
    await worker.send(messages.CapturePayment(order="orders/paid"))
    await worker.events_of("paid", 2)
    await worker.send(void("paid"))  # a captured payment is refunded

    assert await worker.events_of("held", 2) == ["PaymentAuthorized", "PaymentVoided"]
    assert await worker.events_of("paid", 3) == [
        "PaymentAuthorized",
        "PaymentCaptured",
        "PaymentRefunded",
    ]
    assert await provider_record(worker.ledger, "held") is ProviderStatus.VOIDED
    assert await provider_record(worker.ledger, "paid") is ProviderStatus.REFUNDED
    refunded = await worker.stub.GetPayment(pb.GetPaymentRequest(name="payments/paid"))
    assert (refunded.state, refunded.void_reason) == (pb.PAYMENT_STATE_REFUNDED, "cancelled")


async def test_bad_commands_are_dead_lettered_without_reaching_the_provider(
    worker: Worker, amqp_url: str
) -> None:
    minus_50 = money_pb2.Money(currency_code="USD", units=-50)
    await worker.send(authorize("negative", amount=minus_50))
    await worker.send(messages.CapturePayment(order="orders/unknown"))
    await worker.send(
        messages.ChargePayment(order="orders/legacy", customer="customers/ada", amount=EUR_12)
    )
    dead = await asyncio.wait_for(_dead_letters(amqp_url, 3), 10)
    reasons = {m.type or "": str(m.headers[DEAD_LETTER_REASON_HEADER]) for m in dead}
    assert "amount must be greater than zero" in reasons["emporium.payments.v1.AuthorizePayment"]
    assert "PAYMENT_NOT_FOUND" in reasons["emporium.payments.v1.CapturePayment"]
    assert "is not taken here" in reasons["emporium.payments.v1.ChargePayment"]
    assert ledger_requests(worker.ledger) == {}
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await worker.stub.GetPayment(pb.GetPaymentRequest(name="payments/negative"))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND


async def test_lists_page_by_page_and_refunds_only_captures(worker: Worker) -> None:
    for order in ("a", "b", "c"):
        await worker.send(authorize(order))
    for order in ("a", "b", "c"):
        await worker.events_of(order)
    await worker.send(messages.CapturePayment(order="orders/a"))
    await worker.events_of("a", 2)

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
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await worker.stub.RefundPayment(pb.RefundPaymentRequest(name="payments/b"))
    error = rich_error(refused.value)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.info is not None and error.info.reason == "PAYMENT_NOT_REFUNDABLE"
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await worker.stub.GetPayment(pb.GetPaymentRequest(name="orders/x"))
    assert rich_error(malformed.value).fields == ["name"]


async def test_an_outage_dead_letters_and_the_reconciler_settles_the_payment(
    amqp_url: str, tmp_path: Path, database_url: str
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    async with running(
        database_url, amqp_url, ledger, transient_failure_rate=1.0, reconcile_after_seconds=0.5
    ) as worker:
        await worker.send(authorize("unlucky"))
        (dead,) = await asyncio.wait_for(_dead_letters(amqp_url, 1), 10)
        assert dead.type == "emporium.payments.v1.AuthorizePayment"
        # The provider never saw the key: the reconciler declines the payment.
        assert await worker.events_of("unlucky") == ["PaymentDeclined"]
        declined = await worker.stub.GetPayment(pb.GetPaymentRequest(name="payments/unlucky"))
        assert declined.state == pb.PAYMENT_STATE_FAILED
        assert declined.decline_reason == "no answer from the payment provider"
        assert ledger_requests(ledger) == {}


async def _dead_letters(amqp_url: str, count: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Waits for `count` messages in the charge queue's DLQ (and leaves them there)."""
    connection = await aio_pika.connect(amqp_url)
    found: list[aio_pika.abc.AbstractIncomingMessage] = []
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=count)
        queue = await channel.get_queue(f"{CHARGE_QUEUE}.dlq")
        async with queue.iterator() as dead_letters:
            async for message in dead_letters:
                found.append(message)
                if len(found) == count:
                    return found
        raise AssertionError("the DLQ iterator ended")
    finally:
        await connection.close()
