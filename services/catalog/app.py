"""Wiring: builds the catalog from its settings with plain constructors."""

from __future__ import annotations

from dataclasses import dataclass

from emporium.catalog.v1 import catalog_service_pb2_grpc as pb_grpc
from emporium.catalog.v2 import catalog_service_pb2_grpc as pb_v2_grpc
from libs.security.identity_tokens import identity_tokens
from libs.server.grpc_app import GrpcApp
from libs.storage.database import Database, database_errors
from services.catalog.adapters.sql_repository import MIGRATIONS, SqlProductRepository
from services.catalog.api.mapping import validate_draft
from services.catalog.api.policy import POLICY
from services.catalog.api.servicer import DOMAIN, CatalogServicer
from services.catalog.api.servicer_v2 import CatalogServicerV2
from services.catalog.config import CatalogSettings
from services.catalog.domain.catalog import Catalog
from services.catalog.domain.change_feed import ChangeFeed
from services.catalog.seed import seed


@dataclass(frozen=True)
class CatalogParts:
    database: Database
    feed: ChangeFeed
    catalog: Catalog


async def build_catalog(settings: CatalogSettings) -> CatalogParts:
    """The catalog without its server: migrated storage, its change feed (not yet following the
    change log: the app starts it, `feed.start()`), the use cases."""
    database = Database(settings.database_url, pool_size=settings.database_pool_size)
    await database.migrate(MIGRATIONS)
    repository = SqlProductRepository(database)
    feed = ChangeFeed(repository, poll_interval=settings.feed_poll_interval_seconds)
    catalog = Catalog(
        repository, feed, currency_code=settings.currency_code, validate_draft=validate_draft
    )
    return CatalogParts(database, feed, catalog)


async def build(settings: CatalogSettings) -> GrpcApp:
    parts = await build_catalog(settings)
    if settings.seed_sample_products:
        await seed(parts.catalog)
    app = GrpcApp(
        "catalog",
        settings,
        domain=DOMAIN,
        policy=POLICY,
        translators=[database_errors],
        tokens=identity_tokens(settings, "catalog", DOMAIN),
    )
    app.add_servicer(pb_grpc.add_CatalogServiceServicer_to_server, CatalogServicer(parts.catalog))
    app.add_servicer(
        pb_v2_grpc.add_CatalogServiceServicer_to_server, CatalogServicerV2(parts.catalog)
    )
    app.add_health_check("database", parts.database.ping)
    app.on_start(parts.feed.start)
    app.on_shutdown(parts.feed.close)
    app.on_stop(parts.database.dispose)
    return app
