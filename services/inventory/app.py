"""Wiring: builds inventory from its settings with plain constructors."""

from __future__ import annotations

from datetime import timedelta

from emporium.inventory.v1 import inventory_service_pb2_grpc as pb_grpc
from libs.runtime.periodic import Periodic
from libs.security.identity_tokens import identity_tokens
from libs.server.grpc_app import GrpcApp
from libs.storage.database import Database, database_errors
from services.inventory.adapters.sql_repository import MIGRATIONS, SqlInventoryRepository
from services.inventory.api.policy import POLICY
from services.inventory.api.servicer import DOMAIN, InventoryServicer
from services.inventory.config import InventorySettings
from services.inventory.domain.inventory import Inventory
from services.inventory.domain.level_feed import LevelFeed


async def build(settings: InventorySettings) -> GrpcApp:
    database = Database(settings.database_url)
    await database.migrate(MIGRATIONS)
    feed = LevelFeed()
    inventory = Inventory(
        SqlInventoryRepository(database),
        feed,
        default_ttl=timedelta(seconds=settings.reservation_ttl_seconds),
    )

    # Returns the stock of reservations past their ttl.
    sweeper = Periodic("reservation-expiry", settings.expiry_sweep_seconds, inventory.expire_due)

    async def close_feed() -> None:
        feed.close()

    app = GrpcApp(
        "inventory",
        settings,
        domain=DOMAIN,
        policy=POLICY,
        translators=[database_errors],
        tokens=identity_tokens(settings, "inventory", DOMAIN),
    )
    app.add_servicer(pb_grpc.add_InventoryServiceServicer_to_server, InventoryServicer(inventory))
    app.add_health_check("database", database.ping)
    sweeper.attach(app)
    app.on_shutdown(close_feed)
    app.on_stop(database.dispose)
    return app
