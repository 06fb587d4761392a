"""Orders' product cache: a product read once is not asked of catalog again while catalog's
change feed is up, every change reaches it, and with the feed down it answers nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.type import money_pb2

from emporium.catalog.v1 import catalog_service_pb2 as catalog_pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from emporium.catalog.v1 import product_pb2
from libs.money import Money
from libs.rpcclient.upstream import Upstream
from libs.runtime.errors import DomainError
from libs.testing.rpc import serving
from services.catalog.app import build as build_catalog
from services.catalog.config import CatalogSettings
from services.orders.adapters.upstreams import CachedProductCatalog, GrpcProductCatalog
from services.orders.domain.model import ProductInfo


class CountingCatalog(GrpcProductCatalog):
    """The real client, counting the calls that reach catalog."""

    calls = 0

    async def products(self, product_ids: Sequence[str]) -> dict[str, ProductInfo]:
        self.calls += 1
        return await super().products(product_ids)


class ObservedCache(CachedProductCatalog):
    """Reports each event of the feed, so a test awaits it instead of sleeping."""

    def __init__(self, catalog: GrpcProductCatalog) -> None:
        super().__init__(catalog)
        self.events: asyncio.Queue[str] = asyncio.Queue()

    def up(self) -> None:
        super().up()
        self.events.put_nowait("up")

    def changed(self, change: catalog_pb.WatchProductsResponse) -> None:
        super().changed(change)
        self.events.put_nowait(change.product.name)

    def down(self) -> None:
        super().down()
        self.events.put_nowait("down")


def usd(units: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", units=units)


@contextlib.asynccontextmanager
async def following(cache: CachedProductCatalog, channel: grpc.aio.Channel) -> AsyncIterator[None]:
    feed = cache.follow(channel)
    await feed.start()
    try:
        yield
    finally:
        await feed.stop()


async def create_mug(channel: grpc.aio.Channel) -> product_pb2.Product:
    staff = catalog_grpc.CatalogServiceStub(channel)
    return await staff.CreateProduct(
        catalog_pb.CreateProductRequest(
            product=product_pb2.Product(sku="MUG-1", title="Mug", price=usd(8)), product_id="mug"
        )
    )


async def test_a_product_is_read_once_and_kept_current_by_the_change_feed(
    database_url: str,
) -> None:
    settings = CatalogSettings(database_url=database_url, feed_poll_interval_seconds=0.2)
    async with serving(await build_catalog(settings)) as channel:
        staff = catalog_grpc.CatalogServiceStub(channel)
        created = await create_mug(channel)
        catalog = CountingCatalog(Upstream("catalog", channel))
        cache = ObservedCache(catalog)
        async with following(cache, channel):
            assert await cache.events.get() == "up"
            first = await cache.products(["mug"])
            assert first["mug"].price == Money("USD", 8, 0)
            assert await cache.products(["mug"]) == first
            assert catalog.calls == 1  # the second order asked nobody

            await staff.UpdateProduct(
                catalog_pb.UpdateProductRequest(
                    product=product_pb2.Product(name="products/mug", price=usd(9)),
                    update_mask=field_mask_pb2.FieldMask(paths=["price"]),
                )
            )
            assert await cache.events.get() == created.name
            assert (await cache.products(["mug"]))["mug"].price == Money("USD", 9, 0)
            assert catalog.calls == 1  # the feed brought the new price

            await staff.DeleteProduct(catalog_pb.DeleteProductRequest(name="products/mug"))
            assert await cache.events.get() == created.name
            with pytest.raises(DomainError) as missing:
                await cache.products(["mug"])
            assert missing.value.reason == "PRODUCT_NOT_FOUND"
            assert catalog.calls == 2
        assert not cache.enabled  # nobody keeps it current any more


async def test_with_the_feed_down_every_order_asks_catalog(database_url: str) -> None:
    settings = CatalogSettings(database_url=database_url, grace_seconds=0.5)
    app = await build_catalog(settings)
    async with serving(app) as channel:
        await create_mug(channel)
        catalog = CountingCatalog(Upstream("catalog", channel))
        cache = ObservedCache(catalog)
        async with following(cache, channel):
            assert await cache.events.get() == "up"
            await cache.products(["mug"])
            await app.stop()  # catalog goes away, and its feed with it
            assert await cache.events.get() == "down"
            with pytest.raises(grpc.aio.AioRpcError) as unreachable:
                await cache.products(["mug"])
            assert unreachable.value.code() is grpc.StatusCode.UNAVAILABLE
            assert catalog.calls == 2  # not answered from what was read before


class HeldCatalog:
    """Answers when the test lets it: a read that is still on its way when a change comes."""

    def __init__(self) -> None:
        self.calls = 0
        self.answer = asyncio.Event()

    async def products(self, product_ids: Sequence[str]) -> dict[str, ProductInfo]:
        self.calls += 1
        await self.answer.wait()
        return {pid: ProductInfo(pid, "Mug", Money("USD", 8, 0)) for pid in product_ids}


async def test_a_read_older_than_a_change_is_not_kept() -> None:
    catalog = HeldCatalog()
    cache = CachedProductCatalog(catalog)
    cache.up()
    reading = asyncio.create_task(cache.products(["mug"]))
    await asyncio.sleep(0)  # the read is on its way
    assert catalog.calls == 1
    cache.changed(
        catalog_pb.WatchProductsResponse(
            change_type=catalog_pb.CHANGE_TYPE_UPDATED,
            product=product_pb2.Product(name="products/mug", title="Mug", price=usd(9)),
        )
    )
    catalog.answer.set()
    assert (await reading)["mug"].price == Money("USD", 8, 0)  # what this order read
    await cache.products(["mug"])
    assert catalog.calls == 2  # the next one reads again: the old price was not kept
