"""Acceptance: one trace links the CreateOrder span, the publish of the charge request, the
payment worker's consume and the order update that payment causes, across the outbox and
RabbitMQ (the W3C traceparent travels in the message headers)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanKind

from emporium.inventory.v1 import inventory_service_pb2 as inventory_pb
from emporium.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from emporium.orders.v1 import orders_service_pb2 as pb
from emporium.orders.v1 import orders_service_pb2_grpc as pb_grpc
from libs.telemetry.tracing import add_span_processor, configure_tracing
from tools.commands.run.fleet import in_process_fleet

ORDER_UPDATE = "emporium.inventory.v1.InventoryService/CommitReservation"


class SpanRecorder(SpanProcessor):
    """Keeps ended spans and lets a test await one by name."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self._ended = asyncio.Condition()
        self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()

    def on_end(self, span: ReadableSpan) -> None:
        # The provider outlives the test (it cannot drop a processor): once the test is over,
        # its loop is gone and the recorder ignores spans.
        if self._loop is None or self._loop.is_closed():
            return
        self.spans.append(span)
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._notify()))

    def close(self) -> None:
        self._loop = None

    async def _notify(self) -> None:
        async with self._ended:
            self._ended.notify_all()

    async def wait_for(self, name: str) -> ReadableSpan:
        async with self._ended:
            await self._ended.wait_for(lambda: any(s.name == name for s in self.spans))
        return self.named(name)

    def named(self, name: str) -> ReadableSpan:
        return next(s for s in self.spans if s.name == name)


@pytest.fixture
async def recorder() -> AsyncIterator[SpanRecorder]:
    recording = SpanRecorder()
    configure_tracing("e2e", record=True)
    add_span_processor(recording)  # to the global provider, whoever installed it
    yield recording
    recording.close()


@pytest.fixture
async def orders(tmp_path: Path, amqp_url: str) -> AsyncIterator[pb_grpc.OrdersServiceAsyncStub]:
    async with in_process_fleet(
        tmp_path,
        amqp_url,
        only=("catalog", "inventory", "orders", "payments"),
        settings={"payments": {"provider_latency_seconds": 0}},
    ) as fleet:
        adjust = inventory_grpc.InventoryServiceStub(fleet.channels["inventory"]).AdjustStock(None)
        await adjust.write(inventory_pb.AdjustStockRequest(item="inventory/items/mug-01", delta=3))
        await adjust.read()
        await adjust.done_writing()
        yield pb_grpc.OrdersServiceStub(fleet.channels["orders"])


async def test_one_trace_from_create_order_to_the_order_update(
    recorder: SpanRecorder, orders: pb_grpc.OrdersServiceAsyncStub
) -> None:
    created = await orders.CreateOrder(
        pb.CreateOrderRequest(
            order=pb.Order(
                customer="customers/ann",
                lines=[pb.OrderLine(product="products/mug-01", quantity=1)],
            ),
            request_id=str(uuid.uuid4()),
        )
    )
    states = [o.state async for o in orders.WatchOrder(pb.WatchOrderRequest(name=created.name))]
    assert states[-1] == pb.ORDER_STATE_CONFIRMED

    create = recorder.named("emporium.orders.v1.OrdersService/CreateOrder")
    charge_publish = recorder.named("amq.default publish")
    charge_consume = recorder.named("payments.charge process")
    result_consume = await asyncio.wait_for(recorder.wait_for("orders.payment-results process"), 10)
    order_update = await asyncio.wait_for(recorder.wait_for(ORDER_UPDATE), 10)

    trace_id = create.context.trace_id
    chain = [create, charge_publish, charge_consume, result_consume, order_update]
    assert {span.context.trace_id for span in chain} == {trace_id}
    assert charge_publish.kind is SpanKind.PRODUCER
    assert charge_consume.kind is SpanKind.CONSUMER
    # The consume continues the publish and also links to it.
    assert charge_consume.parent is not None
    assert charge_consume.parent.span_id == charge_publish.context.span_id
    assert [link.context.span_id for link in charge_consume.links] == [
        charge_publish.context.span_id
    ]
