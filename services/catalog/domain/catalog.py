"""Catalog use cases: what the API can ask of the catalog."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence

from libs.runtime.errors import DomainError, ErrorKind, invalid_field, not_found
from libs.runtime.pagination import page_request
from libs.runtime.resource_names import resource_id
from services.catalog.domain.change_feed import ChangeFeed
from services.catalog.domain.model import (
    MUTABLE_FIELDS,
    PRODUCT_PREFIX,
    ImportOutcome,
    Product,
    ProductChange,
    ProductDraft,
)
from services.catalog.domain.ports import CreateRequest, ProductRepository
from services.catalog.domain.query import parse_query
from services.catalog.domain.reasons import Reason

# Checks a draft against the contract's rules; raises INVALID_ARGUMENT naming fields under the
# given prefix (`product.`). The API layer provides it: the rules live in the contract.
DraftValidator = Callable[[ProductDraft, str], None]

PRODUCT_PATTERN = PRODUCT_PREFIX + "{product}"


def _new_product_id() -> str:
    return uuid.uuid4().hex[:16]


class Catalog:
    def __init__(
        self,
        repository: ProductRepository,
        feed: ChangeFeed,
        *,
        currency_code: str,
        validate_draft: DraftValidator,
        new_product_id: Callable[[], str] = _new_product_id,
    ) -> None:
        self._repository = repository
        self._feed = feed
        self.currency_code = currency_code
        self._validate_draft = validate_draft
        self._new_product_id = new_product_id

    async def get(self, name: str) -> Product:
        product = await self._repository.get(product_id_of(name, "name"))
        if product is None:
            raise not_found(name, Reason.PRODUCT_NOT_FOUND)
        return product

    async def list(
        self, filter_text: str, order_by: str, page_size: int, page_token: str
    ) -> tuple[list[Product], str, int]:
        query = parse_query(filter_text, order_by)
        page = page_request(page_size, page_token, filter_text, order_by)
        products, total = await self._repository.list(query, page.offset, page.limit)
        return products, page.next_token(len(products), total), total

    async def create(
        self, draft: ProductDraft, product_id: str, request_id: str, fingerprint: str
    ) -> Product:
        self._check_currency(draft, "product.")
        product, created = await self._repository.create(
            CreateRequest(draft, product_id or self._new_product_id(), request_id, fingerprint)
        )
        if created:
            self._feed.nudge()
        return product

    async def update(
        self, name: str, changes: ProductDraft, paths: Sequence[str], etag: str
    ) -> Product:
        product_id = product_id_of(name, "product.name")
        unknown = [path for path in paths if path not in (*MUTABLE_FIELDS, "*")]
        if unknown:
            raise invalid_field(
                "update_mask",
                f"unknown or immutable field(s) {', '.join(unknown)}; "
                f"updatable: {', '.join(MUTABLE_FIELDS)}",
                Reason.INVALID_FIELD_MASK,
            )
        selected = MUTABLE_FIELDS if not paths or "*" in paths else tuple(paths)

        def change(current: Product) -> ProductDraft:
            # Runs on the stored product, locked: without an etag, concurrent updates take turns
            # and each applies its fields to the previous one's result; with one, a product
            # changed since is ABORTED.
            if etag and etag != current.etag:
                raise _etag_mismatch(name, etag, current.etag)
            merged = current.with_changes(changes, selected)
            self._validate_draft(merged, "product.")
            self._check_currency(merged, "product.")
            return merged

        updated = await self._repository.update(product_id, change)
        if updated is None:
            raise not_found(name, Reason.PRODUCT_NOT_FOUND)
        self._feed.nudge()
        return updated

    async def delete(self, name: str, etag: str) -> None:
        product_id = product_id_of(name, "name")

        def check(current: Product) -> None:
            if etag and etag != current.etag:
                raise _etag_mismatch(name, etag, current.etag)

        if await self._repository.delete(product_id, check) is None:
            raise not_found(name, Reason.PRODUCT_NOT_FOUND)
        self._feed.nudge()

    async def import_product(
        self, draft: ProductDraft, name: str = ""
    ) -> tuple[Product, ImportOutcome]:
        """Creates or updates the product with draft's sku, named `name` if given (else the
        server picks the id of a new one). The draft is already validated."""
        self._check_currency(draft, "product.")
        product_id = product_id_of(name, "product.name") if name else self._new_product_id()
        result = await self._repository.upsert_by_sku(draft, product_id, named=bool(name))
        self._feed.nudge()
        return result

    async def watch(self, after_revision: int | None) -> AsyncIterator[ProductChange]:
        """Subscribes at once; iterate the result for the changes."""
        return await self._feed.subscribe(after_revision)

    def _check_currency(self, draft: ProductDraft, prefix: str) -> None:
        if draft.price.currency_code != self.currency_code:
            raise invalid_field(
                f"{prefix}price.currency_code",
                f"the catalog is priced in {self.currency_code}, "
                f"not {draft.price.currency_code or 'an empty currency'}",
                Reason.CURRENCY_NOT_SUPPORTED,
            )


def product_id_of(name: str, field_path: str) -> str:
    return resource_id(name, PRODUCT_PATTERN, field_path)


def _etag_mismatch(name: str, given: str, current: str) -> DomainError:
    return DomainError(
        ErrorKind.ABORTED,
        Reason.ETAG_MISMATCH,
        f"{name} changed since etag {given!r} was read (current etag {current!r}); "
        "read it again and retry",
        {"resource": name, "current_etag": current},
    )
