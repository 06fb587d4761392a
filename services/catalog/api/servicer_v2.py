"""CatalogService v2 over gRPC: the same use cases, the v2 shape (price as a decimal string)."""

from __future__ import annotations

import grpc

from emporium.catalog.v2 import catalog_service_pb2 as pb
from emporium.catalog.v2 import catalog_service_pb2_grpc as pb_grpc
from libs.storage.timestamps import timestamp_message
from services.catalog.domain.catalog import Catalog
from services.catalog.domain.model import Product

Context = grpc.aio.ServicerContext[object, object]


def product_message(product: Product) -> pb.Product:
    draft = product.draft
    message = pb.Product(
        name=product.name,
        sku=draft.sku,
        title=draft.title,
        description=draft.description,
        price=pb.Price(amount=draft.price.decimal_text(), currency=draft.price.currency_code),
        labels=dict(draft.labels),
        etag=product.etag,
    )
    message.create_time.CopyFrom(timestamp_message(product.create_time))
    message.update_time.CopyFrom(timestamp_message(product.update_time))
    return message


class CatalogServicerV2(pb_grpc.CatalogServiceServicer):
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    async def GetProduct(self, request: pb.GetProductRequest, context: Context) -> pb.Product:
        return product_message(await self._catalog.get(request.name))

    async def ListProducts(
        self, request: pb.ListProductsRequest, context: Context
    ) -> pb.ListProductsResponse:
        products, next_token, total = await self._catalog.list(
            request.filter, request.order_by, request.page_size, request.page_token
        )
        return pb.ListProductsResponse(
            products=[product_message(p) for p in products],
            next_page_token=next_token,
            total_size=total,
        )
