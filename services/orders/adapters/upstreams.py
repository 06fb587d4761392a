"""The catalog and the inventory as orders sees them, called through the client kit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

import grpc
from google.protobuf import duration_pb2

from emporium.catalog.v1 import catalog_service_pb2 as catalog_pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from emporium.catalog.v1 import product_pb2
from emporium.inventory.v1 import inventory_service_pb2 as inventory_pb
from emporium.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from libs.money import Money
from libs.rpcclient.change_feed import follow
from libs.rpcclient.upstream import Upstream, upstream_errors
from libs.runtime.background import BackgroundTask
from libs.runtime.errors import DomainError, ErrorKind, FieldViolation
from services.orders.domain.model import ProductInfo
from services.orders.domain.ports import HoldLapsed, ProductCatalog
from services.orders.domain.reasons import Reason

log = logging.getLogger("emporium.orders")


def product_info(product: product_pb2.Product) -> ProductInfo:
    price = Money(product.price.currency_code, product.price.units, product.price.nanos)
    return ProductInfo(product.name.removeprefix("products/"), product.title, price)


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
                found[pid] = product_info(result)
        if missing:
            raise DomainError(
                ErrorKind.FAILED_PRECONDITION,
                Reason.PRODUCT_NOT_FOUND,
                "some products are not in the catalog",
                violations=missing,
            )
        return found


class CachedProductCatalog:
    """The catalog's products as orders last read them, kept current by catalog's change feed
    (WatchProducts, followed by `follow` from libs.rpcclient.change_feed): an order of products
    read before costs no call to catalog. It answers only while the feed is up, so an entry is
    never older than the feed's latest change: a price changed in catalog applies to the
    orders placed once the change has reached orders (milliseconds; on PostgreSQL, once the
    change is below catalog's committed watermark), as a call placed a moment earlier would
    have read the old one. While the feed is down, every order asks catalog."""

    def __init__(self, catalog: ProductCatalog, max_entries: int = 10_000) -> None:
        self._catalog = catalog
        self._max_entries = max_entries
        self._products: dict[str, ProductInfo] = {}
        self.enabled = False
        # Bumped by every change: a product read before a change is never stored after it.
        self._generation = 0

    async def products(self, product_ids: Sequence[str]) -> dict[str, ProductInfo]:
        cached = self._products
        if self.enabled and all(pid in cached for pid in product_ids):
            return {pid: cached[pid] for pid in product_ids}
        generation = self._generation
        found = await self._catalog.products(product_ids)  # all of them: its errors name lines
        if self.enabled and generation == self._generation:
            if len(cached) + len(found) > self._max_entries:
                cached.clear()
            cached.update(found)
        return found

    def up(self) -> None:
        self._reset(enabled=True)

    def changed(self, change: catalog_pb.WatchProductsResponse) -> None:
        self._generation += 1
        product_id = change.product.name.removeprefix("products/")
        if change.change_type == catalog_pb.CHANGE_TYPE_DELETED:
            self._products.pop(product_id, None)
        elif product_id in self._products:
            self._products[product_id] = product_info(change.product)

    def down(self) -> None:
        self._reset(enabled=False)

    def _reset(self, *, enabled: bool) -> None:
        self._products.clear()
        self._generation += 1
        self.enabled = enabled

    def follow(self, channel: grpc.aio.Channel) -> BackgroundTask:
        """Catalog's change feed on `channel`, followed in the background (attach it to the app)."""
        stub = catalog_grpc.CatalogServiceStub(channel)
        return BackgroundTask(
            "product-cache-feed",  # (catalog's own poller is "catalog-change-feed")
            lambda: follow(
                "catalog change feed",
                lambda: stub.WatchProducts(catalog_pb.WatchProductsRequest()),
                self,
                log,
            ),
        )


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
