"""Catalog entities."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from libs.money import Money

PRODUCT_PREFIX = "products/"


@dataclass(frozen=True)
class ProductDraft:
    """The fields a client sets; what create, update and import work on."""

    sku: str
    title: str
    description: str
    price: Money
    labels: Mapping[str, str] = field(default_factory=dict)


MUTABLE_FIELDS = ("sku", "title", "description", "price", "labels")


@dataclass(frozen=True)
class Product:
    product_id: str
    draft: ProductDraft
    create_time: datetime
    update_time: datetime
    revision: int

    @property
    def name(self) -> str:
        return PRODUCT_PREFIX + self.product_id

    @property
    def etag(self) -> str:
        return str(self.revision)

    def with_changes(self, changes: ProductDraft, paths: tuple[str, ...]) -> ProductDraft:
        """The draft after replacing `paths` (names from MUTABLE_FIELDS) by `changes`' values."""
        return replace(self.draft, **{path: getattr(changes, path) for path in paths})


class ChangeType(enum.Enum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class ProductChange:
    revision: int
    change_type: ChangeType
    product: Product
    change_time: datetime


class ImportOutcome(enum.Enum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
