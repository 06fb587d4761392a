"""The catalog and the inventory as orders sees them, called through the client kit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import grpc
from google.protobuf import duration_pb2

from emporium.catalog.v1 import catalog_service_pb2 as catalog_pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from emporium.inventory.v1 import inventory_service_pb2 as inventory_pb
from emporium.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from libs.money import Money
from libs.rpcclient.upstream import Upstream, upstream_errors
from libs.runtime.errors import DomainError, ErrorKind, FieldViolation
from services.orders.domain.model import ProductInfo
from services.orders.domain.ports import HoldLapsed
from services.orders.domain.reasons import Reason


class GrpcProductCatalog:
    def __init__(self, upstream: Upstream) -> None:
        self._stub = upstream.stub(catalog_grpc.CatalogServiceStub)

    async def products(self, product_ids: Sequence[str]) -> dict[str, ProductInfo]:
        results = await asyncio.gather(
            *(
                self._stub.GetProduct(catalog_pb.GetProductRequest(name=f"products/{pid}"))
                for pid in product_ids
            ),
            return_exceptions=True,
        )
        missing = []
        found: dict[str, ProductInfo] = {}
        for index, (pid, result) in enumerate(zip(product_ids, results, strict=True)):
            if (
                isinstance(result, grpc.aio.AioRpcError)
                and result.code() is grpc.StatusCode.NOT_FOUND
            ):
                missing.append(
                    FieldViolation(
                        f"order.lines[{index}].product",
                        f"products/{pid} is not in the catalog",
                        Reason.PRODUCT_NOT_FOUND,
                    )
                )
            elif isinstance(result, BaseException):
                raise result
            else:
                price = Money(result.price.currency_code, result.price.units, result.price.nanos)
                found[pid] = ProductInfo(pid, result.title, price)
        if missing:
            raise DomainError(
                ErrorKind.FAILED_PRECONDITION,
                Reason.PRODUCT_NOT_FOUND,
                "some products are not in the catalog",
                violations=missing,
            )
        return found


class GrpcStockReservations:
    """Inventory's reservations; its errors arrive as DomainErrors with inventory's reasons."""

    def __init__(self, upstream: Upstream) -> None:
        self._stub = upstream.stub(inventory_grpc.InventoryServiceStub)

    async def reserve(
        self, lines: Sequence[tuple[str, int]], request_id: str, ttl: timedelta
    ) -> str:
        hold = duration_pb2.Duration()
        hold.FromTimedelta(ttl)
        try:
            reservation = await self._stub.ReserveStock(
                inventory_pb.ReserveStockRequest(
                    lines=[
                        inventory_pb.ReservationLine(
                            item=f"inventory/items/{item}", quantity=quantity
                        )
                        for item, quantity in lines
                    ],
                    request_id=request_id,
                    ttl=hold,
                )
            )
        except grpc.aio.AioRpcError as error:
            raise _domain_error(error) from error
        return reservation.name

    async def commit(self, reservation: str) -> None:
        try:
            await self._stub.CommitReservation(
                inventory_pb.CommitReservationRequest(name=reservation)
            )
        except grpc.aio.AioRpcError as error:
            failure = _domain_error(error)
            if failure.reason == "RESERVATION_NOT_PENDING":
                raise HoldLapsed(str(failure)) from error
            raise failure from error

    async def release(self, reservation: str) -> None:
        try:
            await self._stub.ReleaseReservation(
                inventory_pb.ReleaseReservationRequest(name=reservation)
            )
        except grpc.aio.AioRpcError as error:
            raise _domain_error(error) from error


def _domain_error(error: grpc.aio.AioRpcError) -> DomainError:
    translated = upstream_errors(error)
    assert translated is not None
    return translated
