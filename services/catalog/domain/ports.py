"""What the catalog needs from storage. adapters/sql_repository.py implements it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.catalog.domain.model import (
    Horizon,
    ImportOutcome,
    Product,
    ProductChange,
    ProductDraft,
)
from services.catalog.domain.query import ProductQuery


@dataclass(frozen=True)
class CreateRequest:
    draft: ProductDraft
    product_id: str
    request_id: str
    fingerprint: str


# Given the product as stored (locked until the write commits), the draft to store, or raises
# DomainError (a stale etag, an invalid draft) to change nothing. Plain functions: they run
# inside the write transaction (on SQLite, on the database's thread), so they must be quick.
DraftChange = Callable[[Product], ProductDraft]
# Given the product as stored (locked), raises DomainError to change nothing.
ProductCheck = Callable[[Product], None]


class ProductRepository(Protocol):
    async def get(self, product_id: str) -> Product | None: ...

    async def list(self, query: ProductQuery, offset: int, limit: int) -> tuple[list[Product], int]:
        """One page of matching products and the number of matches."""
        ...

    async def create(self, request: CreateRequest) -> tuple[Product, bool]:
        """Creates the product, or returns the one an earlier call with the same request_id made
        (second value False). Raises DomainError for a reused request_id, id or sku."""
        ...

    async def update(self, product_id: str, change: DraftChange) -> Product | None:
        """Stores `change(current)` in one transaction with the read of `current`, locked: a
        concurrent writer waits for this one, then sees its result. None: no such product."""
        ...

    async def delete(self, product_id: str, check: ProductCheck) -> Product | None:
        """Deletes the product if `check(current)` passes (same transaction, locked); returns it
        as it was. None: no such product."""
        ...

    async def upsert_by_sku(
        self, draft: ProductDraft, new_id: str, *, named: bool = False
    ) -> tuple[Product, ImportOutcome]:
        """Updates the product with draft's sku, or creates it as `new_id`. `named`: the caller
        chose `new_id`, so the sku must be new or already that product's."""
        ...

    async def changes_after(self, revision: int, limit: int) -> Sequence[ProductChange]:
        """Up to `limit` changes after `revision`, in revision order: only final ones (below the
        committed watermark), so a reader that continues after the last one it got never misses
        one and never sees one out of order."""
        ...

    async def horizon(self) -> Horizon:
        """Where the change log is now (where a watcher "from now" starts)."""
        ...
