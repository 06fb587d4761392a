"""/asyncapi.json: the fleet's messaging as AsyncAPI 3.0, generated from the messaging
contract. It validates against the official AsyncAPI 3.0 JSON schema (vendored from
`@asyncapi/specs`, see tests/asyncapi/README.md), every `$ref` in it resolves, and it lists
every command and event with its payload."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from libs.messaging.contract import fleet_contract
from libs.rpcclient.discovery import LocalRegistry
from services.gateway.config import GatewaySettings
from services.gateway.tests.fleet import serve_gateway

SCHEMA = Path(__file__).parent / "asyncapi" / "asyncapi-3.0.0.schema.json"
COMMANDS = {"AuthorizePayment", "CapturePayment", "VoidPayment", "RefundPayment"}
EVENTS = {
    "PaymentAuthorized",
    "PaymentDeclined",
    "PaymentCaptured",
    "PaymentVoided",
    "PaymentRefunded",
    "OrderCreated",
    "OrderConfirmed",
    "OrderCancelled",
}


async def served(tmp_path: Path) -> dict[str, Any]:
    # The document needs no upstream: the registry only names them.
    registry = LocalRegistry(tmp_path / "registry.json")
    for service in ("catalog", "inventory", "orders", "payments", "identity"):
        registry.register(service, "127.0.0.1:9")
    settings = GatewaySettings(registry_file=registry.path, port=0)
    async with serve_gateway(settings) as (_, url), httpx.AsyncClient() as http:
        response = await http.get(f"{url}/asyncapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


async def test_asyncapi_validates_and_lists_every_command_and_event(tmp_path: Path) -> None:
    document = await served(tmp_path)
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    assert document["asyncapi"] == "3.0.0"
    for ref in refs(document):
        resolve(document, ref)  # a KeyError names a dangling reference

    messages = document["components"]["messages"]
    assert set(messages) == COMMANDS | EVENTS
    for name, message in messages.items():
        route = next(r for r in fleet_contract().routes if r.message.DESCRIPTOR.name == name)
        assert message["bindings"]["amqp"]["messageType"] == route.full_name
        payload = resolve(document, message["payload"]["$ref"])
        fields = {f.json_name for f in route.descriptor.fields}
        assert set(payload["properties"]) == fields, name
    # Each command is sent by its producer and received by its queue's consumer; each event
    # is sent by its producer and received wherever the contract delivers it.
    operations = set()
    for operation in document["operations"].values():
        (message,) = operation["messages"]
        name = resolve(document, message["$ref"])["$ref"].rsplit("/", 1)[-1]
        operations.add((operation["action"], operation["x-emporium-service"], name))
    payment_events = {e for e in EVENTS if e.startswith("Payment")}
    order_events = EVENTS - payment_events
    assert operations == (
        {(a, s, c) for c in COMMANDS for a, s in (("send", "orders"), ("receive", "payments"))}
        | {
            (a, s, e)
            for e in payment_events
            for a, s in (("send", "payments"), ("receive", "orders"))
        }
        | {
            (a, s, e)
            for e in order_events
            for a, s in (("send", "orders"), ("receive", "notifications"))
        }
    )
    addresses = {channel["address"] for channel in document["channels"].values()}
    topology = fleet_contract().fleet_topology()
    assert {q.name for q in topology.all_work_queues()} <= addresses
    assert {s.name for s in topology.all_streams()} <= addresses
