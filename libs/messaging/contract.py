"""The messaging contract: which command goes to which work queue, which event to which stream
and which queues, read from the `emporium.messaging.v1` options on the protobuf messages
(`proto/emporium/messaging/v1/messaging.proto`). Topologies, publishers' routing and consumers'
accepted types are derived from it at start, so no queue or stream name is written in code.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.message import Message

from emporium.messaging.v1 import messaging_pb2 as contract_pb
from libs.messaging.envelope import Outgoing
from libs.messaging.topology import (
    COMMANDS_EXCHANGE,
    EVENTS_EXCHANGE,
    EventStream,
    Topology,
    WorkQueue,
)

# The generated contracts' top-level package (build/gen/emporium, or Bazel's proto targets).
CONTRACTS_PACKAGE = "emporium"


class ContractError(ValueError):
    """The messaging options contradict each other or name what no contract declares."""


@dataclass(frozen=True)
class Route:
    """Where one message type goes, and who sends and takes it."""

    message: type[Message]
    kind: str  # "command" or "event"
    exchange: str
    routing_key: str
    producer: str
    # The work queue a command goes to, or the stream that keeps an event.
    destination: str
    # Work queues bound to an event (commands: empty).
    queues: tuple[str, ...] = ()

    @property
    def full_name(self) -> str:
        return str(self.message.DESCRIPTOR.full_name)

    @property
    def descriptor(self) -> Descriptor:
        return cast(Descriptor, self.message.DESCRIPTOR)


@dataclass(frozen=True)
class MessagingContract:
    """Every work queue, stream and routed message the loaded contract files declare."""

    work_queues: tuple[WorkQueue, ...]
    streams: tuple[EventStream, ...]
    routes: tuple[Route, ...]
    queue_consumers: dict[str, str]  # work queue -> the service that consumes it
    stream_producers: dict[str, str]  # stream -> the service that publishes its events
    stream_readers: dict[str, tuple[str, ...]]  # stream -> the services that read it

    @classmethod
    def from_files(cls, files: Iterable[FileDescriptor]) -> MessagingContract:
        """The contract declared by `files`; ContractError names what does not add up."""
        queues: dict[str, contract_pb.WorkQueue] = {}
        streams: dict[str, contract_pb.EventStream] = {}
        messages: list[Descriptor] = []
        for file in files:
            options = file.GetOptions()
            for queue in options.Extensions[contract_pb.work_queue]:
                _declare_once(queues, queue.name, queue, file)
            for stream in options.Extensions[contract_pb.event_stream]:
                _declare_once(streams, stream.name, stream, file)
            messages.extend(file.message_types_by_name.values())
        routes = tuple(
            route
            for m in sorted(messages, key=lambda d: d.full_name)
            if (route := _route(m, queues, streams))
        )
        work_queues = tuple(_work_queue(queue, routes) for queue in queues.values())
        event_streams = tuple(
            EventStream(
                stream.name,
                routing_keys=(f"{stream.producer}.#",),
                max_age=stream.max_age or "7D",
                accepts=tuple(r.message for r in routes if r.destination == stream.name),
            )
            for stream in streams.values()
        )
        return cls(
            work_queues=work_queues,
            streams=event_streams,
            routes=routes,
            queue_consumers={q.name: q.consumer for q in queues.values()},
            stream_producers={s.name: s.producer for s in streams.values()},
            stream_readers={s.name: tuple(s.readers) for s in streams.values()},
        )

    def topology(
        self,
        service: str,
        *,
        max_deliveries: int | None = None,
        retry_delays: tuple[float, ...] | None = None,
    ) -> Topology:
        """What `service` declares: the work queues it consumes (their delivery limit and
        retry delays replaced when given: an operator's override of the contract's) and the
        streams of its events."""
        queues = tuple(
            replace(
                queue,
                max_deliveries=max_deliveries or queue.max_deliveries,
                retry_delays=retry_delays or queue.retry_delays,
            )
            for queue in self.work_queues
            if self.queue_consumers[queue.name] == service
        )
        streams = tuple(s for s in self.streams if self.stream_producers[s.name] == service)
        return Topology(work_queues=queues, streams=streams)

    def fleet_topology(self) -> Topology:
        """Every service's topology, as the fleet declares it (contract delays)."""
        services = sorted({*self.queue_consumers.values(), *self.stream_producers.values()})
        return Topology(extra=tuple(self.topology(service) for service in services))

    def streams_read_by(self, service: str) -> tuple[EventStream, ...]:
        return tuple(s for s in self.streams if service in self.stream_readers[s.name])

    def route(self, message: type[Message]) -> Route:
        for route in self.routes:
            if route.message.DESCRIPTOR.full_name == message.DESCRIPTOR.full_name:
                return route
        raise ContractError(
            f"{message.DESCRIPTOR.full_name} is neither a command nor an event: give it an"
            " (emporium.messaging.v1.command) or (emporium.messaging.v1.event) option"
        )

    def outgoing(self, body: Message, *, correlation_id: str = "") -> Outgoing:
        """`body` addressed as its contract says: a command to its work queue, an event to the
        events exchange under `<producer>.<MessageName>`."""
        route = self.route(type(body))
        return Outgoing(route.exchange, route.routing_key, body, correlation_id=correlation_id)


