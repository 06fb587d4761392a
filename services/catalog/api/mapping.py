"""Protobuf <-> domain mapping for the catalog."""

from __future__ import annotations

from google.type import money_pb2

from emporium.catalog.v1 import catalog_service_pb2 as pb
from emporium.catalog.v1 import product_pb2
from libs.money import Money
from libs.runtime.validation import check
from libs.storage.timestamps import timestamp_message
from services.catalog.domain.model import ChangeType, Product, ProductChange, ProductDraft

CHANGE_TYPES = {
    ChangeType.CREATED: pb.CHANGE_TYPE_CREATED,
    ChangeType.UPDATED: pb.CHANGE_TYPE_UPDATED,
    ChangeType.DELETED: pb.CHANGE_TYPE_DELETED,
}


def draft_of(message: product_pb2.Product) -> ProductDraft:
    return ProductDraft(
        sku=message.sku,
        title=message.title,
        description=message.description,
        price=Money(message.price.currency_code, message.price.units, message.price.nanos),
        labels=dict(message.labels),
    )


def draft_message(draft: ProductDraft) -> product_pb2.Product:
    return product_pb2.Product(
        sku=draft.sku,
        title=draft.title,
        description=draft.description,
        price=money_pb2.Money(
            currency_code=draft.price.currency_code,
            units=draft.price.units,
            nanos=draft.price.nanos,
        ),
        labels=dict(draft.labels),
    )


def product_message(product: Product) -> product_pb2.Product:
    message = draft_message(product.draft)
    message.name = product.name
    message.etag = product.etag
    message.create_time.CopyFrom(timestamp_message(product.create_time))
    message.update_time.CopyFrom(timestamp_message(product.update_time))
    return message


def change_message(change: ProductChange) -> pb.WatchProductsResponse:
    return pb.WatchProductsResponse(
        revision=change.revision,
        change_type=CHANGE_TYPES[change.change_type],
        product=product_message(change.product),
        change_time=timestamp_message(change.change_time),
    )


def validate_draft(draft: ProductDraft, prefix: str) -> None:
    """The contract's Product rules applied to a draft (DraftValidator for the domain)."""
    check(draft_message(draft), prefix.rstrip("."))
