"""The messaging contract read from the protos' options: routes, queues and streams, and a
clear error for options that do not add up."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message

from emporium.messaging.v1 import messaging_pb2 as contract_pb
from emporium.orders.v1 import order_events_pb2 as order_events
from emporium.payments.v1 import payment_messages_pb2 as payments
from libs.messaging.contract import (
    ContractError,
    MessagingContract,
    breaking_changes,
    fleet_contract,
)
from libs.messaging.topology import COMMANDS_EXCHANGE, EVENTS_EXCHANGE

COMMANDS: set[type[Message]] = {
    payments.AuthorizePayment,
    payments.CapturePayment,
    payments.VoidPayment,
    payments.RefundPayment,
}
OUTCOMES: set[type[Message]] = {
    payments.PaymentAuthorized,
    payments.PaymentDeclined,
    payments.PaymentCaptured,
    payments.PaymentVoided,
    payments.PaymentRefunded,
}


def test_commands_go_to_their_consumers_queue_with_its_retry_policy() -> None:
    (charge,) = fleet_contract().topology("payments").work_queues
    assert set(charge.accepts) == COMMANDS  # the deprecated ChargePayment is not taken
    assert charge.max_deliveries == 5
    assert charge.retry_delays == (1.0, 5.0, 30.0)
    message = fleet_contract().outgoing(payments.CapturePayment(order="orders/o1"))
    assert (message.exchange, message.routing_key) == (COMMANDS_EXCHANGE, charge.name)


def test_events_reach_the_producers_stream_and_each_subscribed_queue() -> None:
    contract = fleet_contract()
    (results,) = contract.topology("orders").work_queues
    assert set(results.accepts) == OUTCOMES
    assert set(results.bindings) == {
        (EVENTS_EXCHANGE, f"payments.{outcome.DESCRIPTOR.name}") for outcome in OUTCOMES
    }
    (orders_stream,) = contract.topology("orders").streams
    assert orders_stream.routing_keys == ("orders.#",)
    assert contract.streams_read_by("notifications") == (orders_stream,)
    created = contract.outgoing(order_events.OrderCreated(), correlation_id="orders/o1")
    assert (created.exchange, created.routing_key) == (EVENTS_EXCHANGE, "orders.OrderCreated")


def test_the_payments_override_replaces_the_contracts_retry_policy() -> None:
    (charge,) = (
        fleet_contract().topology("payments", max_deliveries=2, retry_delays=(0.1,)).work_queues
    )
    assert (charge.max_deliveries, charge.retry_delays) == (2, (0.1,))


def test_a_message_without_a_route_is_refused_by_name() -> None:
    with pytest.raises(ContractError, match="ChargePayment is neither a command nor an event"):
        fleet_contract().outgoing(payments.ChargePayment())


def scratch_file(queue: str, declared: str) -> FileDescriptor:
    """A contract file declaring the work queue `declared` and a command sent to `queue`."""
    pool = descriptor_pool.DescriptorPool()
    for dependency in (descriptor_pb2, duration_pb2, contract_pb):
        proto = descriptor_pb2.FileDescriptorProto()
        dependency.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)  # type: ignore[no-untyped-call]
    proto = descriptor_pb2.FileDescriptorProto(
        name="scratch/v1/scratch.proto",
        package="scratch.v1",
        syntax="proto3",
        dependency=[contract_pb.DESCRIPTOR.name],
    )
    work = proto.options.Extensions[contract_pb.work_queue].add()
    work.name, work.consumer, work.max_deliveries = declared, "scratch", 1
    work.retry_delays.add(seconds=1)
    message = proto.message_type.add(name="DoIt")
    message.options.Extensions[contract_pb.command].queue = queue
    message.options.Extensions[contract_pb.command].producer = "scratch"
    pool.Add(proto)  # type: ignore[no-untyped-call]
    found: FileDescriptor = pool.FindFileByName(proto.name)  # type: ignore[no-untyped-call]
    return found


def test_a_command_for_a_queue_nobody_declares_is_an_error() -> None:
    assert MessagingContract.from_files([scratch_file("scratch.work", "scratch.work")]).routes
    with pytest.raises(
        ContractError, match=r"command for 'scratch\.typo', which no contract declares"
    ):
        MessagingContract.from_files([scratch_file("scratch.typo", "scratch.work")])


def test_moving_a_command_to_another_queue_breaks_the_contract() -> None:
    before = MessagingContract.from_files([scratch_file("scratch.work", "scratch.work")])
    after = MessagingContract.from_files([scratch_file("scratch.other", "scratch.other")])
    assert breaking_changes(before, before) == []
    assert breaking_changes(before, after) == [
        "work queue 'scratch.work' removed",
        "scratch.v1.DoIt moved: command to 'scratch.work' (scratch.work)"
        " is now command to 'scratch.other' (scratch.other)",
    ]
