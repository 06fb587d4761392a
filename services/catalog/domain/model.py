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
    revision: int  # increasing in the change log's order, with gaps (see Horizon)
    change_type: ChangeType
    product: Product
    change_time: datetime


@dataclass(frozen=True)
class Horizon:
    """The change log as one read saw it ("now"). Revisions increase in the log's order but are
    not dense, and on PostgreSQL changes commit out of revision order: a change is final (and
    readable) once nothing can commit below it (adapters/sql_repository.py).

    `revision`: the last final change (0: none); every change up to it is committed, and no
    other can ever appear up to it. `next_revision`: no change committed by then has a revision
    at or above it. `pending`: revisions between the two that were still uncommitted then."""

    revision: int
    next_revision: int
    pending: frozenset[int] = frozenset()

    def committed_by_then(self, revision: int) -> bool:
        """Whether the change numbered `revision` had committed by then (a watcher "from now"
        skips it)."""
        return revision < self.next_revision and revision not in self.pending


class ImportOutcome(enum.Enum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
