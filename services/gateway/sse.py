"""Server streams as Server-Sent Events, resumable with `Last-Event-ID`.

How a stream's events are identified comes from its contract, never from a list of methods:
- a change log names where to resume in its request (`after_revision`, answered by each
  response's `revision`): `id:` is that field, and a reconnect sets `after_<field>` to the
  `Last-Event-ID`, so the service replays exactly what came after it;
- a stream of snapshots of one resource (each response carries its `etag`, the resource's
  version): `id:` is the etag, and a reconnect skips the first snapshot if it is still the one
  the client saw last (every later change is still sent);
- otherwise events carry no id.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from google.protobuf import descriptor, message
from google.protobuf.descriptor import FieldDescriptor

from libs.runtime.reasons import SharedReason
from services.gateway.problems import Problem
from services.gateway.transcoding import to_json

SSE_HEARTBEAT_SECONDS = 15.0
_AFTER = "after_"
_INTEGERS = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT32,
}


@dataclass(frozen=True)
class EventIds:
    id_field: str | None  # the response field that identifies an event
    resume_field: str | None  # the request field a reconnect sets to the last id (change logs)

    @classmethod
    def of(cls, method: descriptor.MethodDescriptor) -> EventIds:
        request, response = method.input_type, method.output_type
        for field in request.fields:
            target = field.name.removeprefix(_AFTER)
            if field.name.startswith(_AFTER) and target in response.fields_by_name:
                return cls(target, field.name)
        if "etag" in response.fields_by_name:
            return cls("etag", None)
        return cls(None, None)

    def event_id(self, item: message.Message) -> str:
        return str(getattr(item, self.id_field)) if self.id_field else ""

    def resume(self, request: message.Message, last_event_id: str | None) -> str | None:
        """Applies a reconnect's Last-Event-ID: to the request (a change log), or returns the
        id of the snapshot to skip if it comes first again."""
        if not last_event_id or self.id_field is None:
            return None
        if self.resume_field is None:
            return last_event_id
        field = request.DESCRIPTOR.fields_by_name[self.resume_field]
        value: object = last_event_id
        if field.type in _INTEGERS:
            if not last_event_id.isdigit():
                raise Problem(
                    400,
                    f"Last-Event-ID must be a {self.id_field} (a number), not {last_event_id!r}",
                    reason=SharedReason.INVALID_LAST_EVENT_ID,
                )
            value = int(last_event_id)
        setattr(request, self.resume_field, value)
        return None


SHUTTING_DOWN = Problem(
    503,
    "the gateway is shutting down; reconnect with Last-Event-ID to resume after the last event",
    reason=SharedReason.SHUTTING_DOWN,
    code="UNAVAILABLE",
)


async def server_sent_events(
    stream: AsyncIterator[message.Message],
    ids: EventIds,
    skip_first: str | None = None,
    draining: asyncio.Event | None = None,
) -> AsyncIterator[bytes]:
    """`event: message` per RPC message (with its `id:`), a comment every 15 s so proxies keep
    the connection, and a final `event: end`, or `event: error` with a problem (SHUTTING_DOWN
    when `draining` is set)."""
    queue: asyncio.Queue[message.Message | Problem | None] = asyncio.Queue(maxsize=64)

    async def pump() -> None:
        try:
            async for item in stream:
                await queue.put(item)
            await queue.put(None)
        except Problem as problem:
            await queue.put(problem)

    task = asyncio.create_task(pump())
    drained = asyncio.create_task((draining or asyncio.Event()).wait())
    try:
        first = True
        while True:
            getting = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait(
                (getting, drained),
                timeout=SSE_HEARTBEAT_SECONDS,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if getting not in done:
                getting.cancel()
                if drained in done:
                    item: message.Message | Problem | None = SHUTTING_DOWN
                else:
                    yield b": keep-alive\n\n"
                    continue
            else:
                item = getting.result()
            if item is None:
                yield b"event: end\ndata: {}\n\n"
                return
            if isinstance(item, Problem):
                document = item.document("", None)
                yield f"event: error\ndata: {json.dumps(document)}\n\n".encode()
                return
            event_id = ids.event_id(item)
            if first and skip_first is not None and event_id == skip_first:
                first = False
                continue  # the client has this snapshot already
            first = False
            head = f"id: {event_id}\n" if event_id else ""
            yield f"{head}event: message\ndata: {json.dumps(to_json(item))}\n\n".encode()
    finally:
        task.cancel()
        drained.cancel()
