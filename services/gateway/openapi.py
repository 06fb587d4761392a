"""OpenAPI 3.1 for the routes, generated from the same descriptors the gateway serves.

Path templates are expanded so that every path parameter is one segment
(`/v1/{name=orders/*}` → `/v1/orders/{order}`), messages become component schemas in their
proto3 JSON form, field behaviours become readOnly/writeOnly, and every operation documents its
problem+json errors and who may call it (`x-emporium-access`).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor
from google.protobuf.descriptor import FieldDescriptor

from services.gateway.routes import PATH_VARIABLE, Route
from services.gateway.transcoding import is_map, json_name, required_fields

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    # proto3 JSON writes 64-bit integers as strings and reads either form.
    FieldDescriptor.TYPE_INT64: {"type": ["string", "integer"], "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": ["string", "integer"], "format": "int64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": ["string", "integer"], "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": ["string", "integer"], "format": "uint64"},
    FieldDescriptor.TYPE_FIXED64: {"type": ["string", "integer"], "format": "uint64"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string", "description": "comma-separated field paths"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
}
SHARED_REASONS = "emporium.errors.v1"
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details with the gRPC status's ErrorInfo and BadRequest",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "code": {"type": "string", "description": "the gRPC status code"},
        "reason": {"type": "string", "description": "google.rpc.ErrorInfo.reason"},
        "domain": {"type": "string"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "violations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "description": {"type": "string"},
                    "reason": {"type": "string"},
                },
            },
        },
        "request_id": {"type": "string"},
    },
    "required": ["type", "title", "status"],
}


# One Server-Sent Event: `message` carries a response message as JSON, `error` a problem
# (once the stream is open its status cannot change), `end` the end of the stream.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One event of the stream. Its `id` identifies it (the resource's version or "
    "the change's revision); reconnect with `Last-Event-ID: <id>` to resume right after it.",
    "properties": {
        "event": {"type": "string", "enum": ["message", "error", "end"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
    },
}


def openapi_path(template: str) -> tuple[str, list[tuple[str, str, str]]]:
    """(OpenAPI path, [(parameter, request field, its literal prefix)]) for a template."""
    path = ""
    parameters: list[tuple[str, str, str]] = []
    position = 0
    for match in PATH_VARIABLE.finditer(template):
        path += template[position : match.start()]
        segments = (match["pattern"] or "*").split("/")
        rendered = []
        for index, segment in enumerate(segments):
            if segment in ("*", "**"):
                before = segments[index - 1] if index else match["field"].split(".")[-1]
                parameter = before.removesuffix("s") if before.endswith("s") else before
                rendered.append("{" + parameter + "}")
                parameters.append((parameter, match["field"], "/".join(segments[:index])))
            else:
                rendered.append(segment)
        path += "/".join(rendered)
        position = match.end()
    return path + template[position:], parameters


def _behaviors(field: FieldDescriptor) -> set[int]:
    options = field.GetOptions()
    return set(options.Extensions[field_behavior_pb2.field_behavior])


class JsonSchemas:
    """Protobuf messages as JSON schemas of their proto3 JSON form, collected as components
    (`#/components/schemas/<full name>`); /asyncapi.json reuses them for message payloads."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}

    def ref(self, message_type: descriptor.Descriptor) -> dict[str, Any]:
        if message_type.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message_type.full_name])
        name = message_type.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursive messages refer to themselves
            self.components[name] = self._object(message_type)
        return {"$ref": f"#/components/schemas/{name}"}

    def _object(self, message_type: descriptor.Descriptor) -> dict[str, Any]:
        properties = {}
        for field in message_type.fields:
            schema = self.field(field)
            behaviors = _behaviors(field)
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                schema["readOnly"] = True
            if field_behavior_pb2.INPUT_ONLY in behaviors:
                schema["writeOnly"] = True
            properties[json_name(field)] = schema
        return {"type": "object", "properties": properties}

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if is_map(field):
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        single = self.single(field)
        if field.is_repeated:
            return {"type": "array", "items": single}
        return single

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self.ref(field.message_type)
        if field.enum_type is not None:
            return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
        return dict(_SCALARS[field.type])


def _query_parameters(
    schemas: JsonSchemas, message_type: descriptor.Descriptor, bound: set[str], required: set[str]
) -> list[dict[str, Any]]:
    parameters = []
    for field in message_type.fields:
        if field.name in bound or json_name(field) in bound:
            continue
        is_message = field.message_type is not None
        if is_message and field.message_type.full_name not in _WELL_KNOWN:
            continue  # nested messages go in bodies, not query strings
        if _behaviors(field) & {field_behavior_pb2.OUTPUT_ONLY}:
            continue
        schema = schemas.field(field)
        parameters.append(
            {"name": field.name, "in": "query", "required": field.name in required}
            | {"schema": schema}
            | ({"explode": True} if field.is_repeated else {})
        )
    return parameters


def _form_encodable(message_type: descriptor.Descriptor) -> bool:
    """Whether a `body: "*"` request can come as an HTML/OAuth2 form: only scalar fields."""
    return all(f.message_type is None and not f.is_repeated for f in message_type.fields)


IDEMPOTENCY_KEY_DESCRIPTION = (
    "Runs the request at most once per key and caller: a retry with the same key and request "
    "replays the first answer (`Idempotent-Replayed: true`). The gateway passes it to the "
    "service as the request's `request_id`."
)


