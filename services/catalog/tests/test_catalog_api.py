"""CatalogService through a real gRPC server on port 0, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.type import money_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emporium.catalog.v1 import catalog_service_pb2 as pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from emporium.catalog.v1 import product_pb2
from libs.testing.rpc import rich_error, serving
from services.catalog.app import build
from services.catalog.config import CatalogSettings

Stub: TypeAlias = "pb_grpc.CatalogServiceAsyncStub"


@pytest.fixture
async def channel(database_url: str) -> AsyncIterator[grpc.aio.Channel]:
    settings = CatalogSettings(
        database_url=database_url, feed_poll_interval_seconds=0.2, grace_seconds=2
    )
    async with serving(await build(settings)) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Stub:
    return pb_grpc.CatalogServiceStub(channel)


def product(sku: str, units: int = 10, nanos: int = 0, **labels: str) -> product_pb2.Product:
    return product_pb2.Product(
        sku=sku,
        title=f"Title {sku}",
        description="d",
        price=money_pb2.Money(currency_code="USD", units=units, nanos=nanos),
        labels=labels,
    )


WatchCall: TypeAlias = grpc.aio.UnaryStreamCall[pb.WatchProductsRequest, pb.WatchProductsResponse]


async def next_change(call: WatchCall) -> pb.WatchProductsResponse:
    message = await call.read()
    assert isinstance(message, pb.WatchProductsResponse), message
    return message


async def expect_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_create_get_update_delete(stub: Stub) -> None:
    created = await stub.CreateProduct(
        pb.CreateProductRequest(
            product=product("MUG-1", 8, 990_000_000, color="yellow"), product_id="mug"
        )
    )
    assert created.name == "products/mug"
    assert created.price.units == 8 and created.price.nanos == 990_000_000
    assert created.etag and created.create_time.seconds > 0

    fetched = await stub.GetProduct(pb.GetProductRequest(name="products/mug"))
    assert fetched == created

    change = product_pb2.Product(name="products/mug", title="Big mug", etag=created.etag)
    updated = await stub.UpdateProduct(
        pb.UpdateProductRequest(
            product=change, update_mask=field_mask_pb2.FieldMask(paths=["title"])
        )
    )
    assert updated.title == "Big mug"
    assert updated.sku == "MUG-1"  # not in the mask: kept
    assert updated.etag != created.etag

    await stub.DeleteProduct(pb.DeleteProductRequest(name="products/mug"))
    error = rich_error(
        await expect_error(stub.GetProduct(pb.GetProductRequest(name="products/mug")))
    )
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.info is not None and error.info.reason == "PRODUCT_NOT_FOUND"
    assert error.info.domain == "catalog.emporium.dev"


async def test_stale_etag_is_aborted(stub: Stub) -> None:
    created = await stub.CreateProduct(pb.CreateProductRequest(product=product("E-1")))
    await stub.UpdateProduct(
        pb.UpdateProductRequest(
            product=product_pb2.Product(name=created.name, title="first"),
            update_mask=field_mask_pb2.FieldMask(paths=["title"]),
        )
    )
    stale = product_pb2.Product(name=created.name, title="second", etag=created.etag)
    error = rich_error(
        await expect_error(
            stub.UpdateProduct(
                pb.UpdateProductRequest(
                    product=stale, update_mask=field_mask_pb2.FieldMask(paths=["title"])
                )
            )
        )
    )
    assert error.code is grpc.StatusCode.ABORTED
    assert error.info is not None and error.info.reason == "ETAG_MISMATCH"
    assert (await stub.GetProduct(pb.GetProductRequest(name=created.name))).title == "first"


async def test_create_is_idempotent_by_request_id(stub: Stub) -> None:
    request_id = str(uuid.uuid4())
    request = pb.CreateProductRequest(product=product("IDEM-1"), request_id=request_id)
    first = await stub.CreateProduct(request)
    again = await stub.CreateProduct(request)
    assert again == first
    listed = await stub.ListProducts(pb.ListProductsRequest())
    assert [p.sku for p in listed.products] == ["IDEM-1"]

    other_body = pb.CreateProductRequest(product=product("IDEM-2"), request_id=request_id)
    error = rich_error(await expect_error(stub.CreateProduct(other_body)))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.info is not None and error.info.reason == "REQUEST_ID_REUSED"
    assert error.fields == ["request_id"]


async def test_duplicate_sku_already_exists(stub: Stub) -> None:
    await stub.CreateProduct(pb.CreateProductRequest(product=product("DUP-1")))
    error = rich_error(
        await expect_error(stub.CreateProduct(pb.CreateProductRequest(product=product("DUP-1"))))
    )
    assert error.code is grpc.StatusCode.ALREADY_EXISTS
    assert error.info is not None and error.info.reason == "SKU_TAKEN"


async def test_list_pages_filters_and_orders(stub: Stub) -> None:
    for index in range(7):
        color = "red" if index % 2 == 0 else "blue"
        await stub.CreateProduct(
            pb.CreateProductRequest(product=product(f"P-{index}", index, 0, color=color))
        )
    request = pb.ListProductsRequest(
        page_size=2, filter='labels.color = "red" AND price >= 1', order_by="price desc"
    )
    seen: list[str] = []
    while True:
        page = await stub.ListProducts(request)
        assert page.total_size == 3
        seen += [p.sku for p in page.products]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == ["P-6", "P-4", "P-2"]


@pytest.mark.parametrize(
    ("request_fields", "field", "reason"),
    [
        ({"page_token": "not-a-token"}, "page_token", "INVALID_PAGE_TOKEN"),
        ({"page_size": -1}, "page_size", "int32.gte"),
        ({"filter": "colour ~ red"}, "filter", "INVALID_FILTER"),
        ({"order_by": "weight"}, "order_by", "INVALID_ORDER_BY"),
    ],
)
async def test_bad_list_requests_name_the_field(
    stub: Stub, request_fields: dict[str, Any], field: str, reason: str
) -> None:
    request = pb.ListProductsRequest(**request_fields)
    error = rich_error(await expect_error(stub.ListProducts(request)))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.fields == [field]
    assert error.bad_request is not None
    assert error.bad_request.field_violations[0].reason == reason


async def test_page_token_is_bound_to_its_query(stub: Stub) -> None:
    for index in range(3):
        await stub.CreateProduct(pb.CreateProductRequest(product=product(f"T-{index}")))
    page = await stub.ListProducts(pb.ListProductsRequest(page_size=1, order_by="sku"))
    error = rich_error(
        await expect_error(
            stub.ListProducts(
                pb.ListProductsRequest(
                    page_size=1, order_by="title", page_token=page.next_page_token
                )
            )
        )
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.info is not None and error.info.reason == "PAGE_TOKEN_QUERY_MISMATCH"


async def test_invalid_create_lists_every_violation(stub: Stub) -> None:
    bad = product_pb2.Product(sku="lower", price=money_pb2.Money(currency_code="USD", units=-5))
    error = rich_error(await expect_error(stub.CreateProduct(pb.CreateProductRequest(product=bad))))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.fields) == {"product.sku", "product.title", "product.price"}

    missing = rich_error(await expect_error(stub.CreateProduct(pb.CreateProductRequest())))
    assert missing.fields == ["product"]


async def test_wrong_currency_is_rejected(stub: Stub) -> None:
    euro = product("EUR-1")
    euro.price.currency_code = "EUR"
    error = rich_error(
        await expect_error(stub.CreateProduct(pb.CreateProductRequest(product=euro)))
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.fields == ["product.price.currency_code"]
    assert error.info is not None and error.info.reason == "CURRENCY_NOT_SUPPORTED"


async def test_update_rejects_unknown_mask_path_and_invalid_merge(stub: Stub) -> None:
    created = await stub.CreateProduct(pb.CreateProductRequest(product=product("M-1")))
    unknown = rich_error(
        await expect_error(
            stub.UpdateProduct(
                pb.UpdateProductRequest(
                    product=product_pb2.Product(name=created.name),
                    update_mask=field_mask_pb2.FieldMask(paths=["weight"]),
                )
            )
        )
    )
    assert unknown.code is grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.fields == ["update_mask"]

    negative = product_pb2.Product(
        name=created.name, price=money_pb2.Money(currency_code="USD", units=-1)
    )
    invalid = rich_error(
        await expect_error(
            stub.UpdateProduct(
                pb.UpdateProductRequest(
                    product=negative, update_mask=field_mask_pb2.FieldMask(paths=["price"])
                )
            )
        )
    )
    assert invalid.code is grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.fields == ["product.price"]


async def test_oversized_message_is_resource_exhausted_and_service_keeps_serving(
    stub: Stub,
) -> None:
    huge = product("HUGE-1")
    huge.description = "x" * (10 * 1024 * 1024)
    error = await expect_error(stub.CreateProduct(pb.CreateProductRequest(product=huge)))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    created = await stub.CreateProduct(pb.CreateProductRequest(product=product("AFTER-1")))
    assert created.sku == "AFTER-1"


async def test_import_reports_each_item_and_survives_bad_ones(stub: Stub) -> None:
    await stub.CreateProduct(pb.CreateProductRequest(product=product("IMP-1", 1)))

    async def items() -> AsyncIterator[pb.ImportProductsRequest]:
        yield pb.ImportProductsRequest(product=product("IMP-1", 2))  # update by sku
        yield pb.ImportProductsRequest(product=product_pb2.Product(sku="bad sku"))
        yield pb.ImportProductsRequest(product=product("IMP-2", 3))  # create

    response = await stub.ImportProducts(items())
    assert (response.created_count, response.updated_count, response.failed_count) == (1, 1, 1)
    assert [r.index for r in response.results] == [0, 1, 2]
    assert response.results[0].product.price.units == 2
    assert response.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert response.results[2].product.sku == "IMP-2"
    listed = await stub.ListProducts(pb.ListProductsRequest(order_by="sku"))
    assert [p.sku for p in listed.products] == ["IMP-1", "IMP-2"]


async def test_import_names_a_new_product_as_asked(stub: Stub) -> None:
    existing = await stub.CreateProduct(pb.CreateProductRequest(product=product("NAMED-1")))
    named = product("NAMED-2")
    named.name = "products/teapot-07"
    clash = product("NAMED-1")  # its sku belongs to another product
    clash.name = "products/someone-else"

    async def items() -> AsyncIterator[pb.ImportProductsRequest]:
        yield pb.ImportProductsRequest(product=named)
        yield pb.ImportProductsRequest(product=clash)

    response = await stub.ImportProducts(items())
    assert response.results[0].product.name == "products/teapot-07"
    assert response.results[1].error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert existing.name in response.results[1].error.message
    got = await stub.GetProduct(pb.GetProductRequest(name="products/teapot-07"))
    assert got.sku == "NAMED-2"


async def test_watch_from_now_and_from_a_revision(stub: Stub) -> None:
    first = await stub.CreateProduct(pb.CreateProductRequest(product=product("W-1")))
    live = stub.WatchProducts(pb.WatchProductsRequest())
    await live.wait_for_connection()
    replay = stub.WatchProducts(pb.WatchProductsRequest(after_revision=int(first.etag) - 1))

    await stub.DeleteProduct(pb.DeleteProductRequest(name=first.name))
    live_change = await next_change(live)
    assert live_change.change_type == pb.CHANGE_TYPE_DELETED
    assert live_change.product.name == first.name

    replayed = [await next_change(replay), await next_change(replay)]
    assert [c.change_type for c in replayed] == [pb.CHANGE_TYPE_CREATED, pb.CHANGE_TYPE_DELETED]
    assert replayed[1].revision == live_change.revision
    live.cancel()
    replay.cancel()


async def test_many_concurrent_watchers_see_every_change_in_order(stub: Stub) -> None:
    watchers = [stub.WatchProducts(pb.WatchProductsRequest()) for _ in range(40)]
    await asyncio.gather(*(w.wait_for_connection() for w in watchers))
    created = [
        await stub.CreateProduct(pb.CreateProductRequest(product=product(f"CW-{i}")))
        for i in range(5)
    ]

    async def read_five(call: WatchCall) -> list[str]:
        return [(await next_change(call)).product.sku for _ in range(5)]

    results = await asyncio.gather(*(read_five(w) for w in watchers))
    assert all(skus == [p.sku for p in created] for skus in results)
    for watcher in watchers:
        watcher.cancel()


async def test_health_reports_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "emporium.catalog.v1.CatalogService"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