def contract_of_image(image: Path) -> MessagingContract:
    """The messaging contract of a buf image (a FileDescriptorSet), in a pool of its own."""
    files = descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)  # type: ignore[no-untyped-call]
    return MessagingContract.from_files(
        pool.FindFileByName(f.name)  # type: ignore[no-untyped-call]
        for f in files.file
        if f.name.startswith(f"{CONTRACTS_PACKAGE}/")
    )


def breaking_changes(old: MessagingContract, new: MessagingContract) -> list[str]:
    """What `new` breaks of `old` (buf breaking does not read option values): a work queue or
    stream removed, a message that stops being routed, or one routed elsewhere. Messages in
    flight, stored offsets and deployed producers would be stranded."""
    problems = [
        f"work queue {name!r} removed"
        for name in old.queue_consumers
        if name not in new.queue_consumers
    ]
    problems += [
        f"stream {name!r} removed"
        for name in old.stream_producers
        if name not in new.stream_producers
    ]
    routes = {route.full_name: route for route in new.routes}
    for before in old.routes:
        after = routes.get(before.full_name)
        if after is None:
            problems.append(f"{before.full_name} is no longer a command or event")
        elif (after.kind, after.exchange, after.routing_key, after.destination) != (
            before.kind,
            before.exchange,
            before.routing_key,
            before.destination,
        ):
            problems.append(
                f"{before.full_name} moved: {before.kind} to {before.destination!r}"
                f" ({before.routing_key}) is now {after.kind} to {after.destination!r}"
                f" ({after.routing_key})"
            )
    return problems


def _declare_once(
    declared: dict[str, contract_pb.WorkQueue] | dict[str, contract_pb.EventStream],
    name: str,
    declaration: contract_pb.WorkQueue | contract_pb.EventStream,
    file: FileDescriptor,
) -> None:
    if not name:
        raise ContractError(f"{file.name}: a work queue or stream without a name")
    if name in declared:
        raise ContractError(f"{file.name}: {name!r} is declared twice")
    declared[name] = declaration  # type: ignore[assignment]


def _route(
    message: Descriptor,
    queues: dict[str, contract_pb.WorkQueue],
    streams: dict[str, contract_pb.EventStream],
) -> Route | None:
    options = message.GetOptions()
    is_command = options.HasExtension(contract_pb.command)
    is_event = options.HasExtension(contract_pb.event)
    if is_command and is_event:
        raise ContractError(f"{message.full_name} is marked both a command and an event")
    message_class = message_factory.GetMessageClass(message)
    if is_command:
        command = options.Extensions[contract_pb.command]
        if command.queue not in queues:
            raise ContractError(
                f"{message.full_name}: command for {command.queue!r}, which no contract declares"
            )
        if not command.producer:
            raise ContractError(f"{message.full_name}: a command without a producer")
        return Route(
            message_class,
            "command",
            COMMANDS_EXCHANGE,
            command.queue,
            command.producer,
            command.queue,
        )
    if is_event:
        event = options.Extensions[contract_pb.event]
        stream = streams.get(event.stream)
        if stream is None:
            raise ContractError(
                f"{message.full_name}: event kept on {event.stream!r}, which no contract declares"
            )
        for queue in event.queues:
            if queue not in queues:
                raise ContractError(
                    f"{message.full_name}: event bound to {queue!r}, which no contract declares"
                )
        return Route(
            message_class,
            "event",
            EVENTS_EXCHANGE,
            f"{stream.producer}.{message.name}",
            stream.producer,
            stream.name,
            tuple(event.queues),
        )
    return None


def _work_queue(queue: contract_pb.WorkQueue, routes: tuple[Route, ...]) -> WorkQueue:
    commands = [r for r in routes if r.kind == "command" and r.destination == queue.name]
    events = [r for r in routes if r.kind == "event" and queue.name in r.queues]
    delays = tuple(d.ToTimedelta().total_seconds() for d in queue.retry_delays)
    if not queue.consumer:
        raise ContractError(f"work queue {queue.name!r} names no consumer")
    if queue.max_deliveries < 1 or not delays:
        raise ContractError(
            f"work queue {queue.name!r} needs max_deliveries >= 1 and at least one retry delay"
        )
    return WorkQueue(
        queue.name,
        bindings=tuple((EVENTS_EXCHANGE, r.routing_key) for r in events),
        accepts=tuple(r.message for r in commands + events),
        max_deliveries=queue.max_deliveries,
        retry_delays=delays,
    )


def generated_modules(package: str = CONTRACTS_PACKAGE) -> list[ModuleType]:
    """Imports every generated `*_pb2` module of the contracts found on the path (once, even
    when the path names a directory twice)."""
    root = importlib.import_module(package)
    names: set[str] = set()
    for directory in root.__path__:
        for path in Path(directory).glob("*/*/*_pb2.py"):
            relative = path.relative_to(directory).with_suffix("")
            names.add(".".join((package, *relative.parts)))
    return [importlib.import_module(name) for name in sorted(names)]


@cache
def fleet_contract() -> MessagingContract:
    """The contract of every generated contract file: loaded once per process."""
    return MessagingContract.from_files(module.DESCRIPTOR for module in generated_modules())


def outgoing(body: Message, *, correlation_id: str = "") -> Outgoing:
    """`body` addressed as the fleet's contract says (MessagingContract.outgoing)."""
    return fleet_contract().outgoing(body, correlation_id=correlation_id)
