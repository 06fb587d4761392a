"""tools/broker: see and repair Emporium's queues and streams.

  tools/broker queues                          depth and consumers of every queue and stream
  tools/broker peek QUEUE [-n N]               show messages without taking them
  tools/broker requeue QUEUE [--limit N]       move QUEUE.dlq messages back to QUEUE
  tools/broker renew QUEUE [--replicas N]      re-create a queue declared with older arguments,
                                               keeping its messages (its consumers stopped)
  tools/broker replay STREAM --from POSITION   print a stream's events from a position
  tools/broker replay STREAM --from POSITION --consumer NAME --database URL
                                               make a stream consumer re-read from there

POSITION is first, last, next, an offset, or an ISO 8601 time. The broker is --url, else
EMPORIUM_AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/ (several nodes of a cluster:
comma-separated).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import quote

import aio_pika
import httpx
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from google.protobuf import descriptor_pool, message_factory, text_format
from google.protobuf.message import DecodeError
from yarl import URL

from libs.messaging.broker import DEFAULT_AMQP_URL, BrokerOptions, BrokerUnreachable, connect
from libs.messaging.consumer import StartAt
from libs.messaging.envelope import ATTEMPT_HEADER, DEAD_LETTER_REASON_HEADER, copy_of
from libs.messaging.offsets import reset_offset
from libs.storage.database import Database
from libs.storage.transaction import Transaction
from tools.commands.broker.fleet import FLEET
from tools.commands.broker.operations import CliError, queue_depth, renew_queue


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    # The client libraries log connection failures themselves; this CLI says it once, clearly.
    logging.getLogger("aio_pika").setLevel(logging.CRITICAL)
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    try:
        return int(asyncio.run(arguments.run(arguments)))
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


async def _connect(url: str) -> AbstractConnection:
    try:
        return await connect(BrokerOptions(url, connect_timeout=5))
    except BrokerUnreachable as error:
        raise CliError(
            f"{error}\n  Is RabbitMQ running (tools/run starts one)? "
            "Point --url or EMPORIUM_AMQP_URL at it."
        ) from None


async def _broker_consumers(url: str) -> dict[str, int] | None:
    """Consumers per queue as the broker itself counts them (a passive declare answers 0 for a
    stream whatever reads it): the management API if it answers, else `rabbitmqctl` on this
    machine (EMPORIUM_RABBITMQCTL names another); None if neither can tell."""
    parsed = URL(url)
    vhost = parsed.path.removeprefix("/") or "/"
    management = os.environ.get("EMPORIUM_RABBITMQ_MANAGEMENT_URL", f"http://{parsed.host}:15672")
    auth = (parsed.user or "guest", parsed.password or "guest")
    try:
        async with httpx.AsyncClient(timeout=2.0, auth=auth) as http:
            listed = await http.get(
                f"{management}/api/queues/{quote(vhost, safe='')}",
                params={"columns": "name,consumers"},
            )
        if listed.status_code == 200:
            return {q["name"]: int(q.get("consumers") or 0) for q in listed.json()}
    except httpx.HTTPError:
        pass
    ctl = os.environ.get("EMPORIUM_RABBITMQCTL", "rabbitmqctl")
    try:
        process = await asyncio.create_subprocess_exec(
            ctl,
            "list_queues",
            "-q",
            "--no-table-headers",
            "-p",
            vhost,
            "name",
            "consumers",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 15)
    except (OSError, TimeoutError):
        return None
    if process.returncode != 0:
        return None
    counts = {}
    for line in output.decode().splitlines():
        name, _, consumers = line.rpartition("\t")
        if name and consumers.isdigit():
            counts[name] = int(consumers)
    return counts


async def queues(arguments: argparse.Namespace) -> int:
    connection = await _connect(arguments.url)
    rows: list[tuple[str, str, str, str]] = []
    counted: dict[str, int] | None = {}
    try:
        for work in FLEET.all_work_queues():
            names = [work.name, work.dead_letter_queue]
            names += [
                f"{work.name}.retry.{round(d * 1000)}" for d in sorted(set(work.retry_delays))
            ]
            for name in names:
                kind = (
                    "dead letters"
                    if name.endswith(".dlq")
                    else "retry"
                    if ".retry." in name
                    else "work"
                )
                rows.append((name, kind, *_counts(await queue_depth(connection, name))))
        streams = FLEET.all_streams()
        counted = await _broker_consumers(arguments.url) if streams else {}
        for stream in streams:
            messages, consumers = _counts(await queue_depth(connection, stream.name))
            if consumers != "-":
                consumers = "?" if counted is None else str(counted.get(stream.name, 0))
            rows.append((stream.name, "stream", messages, consumers))
    finally:
        await connection.close()
    if counted is None:
        print(
            "(stream consumers: ? — neither the management API nor rabbitmqctl answered)",
            file=sys.stderr,
        )
    width = max(len(r[0]) for r in rows)
    print(f"{'QUEUE':<{width}}  {'KIND':<12}  {'MESSAGES':>8}  {'CONSUMERS':>9}")
    for name, kind, messages, consumers in rows:
        print(f"{name:<{width}}  {kind:<12}  {messages:>8}  {consumers:>9}")
    return 0


def _counts(depth: tuple[int, int] | None) -> tuple[str, str]:
    return ("absent", "-") if depth is None else (str(depth[0]), str(depth[1]))


async def peek(arguments: argparse.Namespace) -> int:
    connection = await _connect(arguments.url)
    try:
        channel = await connection.channel()
        queue = await _existing(connection, channel, arguments.queue)
        shown = 0
        while shown < arguments.n:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            shown += 1
            print(_describe(message))
        # Closing the channel without acknowledging hands every message back to the queue.
        await channel.close()
    finally:
        await connection.close()
    print(f"{shown} message(s) shown from {arguments.queue}; none taken")
    return 0


async def requeue(arguments: argparse.Namespace) -> int:
    dead_letters = f"{arguments.queue}.dlq"
    connection = await _connect(arguments.url)
    moved = 0
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        source = await _existing(connection, channel, dead_letters)
        await _existing(connection, channel, arguments.queue)
        while arguments.limit is None or moved < arguments.limit:
            message = await source.get(no_ack=False, fail=False)
            if message is None:
                break
            # A fresh start: the attempt count and the broker's death records are dropped.
            headers = {
                k: v
                for k, v in message.headers.items()
                if not k.startswith("x-") and k != ATTEMPT_HEADER
            }
            again = copy_of(message, headers)
            # The default exchange routes straight to the queue, however it is bound.
            await channel.default_exchange.publish(again, arguments.queue, mandatory=True)
            await message.ack()  # only once the broker confirmed the copy
            moved += 1
    finally:
        await connection.close()
    print(f"moved {moved} message(s) from {dead_letters} back to {arguments.queue}")
    return 0


async def renew(arguments: argparse.Namespace) -> int:
    work = next(
        (
            w
            for w in FLEET.all_work_queues()
            if arguments.queue in (w.name, w.dead_letter_queue, *w.retry_queues)
        ),
        None,
    )
    if work is None:
        raise CliError(
            f"{arguments.queue!r} is not a work queue, DLQ or retry queue of the fleet "
            "(tools/broker queues lists them; a stream keeps its log and is not renewed)"
        )
    connection = await _connect(arguments.url)
    try:
        kept = await renew_queue(connection, work, arguments.queue, replicas=arguments.replicas)
    finally:
        await connection.close()
    print(f"renewed {arguments.queue} with the current arguments; {kept} message(s) kept")
    return 0


async def replay(arguments: argparse.Namespace) -> int:
    start = _position(arguments.start)
    if arguments.consumer:
        return await _reset_consumer(arguments, start)
    connection = await _connect(arguments.url)
    printed = 0
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)
        queue = await _existing(connection, channel, arguments.stream)
        async with queue.iterator(arguments={"x-stream-offset": start}) as messages:
            while printed < arguments.limit:
                try:
                    message = await asyncio.wait_for(messages.__anext__(), arguments.idle)
                except (TimeoutError, StopAsyncIteration):
                    break  # the end of the stream, for now
                offset = message.headers.get("x-stream-offset")
                print(f"offset {offset!s}  {_describe(message)}")
                await message.ack()
                printed += 1
    finally:
        await connection.close()
    print(f"{printed} event(s) from {arguments.stream}")
    return 0


async def _reset_consumer(arguments: argparse.Namespace, start: StartAt) -> int:
    if not arguments.database:
        raise CliError("--consumer needs --database, the consumer's database URL")
    if not (start == "first" or isinstance(start, int)):
        raise CliError("a consumer can be reset to `first` or to an offset")
    database = Database(arguments.database)
    # Stored offsets mean "handled up to here": resume at `start` by storing start-1.
    stored = start - 1 if isinstance(start, int) and start > 0 else None

    async def reset(tx: Transaction) -> None:
        await reset_offset(tx, arguments.consumer, arguments.stream, stored)

    try:
        await database.transaction(reset)
    except Exception as error:
        raise CliError(f"cannot write {arguments.database}: {error}") from None
    finally:
        await database.dispose()
    print(
        f"{arguments.consumer} will re-read {arguments.stream} from {arguments.start} "
        "when it next starts (its inbox keeps it from acting twice)"
    )
    return 0


async def _existing(
    connection: AbstractConnection, channel: AbstractChannel, name: str
) -> aio_pika.abc.AbstractQueue:
    if await queue_depth(connection, name) is None:
        raise CliError(f"no queue {name!r} on this broker (tools/broker queues lists them)")
    return await channel.get_queue(name, ensure=False)


def _describe(message: AbstractIncomingMessage) -> str:
    deaths = message.headers.get("x-death")
    reason = ""
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        death = deaths[0]
        reason = f"  dead-lettered: {death.get('reason')!s} x{death.get('count')!s}"
    why = message.headers.get(DEAD_LETTER_REASON_HEADER)
    if why is not None:
        text = why.decode(errors="replace") if isinstance(why, bytes) else str(why)
        reason = f"  dead-lettered: {text}"
    return f"{message.message_id}  {message.type}{reason}\n    {_body_text(message)}"


def _body_text(message: AbstractIncomingMessage) -> str:
    try:
        pool = descriptor_pool.Default()  # type: ignore[no-untyped-call]
        descriptor = pool.FindMessageTypeByName(message.type or "")
    except KeyError:
        return f"<{len(message.body)} bytes of {message.content_type}>"
    body = message_factory.GetMessageClass(descriptor)()
    try:
        body.ParseFromString(message.body)
    except DecodeError:  # garbage, dead-lettered for that very reason
        return f"<{len(message.body)} unreadable bytes>"
    return text_format.MessageToString(body, as_one_line=True) or "<empty>"


def _position(text: str) -> StartAt:
    if text in ("first", "last", "next"):
        return text  # type: ignore[return-value]
    if text.isdigit():
        return int(text)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"--from {text!r}: use first, last, next, an offset or an ISO 8601 time"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/broker",
        description="See and repair Emporium's RabbitMQ queues and streams.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("EMPORIUM_AMQP_URL", DEFAULT_AMQP_URL),
        help="the broker (default: EMPORIUM_AMQP_URL or %(default)s)",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    listing = commands.add_parser("queues", help="depth and consumers of every queue and stream")
    listing.set_defaults(run=queues)
    peeking = commands.add_parser("peek", help="show messages without taking them")
    peeking.add_argument("queue")
    peeking.add_argument("-n", type=int, default=10, help="at most this many (default 10)")
    peeking.set_defaults(run=peek)
    moving = commands.add_parser("requeue", help="move QUEUE.dlq messages back to QUEUE")
    moving.add_argument("queue", help="the work queue, e.g. payments.charge")
    moving.add_argument("--limit", type=int, default=None, help="at most this many")
    moving.set_defaults(run=requeue)
    renewing = commands.add_parser(
        "renew", help="re-create a queue declared with older arguments, keeping its messages"
    )
    renewing.add_argument("queue", help="a work queue, its DLQ or a retry queue")
    renewing.add_argument(
        "--replicas",
        type=int,
        default=int(os.environ["EMPORIUM_AMQP_REPLICAS"])
        if os.environ.get("EMPORIUM_AMQP_REPLICAS")
        else None,
        help="replicas on a cluster (default: EMPORIUM_AMQP_REPLICAS, else the broker's)",
    )
    renewing.set_defaults(run=renew)
    replaying = commands.add_parser("replay", help="read a stream again from a position")
    replaying.add_argument("stream", help="e.g. orders.events")
    replaying.add_argument("--from", dest="start", required=True, help="first|last|next|N|time")
    replaying.add_argument("--limit", type=int, default=20, help="print at most this many")
    replaying.add_argument(
        "--idle", type=float, default=2.0, help="stop after this many quiet seconds"
    )
    replaying.add_argument("--consumer", help="reset this consumer's stored offset instead")
    replaying.add_argument("--database", help="with --consumer: the consumer's database URL")
    replaying.set_defaults(run=replay)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
