"""What the catalog needs from storage. adapters/sql_repository.py implements it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.catalog.domain.model import ImportOutcome, Product, ProductChange, ProductDraft
from services.catalog.domain.query import ProductQuery


@dataclass(frozen=True)
class CreateRequest:
    draft: ProductDraft
    product_id: str
    request_id: str
    fingerprint: str


class ProductRepository(Protocol):
    async def get(self, product_id: str) -> Product | None: ...

    async def list(self, query: ProductQuery, offset: int, limit: int) -> tuple[list[Product], int]:
        """One page of matching products and the number of matches."""
        ...

    async def create(self, request: CreateRequest) -> tuple[Product, bool]:
        """Creates the product, or returns the one an earlier call with the same request_id made
        (second value False). Raises DomainError for a reused request_id, id or sku."""
        ...

    async def update(self, product_id: str, draft: ProductDraft, expected_revision: int) -> Product:
        """Raises DomainError ABORTED when the product changed since `expected_revision`."""
        ...

    async def delete(self, product_id: str, expected_revision: int | None) -> Product: ...

    async def upsert_by_sku(
        self, draft: ProductDraft, new_id: str, *, named: bool = False
    ) -> tuple[Product, ImportOutcome]:
        """Updates the product with draft's sku, or creates it as `new_id`. `named`: the caller
        chose `new_id`, so the sku must be new or already that product's."""
        ...

    async def changes_after(self, revision: int, limit: int) -> Sequence[ProductChange]: ...

    async def last_revision(self) -> int: ...
