"""ProductRepository on SQLAlchemy async core: the same SQL for SQLite and PostgreSQL.

Every write appends to `product_changes` in the same transaction, so the change log (and with it
WatchProducts) can never miss or invent a change. Writers run concurrently (within a process and
across replicas); each locks the product rows it changes (FOR UPDATE on PostgreSQL, BEGIN
IMMEDIATE on SQLite) and numbers its change last, inside `ordered_section`, held only from
numbering to commit: so revisions are dense and commit in their order, and a watcher reading
`revision > n` never sees n+2 before n+1 (tests/test_change_log_concurrency.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.money import Money
from libs.runtime.errors import DomainError, ErrorKind, invalid_field
from libs.storage.database import Database, creating_tables, ordered_section
from libs.storage.timestamps import from_micros, now_micros, to_micros
from services.catalog.domain.model import (
    ChangeType,
    ImportOutcome,
    Product,
    ProductChange,
    ProductDraft,
)
from services.catalog.domain.query import PriceCondition, ProductQuery
from services.catalog.domain.repository import CreateRequest

metadata = sa.MetaData()

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("sku", sa.String(64), nullable=False, unique=True),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("price_currency", sa.String(3), nullable=False),
    sa.Column("price_nanos", sa.BigInteger, nullable=False),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("create_us", sa.BigInteger, nullable=False),
    sa.Column("update_us", sa.BigInteger, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
)
product_labels = sa.Table(
    "product_labels",
    metadata,
    sa.Column(
        "product_id",
        sa.String(64),
        sa.ForeignKey("products.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
    sa.Index("ix_product_labels_key_value", "key", "value"),
)
product_changes = sa.Table(
    "product_changes",
    metadata,
    sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("product_id", sa.String(64), nullable=False),
    sa.Column("change_type", sa.String(16), nullable=False),
    sa.Column("snapshot", sa.Text, nullable=False),
    sa.Column("change_us", sa.BigInteger, nullable=False),
)
create_requests = sa.Table(
    "create_requests",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("snapshot", sa.Text, nullable=False),
)


MIGRATIONS = (creating_tables(1, "products, labels, change log, create request ids", metadata),)

_ORDER_COLUMNS = {
    "title": products.c.title,
    "sku": products.c.sku,
    "price": products.c.price_nanos,
    "create_time": products.c.create_us,
    "update_time": products.c.update_us,
}


class SqlProductRepository:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._engine = database.engine

    async def get(self, product_id: str) -> Product | None:
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(sa.select(products).where(products.c.id == product_id))
            ).first()
        return _product(row._mapping) if row else None

    async def list(self, query: ProductQuery, offset: int, limit: int) -> tuple[list[Product], int]:
        conditions: list[Any] = [_price_condition(c) for c in query.price]
        for key, value in query.labels.items():
            conditions.append(
                sa.exists().where(
                    product_labels.c.product_id == products.c.id,
                    product_labels.c.key == key,
                    product_labels.c.value == value,
                )
            )
        ordering = [
            _ORDER_COLUMNS[name].desc() if descending else _ORDER_COLUMNS[name].asc()
            for name, descending in query.order
        ]
        select = (
            sa.select(products)
            .where(*conditions)
            .order_by(*ordering, products.c.id)
            .offset(offset)
            .limit(limit)
        )
        count = sa.select(sa.func.count()).select_from(products).where(*conditions)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(select)).all()
            total = (await connection.execute(count)).scalar_one()
        return [_product(row._mapping) for row in rows], int(total)

    async def create(self, request: CreateRequest) -> tuple[Product, bool]:
        async with self._database.writing() as connection:
            if request.request_id:
                earlier = (
                    await connection.execute(
                        sa.select(create_requests).where(
                            create_requests.c.request_id == request.request_id
                        )
                    )
                ).first()
                if earlier is not None:
                    if earlier.fingerprint != request.fingerprint:
                        raise invalid_field(
                            "request_id",
                            "was already used for a different request; use a new request_id",
                            "REQUEST_ID_REUSED",
                        )
                    return _from_snapshot(earlier.snapshot), False
            if await _exists(connection, products.c.id == request.product_id):
                raise _already_exists(
                    "PRODUCT_EXISTS",
                    f"products/{request.product_id} exists",
                    resource=f"products/{request.product_id}",
                )
            await self._check_sku_free(connection, request.draft.sku)
            product = await _insert(connection, request.product_id, request.draft)
            if request.request_id:
                await connection.execute(
                    create_requests.insert().values(
                        request_id=request.request_id,
                        fingerprint=request.fingerprint,
                        snapshot=_snapshot(product),
                    )
                )
            return product, True

    async def update(self, product_id: str, draft: ProductDraft, expected_revision: int) -> Product:
        async with self._database.writing() as connection:
            current = await _locked_current(connection, product_id, expected_revision)
            if draft.sku != current.draft.sku:
                await self._check_sku_free(connection, draft.sku)
            return await _write_update(connection, current, draft)

    async def delete(self, product_id: str, expected_revision: int | None) -> Product:
        async with self._database.writing() as connection:
            current = await _locked_current(connection, product_id, expected_revision)
            revision = await _next_revision(connection)
            await connection.execute(products.delete().where(products.c.id == product_id))
            await connection.execute(
                product_labels.delete().where(product_labels.c.product_id == product_id)
            )
            await _record(connection, revision, ChangeType.DELETED, current, now_micros())
            return current

    async def upsert_by_sku(
        self, draft: ProductDraft, new_id: str, *, named: bool = False
    ) -> tuple[Product, ImportOutcome]:
        async with self._database.writing() as connection:
            row = (
                await connection.execute(
                    sa.select(products).where(products.c.sku == draft.sku).with_for_update()
                )
            ).first()
            if named and row is not None and row.id != new_id:
                raise _already_exists(
                    "SKU_TAKEN",
                    f"sku {draft.sku!r} belongs to products/{row.id}, not products/{new_id}",
                    sku=draft.sku,
                )
            if row is None:
                if named and await _exists(connection, products.c.id == new_id):
                    raise _already_exists(
                        "PRODUCT_EXISTS",
                        f"products/{new_id} exists with another sku",
                        resource=f"products/{new_id}",
                    )
                return await _insert(connection, new_id, draft), ImportOutcome.CREATED
            return await _write_update(
                connection, _product(row._mapping), draft
            ), ImportOutcome.UPDATED

    async def changes_after(self, revision: int, limit: int) -> Sequence[ProductChange]:
        async with self._engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.select(product_changes)
                    .where(product_changes.c.revision > revision)
                    .order_by(product_changes.c.revision)
                    .limit(limit)
                )
            ).all()
        return [
            ProductChange(
                revision=row.revision,
                change_type=ChangeType(row.change_type),
                product=_from_snapshot(row.snapshot),
                change_time=from_micros(row.change_us),
            )
            for row in rows
        ]

    async def last_revision(self) -> int:
        async with self._engine.connect() as connection:
            return await _last_revision(connection)

    async def _check_sku_free(self, connection: AsyncConnection, sku: str) -> None:
        if await _exists(connection, products.c.sku == sku):
            raise _already_exists("SKU_TAKEN", f"another product has sku {sku!r}", sku=sku)


async def _insert(connection: AsyncConnection, product_id: str, draft: ProductDraft) -> Product:
    now = now_micros()
    revision = await _next_revision(connection)
    product = Product(product_id, draft, from_micros(now), from_micros(now), revision)
    await connection.execute(
        products.insert().values(
            id=product_id, create_us=now, update_us=now, revision=revision, **_columns(draft)
        )
    )
    await _write_labels(connection, product_id, draft)
    await _record(connection, revision, ChangeType.CREATED, product, now)
    return product


async def _write_update(
    connection: AsyncConnection, current: Product, draft: ProductDraft
) -> Product:
    now = now_micros()
    revision = await _next_revision(connection)
    product = Product(current.product_id, draft, current.create_time, from_micros(now), revision)
    await connection.execute(
        products.update()
        .where(products.c.id == current.product_id)
        .values(update_us=now, revision=revision, **_columns(draft))
    )
    await connection.execute(
        product_labels.delete().where(product_labels.c.product_id == current.product_id)
    )
    await _write_labels(connection, current.product_id, draft)
    await _record(connection, revision, ChangeType.UPDATED, product, now)
    return product


async def _locked_current(
    connection: AsyncConnection, product_id: str, expected_revision: int | None
) -> Product:
    locked = sa.select(products).where(products.c.id == product_id).with_for_update()
    row = (await connection.execute(locked)).first()
    if row is None:
        raise DomainError(
            ErrorKind.NOT_FOUND,
            "PRODUCT_NOT_FOUND",
            f"products/{product_id} not found",
            {"resource": f"products/{product_id}"},
        )
    current = _product(row._mapping)
    if expected_revision is not None and current.revision != expected_revision:
        raise DomainError(
            ErrorKind.ABORTED,
            "CONCURRENT_MODIFICATION",
            f"products/{product_id} changed concurrently; read it again and retry",
            {"resource": f"products/{product_id}", "current_etag": current.etag},
        )
    return current


async def _write_labels(connection: AsyncConnection, product_id: str, draft: ProductDraft) -> None:
    if draft.labels:
        await connection.execute(
            product_labels.insert(),
            [
                {"product_id": product_id, "key": key, "value": value}
                for key, value in draft.labels.items()
            ],
        )


async def _record(
    connection: AsyncConnection, revision: int, change: ChangeType, product: Product, now: int
) -> None:
    await connection.execute(
        product_changes.insert().values(
            revision=revision,
            product_id=product.product_id,
            change_type=change.value,
            snapshot=_snapshot(product),
            change_us=now,
        )
    )


_CHANGE_LOG = 0x43A7A106  # ordered_section's key for the change log


async def _next_revision(connection: AsyncConnection) -> int:
    """Call it after the checks, before the writes that carry the revision."""
    await ordered_section(connection, _CHANGE_LOG)
    return await _last_revision(connection) + 1


async def _last_revision(connection: AsyncConnection) -> int:
    value = (
        await connection.execute(
            sa.select(sa.func.coalesce(sa.func.max(product_changes.c.revision), 0))
        )
    ).scalar_one()
    return int(value)


async def _exists(connection: AsyncConnection, condition: Any) -> bool:
    return (await connection.execute(sa.select(products.c.id).where(condition))).first() is not None


def _already_exists(reason: str, message: str, **metadata: str) -> DomainError:
    return DomainError(ErrorKind.ALREADY_EXISTS, reason, message, metadata)


def _price_condition(condition: PriceCondition) -> Any:
    column = products.c.price_nanos
    value = condition.total_nanos
    return {
        "=": column == value,
        "!=": column != value,
        "<": column < value,
        "<=": column <= value,
        ">": column > value,
        ">=": column >= value,
    }[condition.op]


def _columns(draft: ProductDraft) -> dict[str, Any]:
    return {
        "sku": draft.sku,
        "title": draft.title,
        "description": draft.description,
        "price_currency": draft.price.currency_code,
        "price_nanos": draft.price.total_nanos,
        "labels": json.dumps(dict(draft.labels), sort_keys=True),
    }


def _product(row: Any) -> Product:
    draft = ProductDraft(
        sku=row["sku"],
        title=row["title"],
        description=row["description"],
        price=Money.from_total_nanos(row["price_currency"], row["price_nanos"]),
        labels=json.loads(row["labels"]),
    )
    return Product(
        row["id"],
        draft,
        from_micros(row["create_us"]),
        from_micros(row["update_us"]),
        row["revision"],
    )


def _snapshot(product: Product) -> str:
    return json.dumps(
        {
            "id": product.product_id,
            **_columns(product.draft),
            "create_us": to_micros(product.create_time),
            "update_us": to_micros(product.update_time),
            "revision": product.revision,
        }
    )


def _from_snapshot(snapshot: str) -> Product:
    return _product(json.loads(snapshot))
