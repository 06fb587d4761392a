"""ProductRepository: each operation one transaction function handed to the database whole
(`Database.transaction`), the same SQL for SQLite and PostgreSQL. The tables are declared with
SQLAlchemy for the migration that creates them.

Every write appends exactly one change to `product_changes` in its own transaction, so the change
log (and with it WatchProducts) can never miss or invent a change. Writers run concurrently
(within a process and across replicas) and take no lock beyond the product rows they change
(FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE admits one writer at a time anyway). The
change log's promise — a watcher reading `revision > n` never misses a committed revision and
never sees them out of order — comes from how a change is numbered and how far a reader reads,
the dialect seam below (`_NEXT_REVISION`, `_FINAL_BELOW`, `_SNAPSHOT`), proved by
tests/test_change_log_concurrency.py:

- SQLite: a change is numbered max(revision) + 1 inside BEGIN IMMEDIATE, so revisions are dense
  and commit in their order; a reader sees whole commits, in that order.
- PostgreSQL: a change's revision is its writing transaction's id, `pg_current_xact_id()`
  (xid8: 64 bits, never wraps), unique per transaction (and `product_changes.revision` is the
  primary key, so a transaction recording two changes would fail, not reuse a number), known
  inside the transaction (UpdateProduct returns its etag), taken without any lock. Transactions
  commit in any order, so a reader reads only below the committed watermark: the xmin of its
  statement's snapshot, `pg_snapshot_xmin(pg_current_snapshot())`. Every transaction with an id
  below xmin had ended (committed or aborted) when that snapshot was taken, so every change
  numbered below it is visible to the same statement, and no transaction can still commit one
  there (new ids are at least the snapshot's xmax): what a reader returns below xmin is final
  and complete, in revision order — never a skip, never out of order. Revisions have gaps (the
  ids of aborted transactions and of every other write in the cluster, other databases' too);
  clients only order and compare them.
  A database written before numbering by transaction id holds dense revisions 1..N: each of
  those writes consumed a transaction id of this cluster, so new revisions are above N and stay
  monotonic. (A logical dump restored into another cluster may be ahead of its transaction ids:
  `horizon` refuses to run on such a log rather than number below its past.) Upgrading from
  that numbering, stop the old replicas before new ones write: while both write, an old one's
  max + 1 can collide with a new one's id or commit below a watcher's watermark.

What a watcher waits for, then: on PostgreSQL a change reaches watchers once every transaction
that got its id before it has ended — any write transaction in the cluster, not only catalog's
(other databases' long transactions delay the feed; `idle_in_transaction_session_timeout`
bounds a forgotten one); never a lost or reordered change.
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
from libs.storage.transaction import Row, Transaction, fetch_page
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
        row = await self._database.fetchrow(f"{_PRODUCT} WHERE id = $1", product_id)
        return _product(row) if row else None

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
        ordering = "".join(
            f"{_ORDER_COLUMNS[name]} {'DESC' if descending else 'ASC'}, "
            for name, descending in query.order
        )

        async def page(tx: Transaction) -> tuple[list[Product], int]:
            rows, total = await fetch_page(
                tx,
                f"{_PRODUCT}{where} ORDER BY {ordering}id",
                f"SELECT count(*) FROM products{where}",
                args,
                limit=limit,
                offset=offset,
            )
            return [_product(row) for row in rows], total

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

    async def update(self, product_id: str, change: DraftChange) -> Product | None:
        async def update(tx: Transaction) -> Product | None:
            current = await _locked(tx, product_id)
            if current is None:
                return None
            draft = change(current)  # the product is locked: concurrent writers take turns
            if draft.sku != current.draft.sku:
                await _check_sku_free(tx, draft.sku)
            return await _write_update(tx, current, draft)

        return await self._database.transaction(update)

    async def delete(self, product_id: str, check: ProductCheck) -> Product | None:
        async def delete(tx: Transaction) -> Product | None:
            current = await _locked(tx, product_id)
            if current is None:
                return None
            check(current)
            await tx.execute("DELETE FROM product_labels WHERE product_id = $1", product_id)
            row = await tx.fetchrow(
                f"DELETE FROM products WHERE id = $1 RETURNING {_NEXT_REVISION[tx.postgres]}",
                product_id,
            )
            assert row is not None
            await _record(tx, int(row[0]), ChangeType.DELETED, current, now_micros())
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
                f" WHERE revision > $1 AND revision < {_FINAL_BELOW[tx.postgres]}"
                " ORDER BY revision LIMIT $2",
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

    async def horizon(self) -> Horizon:
        async def horizon(tx: Transaction) -> Row:
            # One statement: one snapshot for the watermark, the reads and the snapshot's text.
            row = await tx.fetchrow(
                f"SELECT {_SNAPSHOT[tx.postgres]} AS snapshot,"
                " (SELECT coalesce(max(revision), 0) FROM product_changes"
                f" WHERE revision < {_FINAL_BELOW[tx.postgres]}) AS final,"
                " (SELECT coalesce(max(revision), 0) FROM product_changes) AS highest"
            )
            assert row is not None
            return row

        row = await self._database.transaction(horizon, write=False)
        final, highest = int(row["final"]), int(row["highest"])
        if row["snapshot"] is None:  # SQLite: every committed change is final
            return Horizon(final, final + 1)
        _xmin, xmax, running = str(row["snapshot"]).split(":")
        if highest >= int(xmax):
            raise RuntimeError(
                f"product_changes holds revision {highest}, at or above the next transaction id"
                f" {xmax}: revisions are transaction ids, and this database's cluster is behind"
                " its change log (a logical restore into another cluster?). Advance the"
                " cluster's transaction ids past it (pg_resetwal --next-transaction-id/--epoch)"
                " before running catalog on it."
            )
        return Horizon(final, int(xmax), frozenset(int(xid) for xid in running.split(",") if xid))


async def _check_sku_free(tx: Transaction, sku: str) -> None:
    if await _exists(tx, "sku", sku):
        raise _already_exists("SKU_TAKEN", f"another product has sku {sku!r}", sku=sku)


async def _insert(tx: Transaction, product_id: str, draft: ProductDraft) -> Product:
    now = now_micros()
    columns = _columns(draft)
    row = await tx.fetchrow(
        "INSERT INTO products (id, sku, title, description, price_currency, price_nanos, labels,"
        " create_us, update_us, revision) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
        f" {_NEXT_REVISION[tx.postgres]}) RETURNING revision",
        product_id,
        *columns.values(),
        now,
        now,
    )
    assert row is not None
    product = Product(product_id, draft, from_micros(now), from_micros(now), int(row[0]))
    await _write_labels(tx, product_id, draft)
    await _record(tx, product.revision, ChangeType.CREATED, product, now)
    return product


async def _write_update(tx: Transaction, current: Product, draft: ProductDraft) -> Product:
    now = now_micros()
    row = await tx.fetchrow(
        "UPDATE products SET sku = $1, title = $2, description = $3, price_currency = $4,"
        " price_nanos = $5, labels = $6, update_us = $7,"
        f" revision = {_NEXT_REVISION[tx.postgres]} WHERE id = $8 RETURNING revision",
        *_columns(draft).values(),
        now,
        current.product_id,
    )
    assert row is not None
    product = Product(current.product_id, draft, current.create_time, from_micros(now), int(row[0]))
    if draft.labels != current.draft.labels:
        await tx.execute("DELETE FROM product_labels WHERE product_id = $1", current.product_id)
        await _write_labels(tx, current.product_id, draft)
    await _record(tx, product.revision, ChangeType.UPDATED, product, now)
    return product


async def _locked(tx: Transaction, product_id: str) -> Product | None:
    """The product, locked until commit (PostgreSQL; SQLite's writer is alone anyway)."""
    row = await tx.fetchrow(f"{_PRODUCT} WHERE id = $1 FOR UPDATE", product_id)
    return _product(row) if row else None


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


# The dialect seam, all of it (see the module's docstring), by `Transaction.postgres`:
# the revision a write transaction gives its change (an SQL expression, evaluated in the
# statement that writes the product) ...
_NEXT_REVISION = {
    True: "pg_current_xact_id()::text::bigint",  # this transaction's id; no lock
    False: "(SELECT coalesce(max(revision), 0) + 1 FROM product_changes)",  # BEGIN IMMEDIATE
}
# ... the revision below which a reader's statement sees every change there will ever be ...
_FINAL_BELOW = {
    True: "pg_snapshot_xmin(pg_current_snapshot())::text::bigint",  # the committed watermark
    False: "9223372036854775807",  # every committed change: SQLite's commits come in order
}
# ... and the statement's snapshot itself (`xmin:xmax:running ids`), to tell what a watcher "from
# now" must skip: what had committed by then, above the watermark (`Horizon`).
_SNAPSHOT = {True: "pg_current_snapshot()::text", False: "NULL"}


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
