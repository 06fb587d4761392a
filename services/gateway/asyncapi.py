"""AsyncAPI 3.0 for the fleet's messaging, generated from the messaging contract (the
`emporium.messaging.v1` options): a channel per work queue, per event stream and per event's
routing key on the events exchange, with their AMQP bindings; a send operation for each
message's producer and a receive operation for each consumer; payload schemas from the
protobuf messages, through the same mapping as /openapi.json (their proto3 JSON form; on the
wire the body is the binary protobuf message named by the AMQP `type` property).
"""

from __future__ import annotations

from typing import Any

from libs.messaging.contract import MessagingContract, Route
from libs.messaging.topology import EVENTS_EXCHANGE
from services.gateway.openapi import JsonSchemas

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
CONTENT_TYPE = "application/x-protobuf"


def build_asyncapi(contract: MessagingContract, *, title: str, version: str) -> dict[str, Any]:
    schemas = JsonSchemas()
    messages: dict[str, dict[str, Any]] = {}
    channels: dict[str, dict[str, Any]] = {}
    operations: dict[str, dict[str, Any]] = {}

    def message_ref(channel: str, route: Route) -> dict[str, Any]:
        name = route.message.DESCRIPTOR.name
        channels[channel]["messages"][name] = {"$ref": f"#/components/messages/{name}"}
        return {"$ref": f"#/channels/{channel}/messages/{name}"}

    def operation(key: str, action: str, channel: str, route: Route, service: str) -> None:
        operations[key] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [message_ref(channel, route)],
            "summary": f"{service} {'sends' if action == 'send' else 'receives'}"
            f" {route.message.DESCRIPTOR.name}",
            "x-emporium-service": service,
        }

    for queue in contract.work_queues:
        channels[_channel_id(queue.name)] = {
            "address": queue.name,
            "title": f"work queue {queue.name}",
            "description": (
                f"Consumed by {contract.queue_consumers[queue.name]} (one consumer takes each"
                f" message). A handler failure is retried after {_seconds(queue.retry_delays)},"
                f" at most {queue.max_deliveries} attempts, then the message goes to"
                f" `{queue.dead_letter_queue}`."
            ),
            "messages": {},
            "bindings": {"amqp": _queue_binding(queue.name, "quorum")},
        }
    for stream in contract.streams:
        readers = contract.stream_readers[stream.name]
        channels[_channel_id(stream.name)] = {
            "address": stream.name,
            "title": f"event stream {stream.name}",
            "description": (
                f"Every event of {contract.stream_producers[stream.name]}, kept {stream.max_age}"
                " and read from an offset" + (f" by {', '.join(readers)}" if readers else "") + "."
            ),
            "messages": {},
            "bindings": {"amqp": _queue_binding(stream.name, "stream")},
        }
    for route in contract.routes:
        full_name = route.full_name
        messages[route.message.DESCRIPTOR.name] = {
            "name": full_name,
            "title": route.message.DESCRIPTOR.name,
            "summary": f"{route.kind} {full_name}",
            "contentType": CONTENT_TYPE,
            "payload": schemas.ref(route.descriptor),
            "correlationId": {
                "description": "the order the message is about",
                "location": "$message.header#/correlation_id",
            },
            "bindings": {
                "amqp": {"messageType": full_name, "bindingVersion": AMQP_BINDING_VERSION}
            },
        }
        name = route.message.DESCRIPTOR.name
        if route.kind == "command":
            queue_channel = _channel_id(route.destination)
            operation(f"send{name}", "send", queue_channel, route, route.producer)
            consumer = contract.queue_consumers[route.destination]
            operation(f"receive{name}", "receive", queue_channel, route, consumer)
            continue
        key_channel = _channel_id(route.routing_key)
        channels[key_channel] = {
            "address": route.routing_key,
            "title": f"event {route.routing_key}",
            "description": f"Published by {route.producer} on the `{EVENTS_EXCHANGE}` exchange.",
            "messages": {},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": EVENTS_EXCHANGE,
                        "type": "topic",
                        "durable": True,
                        "autoDelete": False,
                        "vhost": "/",
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        }
        operation(f"send{name}", "send", key_channel, route, route.producer)
        stream_channel = _channel_id(route.destination)
        for reader in contract.stream_readers[route.destination]:
            operation(f"read{name}_{reader}", "receive", stream_channel, route, reader)
        message_ref(stream_channel, route)
        for bound in route.queues:
            consumer = contract.queue_consumers[bound]
            operation(f"receive{name}_{consumer}", "receive", _channel_id(bound), route, consumer)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": (
                "Commands go to one work queue (the default exchange routes by queue name);"
                f" events are published on the `{EVENTS_EXCHANGE}` topic exchange as"
                " `<producer>.<Event>`, kept on their producer's stream and copied to the work"
                " queues bound to them. Generated from the `emporium.messaging.v1` options of"
                " the contracts."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "rabbitmq": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "RabbitMQ (set EMPORIUM_AMQP_URL for another broker)",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas.components},
    }


def _channel_id(address: str) -> str:
    """A channel key as AsyncAPI allows it (`payments.charge` → `payments_charge`)."""
    return address.replace(".", "_").replace("-", "_")


def _queue_binding(name: str, queue_type: str) -> dict[str, Any]:
    return {
        "is": "queue",
        "queue": {
            "name": name,
            "durable": True,
            "exclusive": False,
            "autoDelete": False,
            "vhost": "/",
        },
        "x-queue-type": queue_type,
        "bindingVersion": AMQP_BINDING_VERSION,
    }


def _seconds(delays: tuple[float, ...]) -> str:
    return ", ".join(f"{delay:g} s" for delay in delays)
