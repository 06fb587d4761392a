"""Notifications on a real broker (fresh vhost): one message per order event, none twice
after duplicates, a restart or a replay from the first offset; Maildir and SMTP channels."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.type import money_pb2

from emporium.orders.v1 import order_events_pb2 as events
from emporium.orders.v1 import orders_service_pb2 as orders
from libs.messaging.broker import BrokerOptions
from libs.messaging.contract import fleet_contract
from libs.messaging.envelope import Outgoing, event
from libs.messaging.publisher import Publisher
from libs.testing.databases import sqlite_url
from libs.testing.rpc import serving
from services.notifications.adapters.maildir import MaildirChannel
from services.notifications.app import Notifications, wire
from services.notifications.config import NotificationsSettings
from services.notifications.domain.model import Notification

ORDERS_TOPOLOGY = fleet_contract().topology("orders")


def order(order_id: str, state: int = orders.ORDER_STATE_PENDING_PAYMENT) -> orders.Order:
    return orders.Order(
        name=f"orders/{order_id}",
        customer="customers/ada",
        lines=[
            orders.OrderLine(
                product="products/mug-01",
                quantity=2,
                title="Mug",
                unit_price=money_pb2.Money(currency_code="EUR", units=8, nanos=500_000_000),
            )
        ],
        total=money_pb2.Money(currency_code="EUR", units=17),
        state=state,  # type: ignore[arg-type]
    )


@pytest.fixture
async def publisher(amqp_url: str) -> AsyncIterator[Publisher]:
    # As orders would: its topology declares the orders.events stream.
    started = Publisher(BrokerOptions(amqp_url), ORDERS_TOPOLOGY)
    await started.start()
    yield started
    await started.close()


def settings(amqp_url: str, directory: Path, **extra: object) -> NotificationsSettings:
    return NotificationsSettings(
        amqp_url=amqp_url,
        database_url=sqlite_url(directory),
        maildir=directory / "mail",
        **extra,  # type: ignore[arg-type]
    )


async def test_one_message_per_event_even_after_duplicates_restart_and_replay(
    amqp_url: str, publisher: Publisher, tmp_path: Path
) -> None:
    published = [
        event("orders", events.OrderCreated(order=order("o1"))),
        event("orders", events.OrderCreated(order=order("o2"))),
        event("orders", events.OrderConfirmed(order=order("o1", orders.ORDER_STATE_CONFIRMED))),
    ]
    cancelled = order("o2", orders.ORDER_STATE_CANCELLED)
    cancelled.cancel_reason = "payment failed: card declined"
    published.append(event("orders", events.OrderCancelled(order=cancelled)))
    for outgoing in published:
        await publisher.publish(outgoing)
    await publisher.publish(published[0])  # the outbox may publish a message twice

    config = settings(amqp_url, tmp_path)
    service = await wire(config)
    async with serving(service.app):
        await asyncio.wait_for(service.consumer.wait_for_position(4), 15)
    mail = sorted((tmp_path / "mail" / "new").iterdir())
    assert len(mail) == 4
    subjects = sorted(_read(path)["Subject"] for path in mail)
    assert subjects == [
        "We received your order o1",
        "We received your order o2",
        "Your order o1 is confirmed",
        "Your order o2 was cancelled",
    ]
    cancelled_mail = next(p for p in mail if "cancelled" in _read(p)["Subject"])
    assert "payment failed: card declined" in _read(cancelled_mail).get_content()  # type: ignore[attr-defined]
    assert _read(mail[0])["To"] == "ada@customers.emporium.local"

    # A restart resumes after the stored offset: only the new event is delivered.
    await publisher.publish(event("orders", events.OrderCreated(order=order("o3"))))
    restarted: Notifications = await wire(config)
    async with serving(restarted.app):
        await asyncio.wait_for(restarted.consumer.wait_for_position(5), 15)
        assert restarted.consumer.handled == 1
        # Replay from the first offset: every event is read again, none delivered again.
        await restarted.consumer.replay("first")
        await asyncio.wait_for(restarted.consumer.wait_for_position(5), 15)
        assert restarted.consumer.handled == 1 + 6
    assert restarted.notifier.delivered == 1
    assert len(list((tmp_path / "mail" / "new").iterdir())) == 5


def _read(path: Path) -> email.message.Message:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


class SmtpSink:
    """A minimal SMTP server on loopback: enough of RFC 5321 for smtplib to hand over mail."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.received = asyncio.Event()
        self.port = 0

    async def __aenter__(self) -> SmtpSink:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                body = await reader.readuntil(b"\r\n.\r\n")
                self.messages.append(body[:-5])
                self.received.set()
                writer.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


async def test_smtp_channel_hands_the_message_to_a_mail_server(
    amqp_url: str, publisher: Publisher, tmp_path: Path
) -> None:
    key = uuid.uuid4().hex
    created = event("orders", events.OrderCreated(order=order("o9")))
    await publisher.publish(Outgoing(created.exchange, created.routing_key, created.body, key))
    async with SmtpSink() as sink:
        service = await wire(settings(amqp_url, tmp_path, channel="smtp", smtp_port=sink.port))
        async with serving(service.app):
            await asyncio.wait_for(sink.received.wait(), 15)
    sent = email.message_from_bytes(sink.messages[0], policy=email.policy.default)
    assert sent["Subject"] == "We received your order o9"
    assert sent["Message-ID"] == f"<{key}@emporium.local>"


async def test_maildir_sees_a_move_to_cur_that_left_its_mtime_as_it_was(tmp_path: Path) -> None:
    """A reader's move within the same tick of the file system's clock as the channel's last
    look at cur/ leaves cur/'s mtime unchanged; the channel still finds the mail there."""
    channel = MaildirChannel(tmp_path / "mail", "shop@emporium.local")
    notice = Notification("evt-1", "ann@emporium.local", "Your order o1 is confirmed", "Hi\n")
    await channel.deliver(notice)  # looks at cur/ (empty) first
    cur = tmp_path / "mail" / "cur"
    looked = cur.stat()
    [written] = channel.delivered()
    written.rename(cur / f"{written.name}:2,S")
    os.utime(cur, ns=(looked.st_atime_ns, looked.st_mtime_ns))  # the same tick, as it were
    await channel.deliver(notice)
    assert channel.delivered() == []


async def test_maildir_keeps_one_message_per_key_after_a_reader_moved_it(tmp_path: Path) -> None:
    """A mail reader moves what it has seen from new/ to cur/ (`<name>:2,S`): a redelivery
    of the same event then finds it there and writes nothing."""
    channel = MaildirChannel(tmp_path / "mail", "shop@emporium.local")
    notice = Notification("evt-1", "ann@emporium.local", "Your order o1 is confirmed", "Hi\n")
    await channel.deliver(notice)
    [written] = channel.delivered()
    assert _read(written)["Subject"] == "Your order o1 is confirmed"
    written.rename(tmp_path / "mail" / "cur" / f"{written.name}:2,S")
    await channel.deliver(notice)
    assert channel.delivered() == []
    assert len(list((tmp_path / "mail" / "cur").iterdir())) == 1
    await channel.deliver(Notification("evt-2", "ann@emporium.local", "Another", "Hi\n"))
    assert len(channel.delivered()) == 1
