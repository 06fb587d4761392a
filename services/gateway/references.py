"""Resource references, followed: a field annotated `google.api.resource_reference` names a
resource another exposed RPC reads (its Get). `?view=FULL` on REST and the `<field>Details`
fields of GraphQL read them, in parallel, as the same caller. A reference that cannot be read
degrades the response with a warning instead of failing it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.api import resource_pb2
from google.protobuf import descriptor, message, message_factory
from google.protobuf.descriptor import FieldDescriptor

from libs.security.tokens import Principal
from services.gateway.dispatch import Dispatcher
from services.gateway.problems import Problem
from services.gateway.routes import Route
from services.gateway.transcoding import is_map, json_name, to_json

DETAILS_SUFFIX = "Details"


def resource_type(message_type: descriptor.Descriptor) -> str:
    options = message_type.GetOptions()
    if options.HasExtension(resource_pb2.resource):
        return str(options.Extensions[resource_pb2.resource].type)
    return ""


def referenced_type(field: FieldDescriptor) -> str:
    options = field.GetOptions()
    if field.type != FieldDescriptor.TYPE_STRING or not options.HasExtension(
        resource_pb2.resource_reference
    ):
        return ""
    return str(options.Extensions[resource_pb2.resource_reference].type)


@dataclass(frozen=True)
class DegradedReference:
    field: str
    resource: str
    problem: Problem

    def document(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "resource": self.resource,
            "status": self.problem.status,
            "reason": self.problem.reason,
            "detail": self.problem.detail,
        }


class References:
    def __init__(self, routes: Sequence[Route], dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        # resource type -> the unary Get that reads it by name
        self.readers: dict[str, descriptor.MethodDescriptor] = {}
        for route in routes:
            method = route.method
            if (
                route.verb == "GET"
                and not route.streams_out
                and method.name.startswith("Get")
                and "name" in method.input_type.fields_by_name
            ):
                kind = resource_type(method.output_type)
                if kind:
                    self.readers.setdefault(kind, method)

    def reader(self, field: FieldDescriptor) -> descriptor.MethodDescriptor | None:
        return self.readers.get(referenced_type(field))

    def has_references(
        self, message_type: descriptor.Descriptor, seen: frozenset[str] = frozenset()
    ) -> bool:
        if message_type.full_name in seen:
            return False
        for field in message_type.fields:
            if self.reader(field) is not None:
                return True
            if field.message_type is not None and self.has_references(
                field.message_type, seen | {message_type.full_name}
            ):
                return True
        return False

    async def read(
        self, field: FieldDescriptor, name: str, principal: Principal
    ) -> message.Message:
        method = self.readers[referenced_type(field)]
        request = message_factory.GetMessageClass(method.input_type)(name=name)
        return await self._dispatcher.unary(method, request, principal)

    async def expand(
        self, msg: message.Message, document: dict[str, Any], principal: Principal
    ) -> list[DegradedReference]:
        """Adds `<field>Details` next to every reference in `document` (the JSON of `msg`)."""
        found: list[tuple[FieldDescriptor, str, dict[str, Any], str]] = []
        self._collect(msg, document, "", found)
        names = {(referenced_type(f), name) for f, name, _, _ in found}
        fields = {referenced_type(f): f for f, _, _, _ in found}

        async def fetch(kind: str, name: str) -> tuple[str, str, message.Message | Problem]:
            try:
                return kind, name, await self.read(fields[kind], name, principal)
            except Problem as problem:
                return kind, name, problem

        results = {
            (kind, name): outcome
            for kind, name, outcome in await asyncio.gather(*(fetch(k, n) for k, n in names))
        }
        warnings = []
        for field, name, target, path in found:
            outcome = results[(referenced_type(field), name)]
            if isinstance(outcome, Problem):
                warnings.append(DegradedReference(path, name, outcome))
            else:
                target[json_name(field) + DETAILS_SUFFIX] = to_json(outcome)
        return warnings

    def _collect(
        self,
        msg: message.Message,
        document: dict[str, Any],
        prefix: str,
        found: list[tuple[FieldDescriptor, str, dict[str, Any], str]],
    ) -> None:
        for field in msg.DESCRIPTOR.fields:
            path = f"{prefix}{field.name}"
            value = getattr(msg, field.name)
            if self.reader(field) is not None and not field.is_repeated:
                if value:
                    found.append((field, value, document, path))
            elif field.message_type is not None and json_name(field) in document:
                if field.is_repeated:
                    if is_map(field):
                        continue
                    for index, (item, item_doc) in enumerate(
                        zip(value, document[json_name(field)], strict=True)
                    ):
                        self._collect(item, item_doc, f"{path}[{index}].", found)
                elif msg.HasField(field.name):
                    self._collect(value, document[json_name(field)], f"{path}.", found)
