"""Acceptance 3 of the order saga: a chaos run on PostgreSQL with two replicas each of orders
and payments as processes. A few hundred orders, random cancels, declines, a provider that
fails transiently, and kill -9 of a random orders, payments or inventory process several times
(each restarted at once, on its port). Every order ends terminal within the bound, the audit
balances, and the dead-letter queues are empty.

Seeded: the seed is printed (and taken from EMPORIUM_CHAOS_SEED when set), so a failing run's
orders, cancels and kills can be replayed (the interleaving of processes is the machine's).
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import grpc

from emporium.orders.v1 import orders_service_pb2 as pb
from emporium.orders.v1 import orders_service_pb2_grpc as pb_grpc
from libs.rpcclient.discovery import LocalRegistry
from libs.runtime.processes import ServiceProcess, start_service
from libs.server.grpc_app import free_port
from libs.testing.broker import EventTap
from libs.testing.databases import fresh_postgres_database
from services.payments.adapters.simulator import SimulatedProvider
from tests.saga.shop import PRODUCT, Shop, stock_shelves
from tools.commands.run.fleet import in_process_fleet

ORDERS = 200
KILLS = 6  # the first five kill each process once, in a seeded order; then any
BOUND_SECONDS = 120  # every order terminal within this, from the last order placed
# A replica down (or killed mid-call), shedding load, or a step that lost a race and asks to
# be tried again.
RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
)


@dataclass
class Replica:
    module: str
    env: dict[str, str]
    process: ServiceProcess | None = None
    channel: grpc.aio.Channel | None = None
    # Channels to processes killed before: calls still on them fail as UNAVAILABLE.
    old_channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def start(self) -> None:
        if self.channel is not None:
            self.old_channels.append(self.channel)
        self.process = await start_service(self.module, self.env)
        self.channel = grpc.aio.insecure_channel(self.process.address)

    @property
    def stub(self) -> pb_grpc.OrdersServiceAsyncStub:
        assert self.channel is not None
        return pb_grpc.OrdersServiceStub(self.channel)


@dataclass
class Fleet:
    orders: list[Replica]
    payments: list[Replica]
    inventory: Replica
    rng: random.Random

    @property
    def processes(self) -> list[Replica]:
        return [*self.orders, *self.payments, self.inventory]

    def any_orders(self) -> pb_grpc.OrdersServiceAsyncStub:
        replica = self.rng.choice(self.orders)
        return replica.stub

    async def kill_and_restart(self, replica: Replica) -> str:
        assert replica.process is not None
        await replica.process.kill()  # SIGKILL: no shutdown, no acks, no commits
        await replica.start()
        return replica.module

    async def stop(self) -> None:
        for replica in self.processes:
            for channel in [*replica.old_channels, replica.channel]:
                if channel is not None:
                    await channel.close(None)
            if replica.process is not None:
                await replica.process.terminate()


async def call(fleet: Fleet, method: str, request: object) -> pb.Order:
    """One RPC on any orders replica, again on another while a replica is down."""
    for attempt in range(60):
        try:
            result: pb.Order = await getattr(fleet.any_orders(), method)(request, timeout=5)
            return result
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRYABLE:
                raise
        await asyncio.sleep(0.1 * min(attempt + 1, 10))  # a client's backoff while one is down
    raise AssertionError(f"{method} kept failing")


async def final_state(fleet: Fleet, name: str) -> pb.Order:
    """Watches the order to its terminal state, on another replica when one dies."""
    while True:
        try:
            watch = fleet.any_orders().WatchOrder(pb.WatchOrderRequest(name=name))
            updates = [update async for update in watch]
            if updates[-1].state in (pb.ORDER_STATE_CONFIRMED, pb.ORDER_STATE_CANCELLED):
                return updates[-1]
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRYABLE:
                raise
        await asyncio.sleep(0.2)  # the replica died under the watch: a client reconnects


async def dead_letters(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


async def test_chaos_run_ends_every_order_and_balances(amqp_url: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("EMPORIUM_CHAOS_SEED") or random.randrange(1 << 32))
    print(f"chaos seed: {seed} (replay with EMPORIUM_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    registry = LocalRegistry(tmp_path / "registry.json")
    ledger = tmp_path / "ledger.sqlite3"
    async with AsyncExitStack() as stack:
        catalog_db, inventory_db, orders_db, payments_db = [
            await stack.enter_async_context(fresh_postgres_database()) for _ in range(4)
        ]
        payment_events = await stack.enter_async_context(EventTap(amqp_url, "payments.#"))
        orders_env = {
            "ORDERS_DATABASE_URL": orders_db,
            "ORDERS_AMQP_URL": amqp_url,
            "ORDERS_REGISTRY_FILE": str(registry.path),
            "ORDERS_OUTBOX_POLL_SECONDS": "0.5",
            "ORDERS_RESERVATION_TTL_SECONDS": "60",
            "ORDERS_PAYMENT_DEADLINE_SECONDS": "30",
            "ORDERS_STALLED_AFTER_SECONDS": "5",
            "ORDERS_SWEEP_EVERY_SECONDS": "1",
            "ORDERS_WATCH_POLL_SECONDS": "1",
            # Few messages at once per replica: four processes (each a PostgreSQL pool of up
            # to 20) share the server with whatever else the machine is testing.
            "ORDERS_PREFETCH": "8",
        }
        payments_env = {
            "PAYMENTS_DATABASE_URL": payments_db,
            "PAYMENTS_AMQP_URL": amqp_url,
            "PAYMENTS_PROVIDER_LEDGER": str(ledger),
            "PAYMENTS_REGISTRY_FILE": str(registry.path),
            "PAYMENTS_PROVIDER_LATENCY_SECONDS": "0.02",
            "PAYMENTS_PROVIDER_LATENCY_JITTER_SECONDS": "0.3",
            "PAYMENTS_PROVIDER_DECLINE_RATE": "0.05",
            "PAYMENTS_PROVIDER_TRANSIENT_FAILURE_RATE": "0.1",
            "PAYMENTS_RETRY_DELAYS_SECONDS": "[0.2, 1.0]",
            "PAYMENTS_MAX_DELIVERIES": "8",
            "PAYMENTS_OUTBOX_POLL_SECONDS": "0.5",
            "PAYMENTS_RECONCILE_AFTER_SECONDS": "20",
            "PAYMENTS_RECONCILE_EVERY_SECONDS": "2",
            "PAYMENTS_PREFETCH": "8",
            "PAYMENTS_CONCURRENCY": "4",
        }
        # Orders replicas and inventory keep their ports across restarts: the channels to them
        # (the registry's addresses, resolved once) reach the restarted process.
        inventory_env = {
            "INVENTORY_DATABASE_URL": inventory_db,
            "INVENTORY_PORT": str(free_port()),
            "INVENTORY_GRACE_SECONDS": "1",
        }
        fleet = Fleet(
            [
                Replica("services.orders", {**orders_env, "ORDERS_PORT": str(free_port())})
                for _ in range(2)
            ],
            [Replica("services.payments", payments_env) for _ in range(2)],
            Replica("services.inventory", inventory_env),
            rng,
        )
        stack.push_async_callback(fleet.stop)
        catalog = await stack.enter_async_context(
            in_process_fleet(
                tmp_path,
                amqp_url,
                only=("catalog",),
                settings={"catalog": {"database_url": catalog_db, "seed_sample_products": False}},
            )
        )
        await fleet.inventory.start()
        assert fleet.inventory.process is not None and fleet.inventory.channel is not None
        registry.register("inventory", fleet.inventory.process.address)
        stock = await stock_shelves(
            catalog.channels["catalog"], fleet.inventory.channel, units=ORDERS * 3
        )
        for replica in fleet.orders:
            await replica.start()
            assert replica.process is not None
            registry.register("orders", replica.process.address)
        for replica in fleet.payments:
            await replica.start()

        cancels: dict[str, str] = {}

        async def customer(index: int) -> str:
            await asyncio.sleep(rng.random() * 10)  # arrivals spread over 10 s
            card = "cards/declined" if rng.random() < 0.05 else "cards/visa"
            cancel_after = rng.random() * 2 if rng.random() < 0.3 else None
            request = pb.CreateOrderRequest(
                order=pb.Order(
                    customer=f"customers/c{index % 17}",
                    lines=[pb.OrderLine(product=f"products/{PRODUCT}", quantity=1 + index % 3)],
                    payment_method=card,
                ),
                request_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            )
            created = await call(fleet, "CreateOrder", request)  # same request_id on retry
            if cancel_after is not None:
                await asyncio.sleep(cancel_after)
                try:
                    await call(fleet, "CancelOrder", pb.CancelOrderRequest(name=created.name))
                    cancels[created.name] = "won"
                except grpc.aio.AioRpcError as error:
                    cancels[created.name] = error.code().name
            return created.name

        async def chaos_monkey() -> list[str]:
            killed = []
            victims = rng.sample(fleet.processes, len(fleet.processes))
            victims += [rng.choice(fleet.processes) for _ in range(KILLS - len(victims))]
            for victim in victims:
                await asyncio.sleep(1 + rng.random() * 2)
                killed.append(await fleet.kill_and_restart(victim))
            return killed

        # A task group: if a customer fails, the monkey stops too (no restart after the end).
        async with asyncio.TaskGroup() as group:
            customers = [group.create_task(customer(i)) for i in range(ORDERS)]
            monkey = group.create_task(chaos_monkey())
        names, killed = [task.result() for task in customers], monkey.result()
        print(f"killed and restarted: {', '.join(killed)}")
        finals = await asyncio.wait_for(
            asyncio.gather(*(final_state(fleet, name) for name in names)), BOUND_SECONDS
        )
        shop = Shop(fleet.any_orders(), stock, SimulatedProvider(ledger), payment_events)
        stack.callback(shop.provider.close)
        report = await shop.settled_audit(within=60)
        print(report.text().splitlines()[0])
        dlq = {
            queue: await dead_letters(amqp_url, queue)
            for queue in ("payments.charge.dlq", "orders.payment-results.dlq")
        }

    assert report.ok, report.text()
    assert len(finals) == ORDERS
    assert dlq == {"payments.charge.dlq": 0, "orders.payment-results.dlq": 0}
    by_name = {order.name: order for order in finals}
    assert set(cancels.values()) <= {"won", "FAILED_PRECONDITION"}  # lost: ORDER_CONFIRMED
    for name, outcome in cancels.items():
        wanted = pb.ORDER_STATE_CANCELLED if outcome == "won" else pb.ORDER_STATE_CONFIRMED
        assert by_name[name].state == wanted, name
