"""GraphQL at /graphql, its schema generated from the same contracts as the REST routes.

Unary RPCs routed as GET become queries, the other unary RPCs mutations (client- and
server-streaming RPCs stay REST/SSE). Arguments are the request's fields; types are the
messages in their proto3 JSON form (field names lowerCamelCase, 64-bit integers and
well-known types as strings), so a GraphQL answer and a REST answer hold the same JSON. A field
that references another resource (`google.api.resource_reference`) gets a `<field>Details`
field resolved through that resource's Get, as the caller: the same join as REST's `?view=FULL`.
Every call goes through the dispatcher, so authorization and rate limits are REST's.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from google.protobuf import descriptor, json_format, message
from google.protobuf.descriptor import FieldDescriptor
from graphql import (
    GraphQLArgument,
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLFloat,
    GraphQLInputField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLInt,
    GraphQLList,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
)

from libs.security.tokens import Principal
from services.gateway.dispatch import Dispatcher
from services.gateway.problems import Problem
from services.gateway.references import DETAILS_SUFFIX, References
from services.gateway.routes import Route
from services.gateway.transcoding import (
    JSON_STRING_TYPES,
    is_map,
    json_name,
    parse_message,
)

_INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
_FLOATS = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}

# Map fields (and Struct) have no GraphQL shape: they travel as their JSON object.
JSON_SCALAR = GraphQLScalarType(
    "JSON", description="a JSON value: map fields, in their proto3 JSON form"
)

# What a resolver needs from the request: who is calling (set by the HTTP endpoint).
Context = dict[str, Any]


def graphql_error(problem: Problem) -> GraphQLError:
    """The problem's status, reason and violations as the error's `extensions`."""
    document = problem.document("", None)
    return GraphQLError(
        problem.detail, extensions={k: v for k, v in document.items() if k != "detail"}
    )


def _field_name(method: descriptor.MethodDescriptor, version: str) -> str:
    name = method.name[0].lower() + method.name[1:]
    return name if version in ("", "v1") else f"{name}{version.upper()}"


class SchemaBuilder:
    def __init__(self, dispatcher: Dispatcher, references: References) -> None:
        self._dispatcher = dispatcher
        self._references = references
        self._outputs: dict[str, GraphQLOutputType] = {}
        self._inputs: dict[str, GraphQLInputType] = {}
        self._enums: dict[str, GraphQLEnumType] = {}
        self._names: dict[str, str] = {}  # full name -> GraphQL type name

    def build(self, routes: Sequence[Route]) -> GraphQLSchema:
        queries: dict[str, GraphQLField] = {}
        mutations: dict[str, GraphQLField] = {}
        seen: set[str] = set()
        for route in routes:
            method = route.method
            if method.client_streaming or method.server_streaming or method.full_name in seen:
                continue
            seen.add(method.full_name)
            target = queries if route.verb == "GET" else mutations
            target[_field_name(method, route.version)] = GraphQLField(
                self.output(method.output_type),
                args={
                    json_name(field): GraphQLArgument(self.input_field(field))
                    for field in method.input_type.fields
                },
                resolve=self._call(method),
                description=f"{method.full_name} ({route.verb} {route.template})",
            )
        return GraphQLSchema(
            query=GraphQLObjectType("Query", queries),
            mutation=GraphQLObjectType("Mutation", mutations) if mutations else None,
        )

    def _type_name(self, full_name: str, suffix: str = "") -> str:
        key = full_name + suffix
        if key not in self._names:
            short = full_name.split(".")[-1] + suffix
            taken = set(self._names.values())
            if short in taken:
                parts = full_name.split(".")
                short = "".join(p[:1].upper() + p[1:] for p in parts[-3:]) + suffix
            self._names[key] = short
        return self._names[key]

    def _scalar(self, field: FieldDescriptor) -> Any:
        if field.type == FieldDescriptor.TYPE_BOOL:
            return GraphQLBoolean
        if field.type in _INT32:
            return GraphQLInt
        if field.type in _FLOATS:
            return GraphQLFloat
        return GraphQLString  # strings, bytes, 64-bit integers (JSON strings)

    def _enum(self, enum: descriptor.EnumDescriptor) -> GraphQLEnumType:
        if enum.full_name not in self._enums:
            self._enums[enum.full_name] = GraphQLEnumType(
                self._type_name(enum.full_name), {v.name: v.name for v in enum.values}
            )
        return self._enums[enum.full_name]

    def _single_output(self, field: FieldDescriptor) -> Any:
        if field.enum_type is not None:
            return self._enum(field.enum_type)
        if field.message_type is not None:
            return self.output(field.message_type)
        return self._scalar(field)

    def output(self, message_type: descriptor.Descriptor) -> GraphQLOutputType:
        if message_type.full_name in JSON_STRING_TYPES:
            return GraphQLString
        name = message_type.full_name
        if name not in self._outputs:

            def fields() -> dict[str, GraphQLField]:
                result: dict[str, GraphQLField] = {}
                for field in message_type.fields:
                    if is_map(field):
                        result[json_name(field)] = GraphQLField(JSON_SCALAR)
                        continue
                    single = self._single_output(field)
                    repeated = field.is_repeated
                    result[json_name(field)] = GraphQLField(
                        GraphQLList(single) if repeated else single
                    )
                    reader = self._references.reader(field)
                    if reader is not None and not repeated:
                        result[json_name(field) + DETAILS_SUFFIX] = GraphQLField(
                            self.output(reader.output_type), resolve=self._follow(field)
                        )
                if not result:  # google.protobuf.Empty and friends: GraphQL needs a field
                    result["ok"] = GraphQLField(GraphQLBoolean, resolve=lambda *_: True)
                return result

            self._outputs[name] = GraphQLObjectType(self._type_name(name), fields)
        return self._outputs[name]

    def input_field(self, field: FieldDescriptor) -> Any:
        if field.enum_type is not None:
            single: Any = self._enum(field.enum_type)
        elif field.message_type is not None:
            single = self.input(field.message_type)
        else:
            single = self._scalar(field)
        return GraphQLList(single) if field.is_repeated else single

    def input(self, message_type: descriptor.Descriptor) -> GraphQLInputType:
        if message_type.full_name in JSON_STRING_TYPES:
            return GraphQLString
        name = message_type.full_name
        if name not in self._inputs:

            def fields() -> dict[str, GraphQLInputField]:
                result = {
                    json_name(f): GraphQLInputField(
                        JSON_SCALAR if is_map(f) else self.input_field(f)
                    )
                    for f in message_type.fields
                }
                return result or {"_": GraphQLInputField(GraphQLBoolean)}

            self._inputs[name] = GraphQLInputObjectType(self._type_name(name, "Input"), fields)
        return self._inputs[name]

    def _call(self, method: descriptor.MethodDescriptor) -> Callable[..., Awaitable[Any]]:
        async def resolve(_source: object, info: GraphQLResolveInfo[Any], **arguments: Any) -> Any:
            principal: Principal = info.context["principal"]
            try:
                await info.context["rate_limit"](method)
                request = parse_message(_plain(arguments), method.input_type)
                response = await self._dispatcher.unary(method, request, principal)
            except Problem as problem:
                raise graphql_error(problem) from None
            return graphql_json(response)

        return resolve

    def _follow(self, field: FieldDescriptor) -> Callable[..., Awaitable[Any]]:
        async def resolve(source: dict[str, Any], info: GraphQLResolveInfo[Any]) -> Any:
            name = source.get(json_name(field))
            if not name:
                return None
            try:
                response = await self._references.read(field, name, info.context["principal"])
            except Problem as problem:
                raise graphql_error(problem) from None
            return graphql_json(response)

        return resolve


def graphql_json(response: message.Message) -> dict[str, Any]:
    """A response in the proto3 JSON shape, with zero values written out: GraphQL would answer
    null for a field the JSON leaves out (`"nanos": null` for 0)."""
    return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)


def _plain(arguments: Any) -> Any:
    """GraphQL's argument values as plain JSON (enum values are their names already)."""
    return json.loads(json.dumps(arguments))