def build_document(routes: Sequence[Route], *, title: str, full_view: set[str]) -> dict[str, Any]:
    """`full_view`: operation ids that accept `?view=FULL` (their responses hold references)."""
    schemas = JsonSchemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path, path_parameters = openapi_path(route.template)
        method = route.method
        parameters: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": r"^[^/:?#]+$"},
                "description": f"the last segment of `{field}` ({prefix}/…)",
            }
            for name, field, prefix in path_parameters
        ]
        bound = {field.split(".")[0] for _, field, _ in path_parameters}
        required = required_fields(method.input_type)
        keyed = route.verb != "GET" and not route.streams_in
        if keyed and "request_id" in method.input_type.fields_by_name:
            bound.add("request_id")  # spelled Idempotency-Key over HTTP
        operation: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": f"{method.containing_service.name}.{method.name}",
            "tags": [_tag(route)],
            "x-emporium-access": _access(route),
            "x-emporium-reasons": error_reasons(method.containing_service.file.package),
            "responses": {
                "default": {
                    "description": "an error; its `reason` is one of `x-emporium-reasons`",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                }
            },
        }
        if "anonymous" in route.access.roles:
            operation["security"] = [{}]  # anyone: no token needed
        if route.body == "*":
            body_schema = schemas.ref(method.input_type)
        elif route.body:
            body_schema = schemas.field(method.input_type.fields_by_name[route.body])
            bound.add(route.body)
        if route.body:
            if route.streams_in:
                body_schema = {"type": "array", "items": body_schema}
            content = {"application/json": {"schema": body_schema}}
            if route.body == "*" and not route.streams_in and _form_encodable(method.input_type):
                content["application/x-www-form-urlencoded"] = {"schema": body_schema}
            operation["requestBody"] = {"required": True, "content": content}
        if route.body != "*":  # the fields neither the path nor the body binds
            parameters += _query_parameters(schemas, method.input_type, bound, required)
        if route.operation_id in full_view:
            parameters.append(
                {
                    "name": "view",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["BASIC", "FULL"]},
                    "description": "FULL adds the resources this one refers to",
                }
            )
        if keyed:
            parameters.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    # Required where the contract requires the request_id it becomes.
                    "required": "request_id" in required,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "description": IDEMPOTENCY_KEY_DESCRIPTION,
                }
            )
        operation["parameters"] = parameters
        output = schemas.ref(method.output_type)
        if route.streams_in and method.server_streaming:
            content = {"application/json": {"schema": {"type": "array", "items": output}}}
        elif route.streams_out:
            content = {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}
        else:
            content = {"application/json": {"schema": output}}
        operation["responses"]["200"] = {"description": "OK", "content": content}
        operation["description"] = _description(route)
        if route.verb == "GET" and not route.streams_out:
            operation["responses"]["304"] = {"description": "not modified (If-None-Match)"}
        paths.setdefault(path, {})[route.verb.lower()] = operation
    services = {_tag(route): route.method.containing_service.full_name for route in routes}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "1",
            "description": "Generated from the Emporium contracts (google.api.http). Get a "
            "token from `POST /v1/token` (the `oauth2` scheme does it for you in /docs) and "
            "send it as `Authorization: Bearer <token>`.",
        },
        "tags": [
            {"name": tag, "description": f"gRPC service `{services[tag]}`"}
            for tag in sorted(services)
        ],
        "paths": paths,
        "components": {
            "schemas": {**schemas.components, "Problem": PROBLEM_SCHEMA},
            "securitySchemes": SECURITY_SCHEMES,
        },
        "security": SECURITY,
    }


# A bearer JWT, pasted in or fetched by the OAuth2 password flow from the token endpoint.
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "oauth2": {
        "type": "oauth2",
        "flows": {"password": {"tokenUrl": "/v1/token", "scopes": {}}},
    },
}
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"oauth2": []}]


def error_reasons(package: str) -> list[str]:
    """The reasons an operation of `package` may return: its domain's ErrorReason enum
    (`proto/emporium/<domain>/v1/error_reason.proto`; a later version shares v1's), then the
    kit's and the gateway's (`emporium.errors.v1`)."""
    own = _enum_values(package) or _enum_values(".".join(package.split(".")[:2]) + ".v1")
    return own + [reason for reason in _enum_values(SHARED_REASONS) if reason not in own]


def _enum_values(package: str) -> list[str]:
    try:
        module = importlib.import_module(f"{package}.error_reason_pb2")
    except ModuleNotFoundError:
        return []
    values = module.DESCRIPTOR.enum_types_by_name["ErrorReason"].values
    return [value.name for value in values if value.number]


def _tag(route: Route) -> str:
    """Operations are grouped by service and version: `catalog v1`."""
    service = route.method.containing_service
    package = service.full_name.split(".")
    return f"{package[1]} {package[2]}" if len(package) > 3 else service.full_name


def _description(route: Route) -> str:
    access = _access(route)
    who = ", ".join(access["roles"])
    if "owner" in access:
        who += f"; {', '.join(access['owner']['roles'])} on their own `{access['owner']['field']}`"
    kind = ""
    if route.streams_in:
        kind = " The stream's messages as a JSON array."
    elif route.streams_out:
        kind = (
            " Server-Sent Events: each `id:` identifies the event; reconnect with "
            "`Last-Event-ID` to resume after it."
        )
    return f"gRPC `{route.method.full_name}`. Who may call: {who}.{kind}"


def _access(route: Route) -> dict[str, Any]:
    access: dict[str, Any] = {"roles": sorted(route.access.roles)}
    if route.access.owner_roles:
        access["owner"] = {
            "roles": sorted(route.access.owner_roles),
            "field": route.access.request_field or route.access.resource_field,
        }
    return access
