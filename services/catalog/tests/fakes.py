"""An in-memory fake of the catalog's repository port, for domain unit tests (no database)."""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from libs.runtime.errors import DomainError, ErrorKind
from services.catalog.domain.model import (
    ChangeType,
    Horizon,
    ImportOutcome,
    Product,
    ProductChange,
    ProductDraft,
)
from services.catalog.domain.ports import CreateRequest, DraftChange, ProductCheck
from services.catalog.domain.query import ProductQuery

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class InMemoryProductRepository:
    """Keeps the SQL repository's promises: unique ids and skus, request_id idempotency, a
    revision per change and a change log."""

    def __init__(self) -> None:
        self.products: dict[str, Product] = {}
        self.requests: dict[str, tuple[str, str]] = {}  # request_id -> (product_id, fingerprint)
        self.changes: list[ProductChange] = []

    async def get(self, product_id: str) -> Product | None:
        return self.products.get(product_id)

    async def list(self, query: ProductQuery, offset: int, limit: int) -> tuple[list[Product], int]:
        found = [p for p in self.products.values() if _matches(p, query)]
        for field, descending in reversed(query.order or (("product_id", False),)):
            found.sort(key=functools.partial(_sort_key, field=field), reverse=descending)
        return found[offset : offset + limit], len(found)

    async def create(self, request: CreateRequest) -> tuple[Product, bool]:
        earlier = self.requests.get(request.request_id)
        if earlier is not None:
            product_id, fingerprint = earlier
            if fingerprint != request.fingerprint:
                raise _exists("REQUEST_ID_REUSED", "request_id was used for another product")
            return self.products[product_id], False
        if request.product_id in self.products:
            raise _exists("PRODUCT_ALREADY_EXISTS", f"products/{request.product_id} exists")
        self._check_sku(request.draft.sku, request.product_id)
        product = Product(request.product_id, request.draft, NOW, NOW, self._next_revision())
        self._record(ChangeType.CREATED, product)
        self.requests[request.request_id] = (request.product_id, request.fingerprint)
        return product, True

    async def update(self, product_id: str, change: DraftChange) -> Product | None:
        current = self.products.get(product_id)
        if current is None:
            return None
        draft = change(current)
        self._check_sku(draft.sku, product_id)
        product = dataclasses.replace(current, draft=draft, revision=self._next_revision())
        self._record(ChangeType.UPDATED, product)
        return product

    async def delete(self, product_id: str, check: ProductCheck) -> Product | None:
        current = self.products.get(product_id)
        if current is None:
            return None
        check(current)
        del self.products[product_id]
        self.changes.append(ProductChange(self._next_revision(), ChangeType.DELETED, current, NOW))
        return current

    async def upsert_by_sku(
        self, draft: ProductDraft, new_id: str, *, named: bool = False
    ) -> tuple[Product, ImportOutcome]:
        same_sku = next((p for p in self.products.values() if p.draft.sku == draft.sku), None)
        if same_sku is None:
            if new_id in self.products:
                raise _exists("PRODUCT_ALREADY_EXISTS", f"products/{new_id} exists")
            product = Product(new_id, draft, NOW, NOW, self._next_revision())
            self._record(ChangeType.CREATED, product)
            return product, ImportOutcome.CREATED
        if named and same_sku.product_id != new_id:
            raise _exists("SKU_TAKEN", f"another product has sku {draft.sku!r}")
        product = dataclasses.replace(same_sku, draft=draft, revision=self._next_revision())
        self._record(ChangeType.UPDATED, product)
        return product, ImportOutcome.UPDATED

    async def changes_after(self, revision: int, limit: int) -> Sequence[ProductChange]:
        return [c for c in self.changes if c.revision > revision][:limit]

    async def horizon(self) -> Horizon:
        last = self.changes[-1].revision if self.changes else 0
        return Horizon(last, last + 1)

    def _next_revision(self) -> int:
        return len(self.changes) + 1

    def _record(self, change_type: ChangeType, product: Product) -> None:
        self.products[product.product_id] = product
        self.changes.append(ProductChange(product.revision, change_type, product, NOW))

    def _check_sku(self, sku: str, product_id: str) -> None:
        if any(p.draft.sku == sku and p.product_id != product_id for p in self.products.values()):
            raise _exists("SKU_TAKEN", f"another product has sku {sku!r}")


def _matches(product: Product, query: ProductQuery) -> bool:
    labels = product.draft.labels
    return all(labels.get(key) == value for key, value in query.labels.items()) and all(
        _COMPARE[condition.op](product.draft.price.total_nanos, condition.total_nanos)
        for condition in query.price
    )


def _sort_key(product: Product, field: str) -> str | int | datetime:
    if field == "price":
        return product.draft.price.total_nanos
    if field in ("create_time", "update_time", "product_id"):
        value: str | datetime = getattr(product, field)
        return value
    text: str = getattr(product.draft, field)
    return text


def _exists(reason: str, message: str) -> DomainError:
    return DomainError(ErrorKind.ALREADY_EXISTS, reason, message)
