"""The change log's promise with writers running concurrently (several replicas, no process
lock): every watcher sees revisions 1, 2, 3, … with none skipped and none out of order, while
writers create, update and upsert the same product at the same time. Each writer and watcher has
its own Database (its own connections), as replicas would."""

from __future__ import annotations

import asyncio

from libs.money import Money
from libs.storage.database import Database
from services.catalog.adapters.sql_repository import MIGRATIONS, SqlProductRepository
from services.catalog.domain.model import ProductDraft
from services.catalog.domain.ports import CreateRequest

WRITERS = 4
ROUNDS = 6  # per writer: create, update, upsert of the shared sku
WATCHERS = 2
SHARED_SKU = "SHARED-1"


def draft(sku: str, title: str) -> ProductDraft:
    return ProductDraft(sku, title, "", Money.from_total_nanos("EUR", 1_000_000_000))


async def test_watchers_see_every_revision_in_order_while_writers_run_concurrently(
    database_url: str,
) -> None:
    databases = [Database(database_url) for _ in range(WRITERS + WATCHERS + 1)]
    await databases[0].migrate(MIGRATIONS)
    setup = SqlProductRepository(databases[0])
    await setup.upsert_by_sku(draft(SHARED_SKU, "shared"), "shared")
    total = 1 + WRITERS * ROUNDS * 3

    async def write(number: int, database: Database) -> None:
        repository = SqlProductRepository(database)
        for round_number in range(ROUNDS):
            product_id = f"w{number}-{round_number}"
            created, _ = await repository.create(
                CreateRequest(draft(product_id.upper(), "new"), product_id, "", "")
            )
            await repository.update(
                product_id, draft(product_id.upper(), "changed"), created.revision
            )
            await repository.upsert_by_sku(draft(SHARED_SKU, f"by {product_id}"), "unused")

    async def watch(database: Database) -> list[int]:
        repository = SqlProductRepository(database)
        seen: list[int] = []
        while len(seen) < total:
            batch = await repository.changes_after(seen[-1] if seen else 0, limit=5)
            seen += [change.revision for change in batch]
            await asyncio.sleep(0)  # let the writers run between polls, as a watch loop does
        return seen

    try:
        watched = await asyncio.gather(
            *(watch(database) for database in databases[WRITERS + 1 :]),
            *(write(n, database) for n, database in enumerate(databases[1 : WRITERS + 1])),
        )
        for seen in watched[:WATCHERS]:
            assert seen == list(range(1, total + 1))
        last_changes = {
            change.product.product_id: change.revision
            for change in await setup.changes_after(0, total)
        }
        # Each product carries the revision of its last change: no update was lost.
        for product_id, revision in last_changes.items():
            product = await setup.get(product_id)
            assert product is not None and product.revision == revision
        assert await setup.last_revision() == total
    finally:
        for database in databases:
            await database.dispose()
