"""InventoryService over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc

from emporium.inventory.v1 import inventory_service_pb2 as pb
from emporium.inventory.v1 import inventory_service_pb2_grpc as pb_grpc
from libs.runtime.errors import DomainError
from libs.runtime.idempotency import fingerprint
from libs.runtime.rich_status import status_of
from libs.runtime.shutdown import StreamsClosed
from libs.runtime.validation import check
from services.inventory.api.mapping import level_message, reservation_message
from services.inventory.domain.inventory import Inventory

DOMAIN = "inventory.emporium.dev"
Context = grpc.aio.ServicerContext[object, object]
_CLIENT_DONE = object()


class InventoryServicer(pb_grpc.InventoryServiceServicer):
    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory

    async def GetStockLevel(
        self, request: pb.GetStockLevelRequest, context: Context
    ) -> pb.StockLevel:
        return level_message(await self._inventory.level(request.name))

    async def ListStockLevels(
        self, request: pb.ListStockLevelsRequest, context: Context
    ) -> pb.ListStockLevelsResponse:
        levels, token = await self._inventory.levels(request.page_size, request.page_token)
        return pb.ListStockLevelsResponse(
            stock_levels=[level_message(level) for level in levels], next_page_token=token
        )

    async def ListReservations(
        self, request: pb.ListReservationsRequest, context: Context
    ) -> pb.ListReservationsResponse:
        found, token = await self._inventory.reservations(request.page_size, request.page_token)
        return pb.ListReservationsResponse(
            reservations=[reservation_message(r) for r in found], next_page_token=token
        )

    async def ReserveStock(
        self, request: pb.ReserveStockRequest, context: Context
    ) -> pb.Reservation:
        ttl = request.ttl.ToTimedelta() if request.HasField("ttl") else None
        reservation = await self._inventory.reserve(
            [(line.item, line.quantity) for line in request.lines],
            request.request_id,
            fingerprint(request),
            ttl if ttl != timedelta(0) else None,
        )
        return reservation_message(reservation)

    async def CommitReservation(
        self, request: pb.CommitReservationRequest, context: Context
    ) -> pb.Reservation:
        return reservation_message(await self._inventory.commit(request.name))

    async def ReleaseReservation(
        self, request: pb.ReleaseReservationRequest, context: Context
    ) -> pb.Reservation:
        return reservation_message(await self._inventory.release(request.name))

    async def AdjustStock(
        self, request_iterator: AsyncIterator[pb.AdjustStockRequest], context: Context
    ) -> AsyncIterator[pb.AdjustStockResponse]:
        session = object()
        outbox: asyncio.Queue[object] = asyncio.Queue()
        changes = self._inventory.feed.subscribe()

        async def adjust_each() -> None:
            async for request in request_iterator:
                try:
                    check(request)
                    level = await self._inventory.adjust(request.item, request.delta, session)
                    await outbox.put(pb.AdjustStockResponse(adjusted=level_message(level)))
                except DomainError as error:
                    status = status_of(error, DOMAIN)[1]
                    await outbox.put(pb.AdjustStockResponse(rejected=status))
            await outbox.put(_CLIENT_DONE)

        async def forward_changes() -> None:
            while (change := await changes.get()) is not None:
                source, level = change
                if source is not session:
                    await outbox.put(pb.AdjustStockResponse(changed=level_message(level)))
            await outbox.put(StreamsClosed("reconnect"))  # the feed closed: shutdown

        tasks = [asyncio.create_task(adjust_each()), asyncio.create_task(forward_changes())]
        try:
            while True:
                item = await outbox.get()
                if item is _CLIENT_DONE:
                    return
                if isinstance(item, StreamsClosed):
                    raise item
                assert isinstance(item, pb.AdjustStockResponse)
                yield item
        finally:
            self._inventory.feed.unsubscribe(changes)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await task
