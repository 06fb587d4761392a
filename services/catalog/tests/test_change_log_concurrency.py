"""The change log's promise with writers running concurrently (several replicas, no lock of any
kind around the numbering): a watcher that reads `changes_after(last one it got)` never misses a
committed change and never sees them out of order, while writers create, update and upsert the
same product at the same time.

Why it holds (adapters/sql_repository.py): on SQLite, BEGIN IMMEDIATE admits one writer and a
change is numbered max + 1, so revisions are dense and commit in order. On PostgreSQL a change's
revision is its transaction's id, and transactions commit in any order — the one numbered 7 may
still be running when 8 has committed — so a reader reads only below its snapshot's xmin (the
committed watermark): every transaction with a smaller id had ended when the snapshot was taken,
so all of their changes are visible to that read and none can still appear. Without the
watermark a watcher reading `revision > 6` would take 8 and never come back for 7: the second
test makes exactly that happen and fails without it; the first runs it as replicas would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from libs.money import Money
from libs.storage.database import Database
from libs.storage.transaction import Transaction
from services.catalog.adapters import sql_repository
from services.catalog.adapters.sql_repository import MIGRATIONS, SqlProductRepository
from services.catalog.domain.change_feed import ChangeFeed
from services.catalog.domain.model import Product, ProductChange, ProductDraft
from services.catalog.domain.ports import CreateRequest

WRITERS = 4
ROUNDS = 8  # per writer: create, update, upsert of the shared sku
WATCHERS = 2
SHARED_SKU = "SHARED-1"


def draft(sku: str, title: str) -> ProductDraft:
    return ProductDraft(sku, title, "", Money.from_total_nanos("EUR", 1_000_000_000))


async def whole_log(database: Database) -> list[int]:
    """Every revision in the table, read directly (not through the watermark)."""

    async def read(tx: Transaction) -> list[int]:
        rows = await tx.fetch("SELECT revision FROM product_changes ORDER BY revision")
        return [int(row[0]) for row in rows]

    return await database.transaction(read, write=False)


async def test_watchers_see_every_revision_in_order_while_writers_run_concurrently(
    database_url: str,
) -> None:
    databases = [Database(database_url) for _ in range(WRITERS + WATCHERS + 1)]
    await databases[0].migrate(MIGRATIONS)
    setup = SqlProductRepository(databases[0])
    await setup.upsert_by_sku(draft(SHARED_SKU, "shared"), "shared")
    total = 1 + WRITERS * ROUNDS * 3
    end: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def write(number: int, database: Database) -> None:
        repository = SqlProductRepository(database)
        for round_number in range(ROUNDS):
            product_id = f"w{number}-{round_number}"
            await repository.create(
                CreateRequest(draft(product_id.upper(), "new"), product_id, "", "")
            )
            await repository.update(product_id, lambda p: draft(p.draft.sku, "changed"))
            await repository.upsert_by_sku(draft(SHARED_SKU, f"by {product_id}"), "unused")

    async def watch(database: Database) -> list[int]:
        """Polls as the feed does, until it has reached the log's last revision."""
        repository = SqlProductRepository(database)
        seen: list[int] = []
        while not (end.done() and seen and seen[-1] >= end.result()):
            batch = await repository.changes_after(seen[-1] if seen else 0, limit=5)
            seen += [change.revision for change in batch]
            await asyncio.sleep(0)  # let the writers run between polls, as a watch loop does
        return seen

    try:
        async with asyncio.timeout(120):
            watching = [asyncio.create_task(watch(db)) for db in databases[WRITERS + 1 :]]
            await asyncio.gather(
                *(write(n, database) for n, database in enumerate(databases[1 : WRITERS + 1]))
            )
            log = await whole_log(databases[0])
            end.set_result(log[-1])
            watched = await asyncio.gather(*watching)
        assert len(log) == total  # one change per write
        for seen in watched:
            assert seen == sorted(set(seen)), "a watcher saw a revision out of order, or twice"
            assert seen == log, "a watcher skipped a committed revision"
        last_changes = {
            change.product.product_id: change.revision
            for change in await setup.changes_after(0, total)
        }
        # Each product carries the revision of its last change: no update was lost.
        for product_id, revision in last_changes.items():
            product = await setup.get(product_id)
            assert product is not None and product.revision == revision
        # The watchers got to the end, so the log's horizon is there too (it never moves back).
        assert (await setup.horizon()).revision == log[-1]
    finally:
        for database in databases:
            await database.dispose()


@contextlib.asynccontextmanager
async def held_open_create(database: Database, product_id: str) -> AsyncIterator[Product]:
    """A catalog write that has numbered its change (PostgreSQL: taken its transaction id) and
    not committed yet, as a slow writer on another replica would be; it commits on leaving."""
    numbered: asyncio.Future[Product] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def create(tx: Transaction) -> Product:
        product = await sql_repository._insert(tx, product_id, draft(product_id.upper(), "slow"))
        numbered.set_result(product)
        await release.wait()  # PostgreSQL only: a SQLite transaction function cannot wait
        return product

    writing = asyncio.create_task(database.transaction(create))
    try:
        yield await asyncio.wait_for(asyncio.shield(numbered), 30)
    finally:
        release.set()
        await writing


async def test_a_later_revision_committed_first_waits_for_the_earlier_one(
    postgres_url: str,
) -> None:
    """The watermark, step by step: revision A is taken and still uncommitted when a later
    revision B commits. A watcher must not get B until A has committed (it would never come
    back for A); a watcher "from now" skips B (committed before it started) but not A."""
    slow_db, fast_db = Database(postgres_url), Database(postgres_url)
    await fast_db.migrate(MIGRATIONS)
    repository = SqlProductRepository(fast_db)
    feed = ChangeFeed(repository, poll_interval=0.05)
    await repository.create(CreateRequest(draft("FIRST", "first"), "first", "", ""))
    (first,) = await repository.changes_after(0, 10)
    watches: list[AsyncIterator[ProductChange]] = []
    try:
        async with held_open_create(slow_db, "slow") as slow:
            fast, _ = await repository.create(CreateRequest(draft("FAST", "fast"), "fast", "", ""))
            assert first.revision < slow.revision < fast.revision
            # B is committed and visible, but below it A may still commit: not final yet.
            assert await repository.changes_after(first.revision, 10) == []
            horizon = await repository.horizon()
            assert horizon.revision < slow.revision
            assert horizon.committed_by_then(fast.revision)
            assert not horizon.committed_by_then(slow.revision)
            await feed.start()
            from_now = await feed.subscribe(None)
            from_first = await feed.subscribe(first.revision)
            watches += [from_now, from_first]
        # A committed: A then B, in order, for a reader from `first`.
        assert [c.revision for c in await repository.changes_after(first.revision, 10)] == [
            slow.revision,
            fast.revision,
        ]
        later, _ = await repository.create(CreateRequest(draft("LATER", "later"), "later", "", ""))
        feed.nudge()
        assert await changes(from_first, 3) == [slow.revision, fast.revision, later.revision]
        # From now: B had committed before the watch began, A had not.
        assert await changes(from_now, 2) == [slow.revision, later.revision]
    finally:
        await feed.close()
        for watch in watches:
            if isinstance(watch, AsyncGenerator):
                await watch.aclose()
        await slow_db.dispose()
        await fast_db.dispose()


async def changes(watch: AsyncIterator[ProductChange], count: int) -> list[int]:
    async with asyncio.timeout(30):
        return [(await anext(watch)).revision for _ in range(count)]
