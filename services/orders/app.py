"""Wiring: builds orders, its storage and its upstreams with plain constructors."""

from __future__ import annotations

from datetime import timedelta

from emporium.orders.v1 import orders_service_pb2_grpc as pb_grpc
from libs.messaging.consumer import WorkConsumer
from libs.messaging.contract import fleet_contract
from libs.messaging.service import ServiceMessaging
from libs.resilience.breaker import BreakerPolicy
from libs.rpcclient.upstream import Upstream, UpstreamPolicy, upstream_errors
from libs.runtime.periodic import Periodic
from libs.security.identity_tokens import identity_tokens
from libs.security.service_channels import service_channels
from libs.server.grpc_app import GrpcApp
from libs.storage.database import Database, database_errors
from services.orders.adapters.order_messages import OrderMessages
from services.orders.adapters.payment_results import PaymentResults
from services.orders.adapters.sql_repository import MIGRATIONS, SqlOrderRepository
from services.orders.adapters.upstreams import (
    CachedProductCatalog,
    GrpcProductCatalog,
    GrpcStockReservations,
)
from services.orders.api.mapping import order_message
from services.orders.api.policy import POLICY
from services.orders.api.servicer import DOMAIN, OrdersServicer
from services.orders.config import OrdersSettings
from services.orders.domain.order_feed import OrderFeed
from services.orders.domain.orders import Orders, SagaTimes
from services.orders.domain.ports import ProductCatalog


async def build(settings: OrdersSettings) -> GrpcApp:
    database = Database(settings.database_url)
    await database.migrate(MIGRATIONS)
    channels = service_channels(settings, "orders")
    policy = UpstreamPolicy(
        default_timeout=settings.upstream_timeout_seconds,
        breaker=BreakerPolicy(cooldown=settings.upstream_breaker_cooldown_seconds),
    )
    catalog = Upstream("catalog", channels.channel("catalog"), policy)
    inventory = Upstream("inventory", channels.channel("inventory"), policy)
    topology = fleet_contract().topology("orders")
    (results_queue,) = topology.work_queues
    messaging = ServiceMessaging(
        settings.broker(), topology, database, outbox_poll_seconds=settings.outbox_poll_seconds
    )
    feed = OrderFeed()
    products: ProductCatalog = GrpcProductCatalog(catalog)
    if settings.product_cache:
        products = CachedProductCatalog(products)
    orders = Orders(
        SqlOrderRepository(
            database,
            OrderMessages(order_message),
            inbox=results_queue.name,
            on_commit=messaging.outbox_written,
        ),
        products,
        GrpcStockReservations(inventory),
        feed,
        times=SagaTimes(
            reservation_ttl=timedelta(seconds=settings.reservation_ttl_seconds),
            payment_deadline=timedelta(seconds=settings.payment_deadline_seconds),
            stalled_after=timedelta(seconds=settings.stalled_after_seconds),
        ),
        poll_interval=settings.watch_poll_seconds,
    )
    sweeper = Periodic("order-sweeper", settings.sweep_every_seconds, orders.sweep)

    async def close_feed() -> None:
        feed.close()

    app = GrpcApp(
        "orders",
        settings,
        domain=DOMAIN,
        policy=POLICY,
        translators=[database_errors, upstream_errors],
        tokens=identity_tokens(settings, "orders", DOMAIN),
    )
    app.add_servicer(pb_grpc.add_OrdersServiceServicer_to_server, OrdersServicer(orders))
    messaging.add(
        WorkConsumer(
            settings.broker(),
            topology,
            results_queue,
            PaymentResults(orders),
            name="orders",
            prefetch=settings.prefetch,
        )
    )
    messaging.attach(app)
    sweeper.attach(app)
    app.add_health_check("database", database.ping)
    if isinstance(products, CachedProductCatalog):
        products.follow(catalog.channel).attach(app)
    app.on_shutdown(close_feed)
    app.on_stop(catalog.close)
    app.on_stop(inventory.close)
    app.on_stop(database.dispose)
    return app
