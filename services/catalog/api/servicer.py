"""CatalogService over gRPC: protobuf in, domain calls, protobuf out. Errors are DomainErrors,
turned into rich statuses by the runtime's middleware."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf import empty_pb2

from emporium.catalog.v1 import catalog_service_pb2 as pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from emporium.catalog.v1 import product_pb2
from libs.runtime.errors import DomainError, invalid_field
from libs.runtime.idempotency import fingerprint
from libs.runtime.reasons import SharedReason
from libs.runtime.rich_status import status_of
from libs.runtime.validation import check
from services.catalog.api.mapping import change_message, draft_of, product_message
from services.catalog.domain.catalog import Catalog
from services.catalog.domain.model import ImportOutcome

DOMAIN = "catalog.emporium.dev"
Context = grpc.aio.ServicerContext[object, object]


class CatalogServicer(pb_grpc.CatalogServiceServicer):
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    async def GetProduct(
        self, request: pb.GetProductRequest, context: Context
    ) -> product_pb2.Product:
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

    async def CreateProduct(
        self, request: pb.CreateProductRequest, context: Context
    ) -> product_pb2.Product:
        product = await self._catalog.create(
            draft_of(request.product),
            request.product_id,
            request.request_id,
            fingerprint(request),
        )
        return product_message(product)

    async def UpdateProduct(
        self, request: pb.UpdateProductRequest, context: Context
    ) -> product_pb2.Product:
        if not request.HasField("product"):
            raise invalid_field("product", "is required", SharedReason.REQUIRED)
        product = await self._catalog.update(
            request.product.name,
            draft_of(request.product),
            list(request.update_mask.paths),
            request.product.etag,
        )
        return product_message(product)

    async def DeleteProduct(
        self, request: pb.DeleteProductRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._catalog.delete(request.name, request.etag)
        return empty_pb2.Empty()

    async def ImportProducts(
        self, request_iterator: AsyncIterator[pb.ImportProductsRequest], context: Context
    ) -> pb.ImportProductsResponse:
        response = pb.ImportProductsResponse()
        index = 0
        async for item in request_iterator:
            result = response.results.add(index=index)
            index += 1
            try:
                if not item.HasField("product"):
                    raise invalid_field("product", "is required", SharedReason.REQUIRED)
                check(item.product, "product")
                product, outcome = await self._catalog.import_product(
                    draft_of(item.product), item.product.name
                )
            except DomainError as error:
                result.error.CopyFrom(status_of(error, DOMAIN)[1])
                response.failed_count += 1
                continue
            result.product.CopyFrom(product_message(product))
            if outcome is ImportOutcome.CREATED:
                response.created_count += 1
            else:
                response.updated_count += 1
        return response

    async def WatchProducts(
        self, request: pb.WatchProductsRequest, context: Context
    ) -> AsyncIterator[pb.WatchProductsResponse]:
        after = request.after_revision if request.HasField("after_revision") else None
        changes = await self._catalog.watch(after)
        # Headers go out once subscribed: a client that has them cannot miss a change.
        await context.send_initial_metadata(())
        async for change in changes:
            yield change_message(change)
