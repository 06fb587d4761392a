"""InventoryService through a real gRPC server on port 0, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
import pytest
from google.protobuf import duration_pb2

from emporium.inventory.v1 import inventory_service_pb2 as pb
from emporium.inventory.v1 import inventory_service_pb2_grpc as pb_grpc
from libs.runtime.overload import pushback_ms
from libs.testing.rpc import rich_error, serving
from services.inventory.app import build
from services.inventory.config import InventorySettings

Stub: TypeAlias = "pb_grpc.InventoryServiceAsyncStub"
AdjustCall: TypeAlias = grpc.aio.StreamStreamCall[pb.AdjustStockRequest, pb.AdjustStockResponse]


@pytest.fixture
async def stub(database_url: str) -> AsyncIterator[Stub]:
    settings = InventorySettings(database_url=database_url, grace_seconds=2)
    async with serving(await build(settings)) as channel:
        yield pb_grpc.InventoryServiceStub(channel)


async def stock(stub: Stub, item: str, units: int) -> None:
    call: AdjustCall = stub.AdjustStock(None)
    await call.write(pb.AdjustStockRequest(item=f"inventory/items/{item}", delta=units))
    response = await next_response(call)
    assert response.WhichOneof("event") == "adjusted"
    await call.done_writing()
    assert await rest_of(call) == []
    assert await call.code() is grpc.StatusCode.OK


async def next_response(call: AdjustCall) -> pb.AdjustStockResponse:
    response = await call.read()
    assert isinstance(response, pb.AdjustStockResponse), response
    return response


def reserve(
    *lines: tuple[str, int], request_id: str | None = None, ttl: float | None = None
) -> pb.ReserveStockRequest:
    request = pb.ReserveStockRequest(
        lines=[pb.ReservationLine(item=f"inventory/items/{item}", quantity=q) for item, q in lines],
        request_id=request_id or str(uuid.uuid4()),
    )
    if ttl is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(nanos=int(ttl * 1e9)))
    return request


async def rest_of(call: AdjustCall) -> list[pb.AdjustStockResponse]:
    """Reads what the stream still has to say, up to its end."""
    responses = []
    while (response := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
        assert isinstance(response, pb.AdjustStockResponse)
        responses.append(response)
    return responses


async def available(stub: Stub, item: str) -> int:
    level = await stub.GetStockLevel(pb.GetStockLevelRequest(name=f"inventory/items/{item}"))
    return level.available


async def test_reservation_is_all_or_nothing(stub: Stub) -> None:
    await stock(stub, "mug", 5)
    await stock(stub, "jar", 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReserveStock(reserve(("mug", 2), ("jar", 2)))
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.info is not None and error.info.reason == "INSUFFICIENT_STOCK"
    assert error.info.metadata["item"] == "inventory/items/jar"
    assert (await available(stub, "mug"), await available(stub, "jar")) == (5, 1)


async def test_reserve_commit_release_lifecycle(stub: Stub) -> None:
    await stock(stub, "mug", 10)
    first = await stub.ReserveStock(reserve(("mug", 3)))
    assert first.state == pb.RESERVATION_STATE_PENDING
    assert await available(stub, "mug") == 7
    committed = await stub.CommitReservation(pb.CommitReservationRequest(name=first.name))
    assert committed.state == pb.RESERVATION_STATE_COMMITTED
    level = await stub.GetStockLevel(pb.GetStockLevelRequest(name="inventory/items/mug"))
    assert (level.on_hand, level.reserved) == (7, 0)
    again = await stub.CommitReservation(pb.CommitReservationRequest(name=first.name))
    assert again.state == pb.RESERVATION_STATE_COMMITTED  # idempotent
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReleaseReservation(pb.ReleaseReservationRequest(name=first.name))
    assert rich_error(caught.value).code is grpc.StatusCode.FAILED_PRECONDITION

    second = await stub.ReserveStock(reserve(("mug", 4)))
    released = await stub.ReleaseReservation(pb.ReleaseReservationRequest(name=second.name))
    assert released.state == pb.RESERVATION_STATE_RELEASED
    assert await available(stub, "mug") == 7


async def test_reservations_are_listed_oldest_first_page_by_page(stub: Stub) -> None:
    await stock(stub, "mug", 10)
    made = [await stub.ReserveStock(reserve(("mug", n))) for n in (1, 2, 3)]
    await stub.CommitReservation(pb.CommitReservationRequest(name=made[1].name))
    first = await stub.ListReservations(pb.ListReservationsRequest(page_size=2))
    second = await stub.ListReservations(
        pb.ListReservationsRequest(page_size=2, page_token=first.next_page_token)
    )
    listed = [*first.reservations, *second.reservations]
    assert [r.name for r in listed] == [r.name for r in made]
    assert [r.state for r in listed] == [
        pb.RESERVATION_STATE_PENDING,
        pb.RESERVATION_STATE_COMMITTED,
        pb.RESERVATION_STATE_PENDING,
    ]
    assert [r.lines[0].quantity for r in listed] == [1, 2, 3]
    assert second.next_page_token == ""


async def test_the_default_hold_is_the_ttl_setting(database_url: str) -> None:
    settings = InventorySettings(database_url=database_url, reservation_ttl_seconds=120)
    async with serving(await build(settings)) as channel:
        stub = pb_grpc.InventoryServiceStub(channel)
        await stock(stub, "mug", 1)
        held = await stub.ReserveStock(reserve(("mug", 1)))
    lasts = held.expire_time.ToDatetime() - held.create_time.ToDatetime()
    assert lasts.total_seconds() == pytest.approx(120, abs=1)


async def test_reserve_is_idempotent_by_request_id(stub: Stub) -> None:
    await stock(stub, "mug", 10)
    request = reserve(("mug", 4))
    first = await stub.ReserveStock(request)
    second = await stub.ReserveStock(request)
    assert second.name == first.name
    assert await available(stub, "mug") == 6
    other = reserve(("mug", 1), request_id=request.request_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReserveStock(other)
    assert rich_error(caught.value).info.reason == "REQUEST_ID_REUSED"  # type: ignore[union-attr]


async def test_expired_reservation_returns_its_stock(stub: Stub) -> None:
    await stock(stub, "mug", 2)
    held = await stub.ReserveStock(reserve(("mug", 2), ttl=0.05))
    assert await available(stub, "mug") == 0
    await asyncio.sleep(0.1)  # expiry is a matter of time passing: nothing to await instead
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CommitReservation(pb.CommitReservationRequest(name=held.name))
    error = rich_error(caught.value)
    assert error.info is not None and error.info.metadata["state"] == "EXPIRED"
    assert await available(stub, "mug") == 2


async def reserve_as_clients_do(
    stub: Stub, request: pb.ReserveStockRequest
) -> pb.Reservation | grpc.aio.AioRpcError:
    """The reservation, or the error it ended with. A call the server shed (RESOURCE_EXHAUSTED:
    100 at once go past its adaptive limit on a busy machine) is sent again after the server's
    pushback with the same request_id, as libs.rpcclient does."""
    while True:
        try:
            return await stub.ReserveStock(request)
        except grpc.aio.AioRpcError as error:
            pushback = pushback_ms(error.trailing_metadata())
            shed = error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            if not shed or pushback is None or pushback < 0:
                return error
            await asyncio.sleep(pushback / 1000)  # the protocol's wait: time, not an event


async def test_100_concurrent_reservations_for_the_last_10_units(stub: Stub) -> None:
    await stock(stub, "last", 10)
    outcomes = await asyncio.gather(
        *(reserve_as_clients_do(stub, reserve(("last", 1))) for _ in range(100))
    )
    succeeded = [o for o in outcomes if isinstance(o, pb.Reservation)]
    failed = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(succeeded) == 10
    assert len(failed) == 90
    assert all(e.code() is grpc.StatusCode.FAILED_PRECONDITION for e in failed)
    level = await stub.GetStockLevel(pb.GetStockLevelRequest(name="inventory/items/last"))
    assert (level.on_hand, level.reserved, level.available) == (10, 10, 0)


async def test_adjust_stock_sessions_see_their_results_and_each_others_changes(
    stub: Stub,
) -> None:
    scanner_a: AdjustCall = stub.AdjustStock(None)
    await scanner_a.write(pb.AdjustStockRequest(item="inventory/items/box", delta=5))
    assert (await next_response(scanner_a)).adjusted.on_hand == 5  # A is connected now
    scanner_b: AdjustCall = stub.AdjustStock(None)  # connects after A's change: does not see it

    await scanner_b.write(pb.AdjustStockRequest(item="inventory/items/box", delta=1))
    own = await next_response(scanner_b)
    assert own.adjusted.on_hand == 6
    seen_by_a = await next_response(scanner_a)
    assert seen_by_a.WhichOneof("event") == "changed"
    assert seen_by_a.changed.on_hand == 6

    await stub.ReserveStock(reserve(("box", 4)))
    assert (await next_response(scanner_a)).changed.reserved == 4

    await scanner_a.write(pb.AdjustStockRequest(item="inventory/items/box", delta=-5))
    rejected = await next_response(scanner_a)
    assert rejected.WhichOneof("event") == "rejected"
    assert rejected.rejected.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    await scanner_a.write(pb.AdjustStockRequest(item="inventory/items/box", delta=-2))
    assert (await next_response(scanner_a)).adjusted.on_hand == 4  # the session went on

    for scanner in (scanner_a, scanner_b):
        await scanner.done_writing()
        # The status comes after every message: read what is left (B: the changes it missed).
        remaining = await rest_of(scanner)
        assert all(r.WhichOneof("event") == "changed" for r in remaining)
        assert await scanner.code() is grpc.StatusCode.OK


async def test_bad_reservations_name_the_field(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReserveStock(pb.ReserveStockRequest(request_id=str(uuid.uuid4())))
    assert rich_error(caught.value).fields == ["lines"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReserveStock(reserve(("mug", 0), ("mug", 1)))
    assert rich_error(caught.value).fields == ["lines[0].quantity"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReserveStock(reserve(("mug", 1), ("mug", 1)))
    error = rich_error(caught.value)
    assert error.info is not None and error.info.reason == "DUPLICATE_ITEM"
