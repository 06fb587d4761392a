"""ProductRepository: each operation one transaction function handed to the database whole
(`Database.transaction`), the same SQL for SQLite and PostgreSQL. The tables are declared with
SQLAlchemy for the migration that creates them.

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

from libs.money import Money
from libs.runtime.errors import DomainError, ErrorKind, invalid_field
from libs.storage.database import Database, creating_tables
from libs.storage.timestamps import from_micros, now_micros, to_micros
from libs.storage.transaction import Row, Transaction, ordered_section
from services.catalog.domain.model import (
    ChangeType,
    ImportOutcome,
    Product,
    ProductChange,
    ProductDraft,
)
from services.catalog.domain.ports import CreateRequest
from services.catalog.domain.query import ProductQuery

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
    "title": "title",
    "sku": "sku",
    "price": "price_nanos",
    "create_time": "create_us",
    "update_time": "update_us",
}
_PRICE_OPERATORS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_PRODUCT = (
    "SELECT id, sku, title, description, price_currency, price_nanos, labels, create_us,"
    " update_us, revision FROM products"
)


class SqlProductRepository:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def get(self, product_id: str) -> Product | None:
        async def get(tx: Transaction) -> Product | None:
            row = await tx.fetchrow(f"{_PRODUCT} WHERE id = $1", product_id)
            return _product(row) if row else None

        return await self._database.transaction(get, write=False)

    async def list(self, query: ProductQuery, offset: int, limit: int) -> tuple[list[Product], int]:
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        conditions = [
            f"price_nanos {_PRICE_OPERATORS[c.op]} {arg(c.total_nanos)}" for c in query.price
        ]
        for key, value in query.labels.items():
            conditions.append(
                "EXISTS (SELECT 1 FROM product_labels WHERE product_labels.product_id ="
                f" products.id AND product_labels.key = {arg(key)}"
                f" AND product_labels.value = {arg(value)})"
            )
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        count_sql, count_args = f"SELECT count(*) FROM products{where}", list(args)
        ordering = "".join(
            f"{_ORDER_COLUMNS[name]} {'DESC' if descending else 'ASC'}, "
            for name, descending in query.order
        )
        select = f"{_PRODUCT}{where} ORDER BY {ordering}id LIMIT {arg(limit)} OFFSET {arg(offset)}"

        async def page(tx: Transaction) -> tuple[list[Product], int]:
            rows = await tx.fetch(select, *args)
            total = await tx.fetchrow(count_sql, *count_args)
            assert total is not None
            return [_product(row) for row in rows], int(total[0])

        return await self._database.transaction(page, write=False)

    async def create(self, request: CreateRequest) -> tuple[Product, bool]:
        async def create(tx: Transaction) -> tuple[Product, bool]:
            if request.request_id:
                earlier = await tx.fetchrow(
                    "SELECT fingerprint, snapshot FROM create_requests WHERE request_id = $1",
                    request.request_id,
                )
                if earlier is not None:
                    if earlier["fingerprint"] != request.fingerprint:
                        raise invalid_field(
                            "request_id",
                            "was already used for a different request; use a new request_id",
                            "REQUEST_ID_REUSED",
                        )
                    return _from_snapshot(earlier["snapshot"]), False
            if await _exists(tx, "id", request.product_id):
                raise _already_exists(
                    "PRODUCT_EXISTS",
                    f"products/{request.product_id} exists",
                    resource=f"products/{request.product_id}",
                )
            await _check_sku_free(tx, request.draft.sku)
            product = await _insert(tx, request.product_id, request.draft)
            if request.request_id:
                await tx.execute(
                    "INSERT INTO create_requests (request_id, fingerprint, snapshot)"
                    " VALUES ($1, $2, $3)",
                    request.request_id,
                    request.fingerprint,
                    _snapshot(product),
                )
            return product, True

        return await self._database.transaction(create)

    async def update(self, product_id: str, draft: ProductDraft, expected_revision: int) -> Product:
        async def update(tx: Transaction) -> Product:
            current = await _locked_current(tx, product_id, expected_revision)
            if draft.sku != current.draft.sku:
                await _check_sku_free(tx, draft.sku)
            return await _write_update(tx, current, draft)

        return await self._database.transaction(update)

    async def delete(self, product_id: str, expected_revision: int | None) -> Product:
        async def delete(tx: Transaction) -> Product:
            current = await _locked_current(tx, product_id, expected_revision)
            revision = await _next_revision(tx)
            await tx.execute("DELETE FROM product_labels WHERE product_id = $1", product_id)
            await tx.execute("DELETE FROM products WHERE id = $1", product_id)
            await _record(tx, revision, ChangeType.DELETED, current, now_micros())
            return current

        return await self._database.transaction(delete)

    async def upsert_by_sku(
        self, draft: ProductDraft, new_id: str, *, named: bool = False
    ) -> tuple[Product, ImportOutcome]:
        async def upsert(tx: Transaction) -> tuple[Product, ImportOutcome]:
            row = await tx.fetchrow(f"{_PRODUCT} WHERE sku = $1 FOR UPDATE", draft.sku)
            if named and row is not None and row["id"] != new_id:
                raise _already_exists(
                    "SKU_TAKEN",
                    f"sku {draft.sku!r} belongs to products/{row['id']}, not products/{new_id}",
                    sku=draft.sku,
                )
            if row is None:
                if named and await _exists(tx, "id", new_id):
                    raise _already_exists(
                        "PRODUCT_EXISTS",
                        f"products/{new_id} exists with another sku",
                        resource=f"products/{new_id}",
                    )
                return await _insert(tx, new_id, draft), ImportOutcome.CREATED
            return await _write_update(tx, _product(row), draft), ImportOutcome.UPDATED

        return await self._database.transaction(upsert)

    async def changes_after(self, revision: int, limit: int) -> Sequence[ProductChange]:
        async def changes(tx: Transaction) -> list[Row]:
            return await tx.fetch(
                "SELECT revision, change_type, snapshot, change_us FROM product_changes"
                " WHERE revision > $1 ORDER BY revision LIMIT $2",
                revision,
                limit,
            )

        return [
            ProductChange(
                revision=row["revision"],
                change_type=ChangeType(row["change_type"]),
                product=_from_snapshot(row["snapshot"]),
                change_time=from_micros(row["change_us"]),
            )
            for row in await self._database.transaction(changes, write=False)
        ]

    async def last_revision(self) -> int:
        return await self._database.transaction(_last_revision, write=False)


async def _check_sku_free(tx: Transaction, sku: str) -> None:
    if await _exists(tx, "sku", sku):
        raise _already_exists("SKU_TAKEN", f"another product has sku {sku!r}", sku=sku)


async def _insert(tx: Transaction, product_id: str, draft: ProductDraft) -> Product:
    now = now_micros()
    revision = await _next_revision(tx)
    product = Product(product_id, draft, from_micros(now), from_micros(now), revision)
    columns = _columns(draft)
    await tx.execute(
        "INSERT INTO products (id, sku, title, description, price_currency, price_nanos, labels,"
        " create_us, update_us, revision) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        product_id,
        *columns.values(),
        now,
        now,
        revision,
    )
    await _write_labels(tx, product_id, draft)
    await _record(tx, revision, ChangeType.CREATED, product, now)
    return product


async def _write_update(tx: Transaction, current: Product, draft: ProductDraft) -> Product:
    now = now_micros()
    revision = await _next_revision(tx)
    product = Product(current.product_id, draft, current.create_time, from_micros(now), revision)
    await tx.execute(
        "UPDATE products SET sku = $1, title = $2, description = $3, price_currency = $4,"
        " price_nanos = $5, labels = $6, update_us = $7, revision = $8 WHERE id = $9",
        *_columns(draft).values(),
        now,
        revision,
        current.product_id,
    )
    await tx.execute("DELETE FROM product_labels WHERE product_id = $1", current.product_id)
    await _write_labels(tx, current.product_id, draft)
    await _record(tx, revision, ChangeType.UPDATED, product, now)
    return product


async def _locked_current(
    tx: Transaction, product_id: str, expected_revision: int | None
) -> Product:
    row = await tx.fetchrow(f"{_PRODUCT} WHERE id = $1 FOR UPDATE", product_id)
    if row is None:
        raise DomainError(
            ErrorKind.NOT_FOUND,
            "PRODUCT_NOT_FOUND",
            f"products/{product_id} not found",
            {"resource": f"products/{product_id}"},
        )
    current = _product(row)
    if expected_revision is not None and current.revision != expected_revision:
        raise DomainError(
            ErrorKind.ABORTED,
            "CONCURRENT_MODIFICATION",
            f"products/{product_id} changed concurrently; read it again and retry",
            {"resource": f"products/{product_id}", "current_etag": current.etag},
        )
    return current


async def _write_labels(tx: Transaction, product_id: str, draft: ProductDraft) -> None:
    if draft.labels:
        await tx.executemany(
            "INSERT INTO product_labels (product_id, key, value) VALUES ($1, $2, $3)",
            [(product_id, key, value) for key, value in draft.labels.items()],
        )


async def _record(
    tx: Transaction, revision: int, change: ChangeType, product: Product, now: int
) -> None:
    await tx.execute(
        "INSERT INTO product_changes (revision, product_id, change_type, snapshot, change_us)"
        " VALUES ($1, $2, $3, $4, $5)",
        revision,
        product.product_id,
        change.value,
        _snapshot(product),
        now,
    )


_CHANGE_LOG = 0x43A7A106  # ordered_section's key for the change log


async def _next_revision(tx: Transaction) -> int:
    """Call it after the checks, before the writes that carry the revision."""
    await ordered_section(tx, _CHANGE_LOG)
    return await _last_revision(tx) + 1


async def _last_revision(tx: Transaction) -> int:
    row = await tx.fetchrow("SELECT coalesce(max(revision), 0) FROM product_changes")
    assert row is not None
    return int(row[0])


async def _exists(tx: Transaction, column: str, value: str) -> bool:
    # `column` is one of this module's names, never input.
    return await tx.fetchrow(f"SELECT 1 FROM products WHERE {column} = $1", value) is not None


def _already_exists(reason: str, message: str, **metadata: str) -> DomainError:
    return DomainError(ErrorKind.ALREADY_EXISTS, reason, message, metadata)


def _columns(draft: ProductDraft) -> dict[str, Any]:
    return {
        "sku": draft.sku,
        "title": draft.title,
        "description": draft.description,
        "price_currency": draft.price.currency_code,
        "price_nanos": draft.price.total_nanos,
        "labels": json.dumps(dict(draft.labels), sort_keys=True),
    }


def _product(row: Row | dict[str, Any]) -> Product:
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
