"""HTTP/JSON <-> protobuf, as google/api/http.proto describes it.

A request message is assembled from the body (the whole message for `body: "*"`, one field
otherwise), the path variables, and, for the fields neither binds, the query string
(`?page_size=2&filter=...`, repeated fields by repeating the parameter, nested fields by dotted
names). Responses use the proto3 JSON mapping: lowerCamelCase names, well-known types in their
JSON forms (Timestamp as RFC 3339, FieldMask as "a,b", int64 as a string).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import descriptor, json_format, message, message_factory
from google.protobuf.descriptor import FieldDescriptor

from libs.runtime.errors import FieldViolation, invalid_argument
from libs.runtime.reasons import SharedReason
from libs.runtime.validation import violations_of
from services.gateway.routes import Route

# Query parameters the gateway itself reads; never fields of a request.
GATEWAY_PARAMETERS = frozenset({"view"})
# Well-known types whose proto3 JSON form is a string (GraphQL types them as String too).
JSON_STRING_TYPES = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
# ... and those a query parameter may carry: the above and the scalar wrappers.
_WKT_AS_SCALAR = JSON_STRING_TYPES | frozenset(
    {
        "google.protobuf.StringValue",
        "google.protobuf.Int64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.BoolValue",
    }
)


def _bad(field: str, description: str) -> Exception:
    return invalid_argument(
        SharedReason.INVALID_REQUEST,
        f"{field}: {description}",
        [FieldViolation(field, description, SharedReason.INVALID_REQUEST)],
    )


def required_fields(message_type: descriptor.Descriptor) -> set[str]:
    """The top-level fields the contract's buf.validate rules reject when left empty."""
    empty = message_factory.GetMessageClass(message_type)()
    return {violation.field.split(".")[0].split("[")[0] for violation in violations_of(empty)}


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise _bad("body", f"not valid JSON: {error}") from None


def json_name(field: FieldDescriptor) -> str:
    """The field's proto3 JSON name (lowerCamelCase unless the contract sets json_name)."""
    return str(field.json_name)  # type: ignore[attr-defined]  # missing from the stubs


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and bool(field.message_type.GetOptions().map_entry)


def _field(message_type: descriptor.Descriptor, name: str) -> FieldDescriptor | None:
    found: FieldDescriptor | None = message_type.fields_by_name.get(name)
    if found is not None:
        return found
    return next((f for f in message_type.fields if json_name(f) == name), None)


def _set_path(
    document: dict[str, Any], message_type: descriptor.Descriptor, path: str, value: Any
) -> None:
    """Puts `value` at a dotted field path of the JSON document of `message_type`."""
    parts = path.split(".")
    current = document
    current_type = message_type
    for index, part in enumerate(parts):
        field = _field(current_type, part)
        if field is None:
            raise _bad(path, "no such field")
        if index == len(parts) - 1:
            current[field.name] = _scalar(field, value, path)
            return
        if field.message_type is None or field.is_repeated:
            raise _bad(path, "no such field")
        current = current.setdefault(field.name, {})
        if not isinstance(current, dict):
            raise _bad(path, "conflicts with the body")
        current_type = field.message_type


def _scalar(field: FieldDescriptor, value: Any, path: str) -> Any:
    """A query or path string (or a list of them) as the JSON value the field expects."""
    if isinstance(value, list):
        if not field.is_repeated:
            if len(value) > 1:
                raise _bad(path, "given more than once")
            value = value[0]
        else:
            return [_one(field, v, path) for v in value]
    return _one(field, value, path)


def _one(field: FieldDescriptor, value: Any, path: str) -> Any:
    if not isinstance(value, str):
        return value
    if field.type == FieldDescriptor.TYPE_BOOL:
        if value not in ("true", "false"):
            raise _bad(path, "must be true or false")
        return value == "true"
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        try:
            return float(value)
        except ValueError:
            raise _bad(path, "must be a number") from None
    if field.message_type is not None and field.message_type.full_name not in _WKT_AS_SCALAR:
        raise _bad(path, "a message cannot be given as a query parameter")
    return value  # proto3 JSON reads integers, enums and the WKTs above from strings


def build_request(
    route: Route,
    path_values: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    body: Any,
) -> message.Message:
    request_type = route.method.input_type
    document: dict[str, Any] = {}
    if route.body == "*":
        if not isinstance(body, dict):
            raise _bad("body", "must be a JSON object")
        document = body
    elif route.body:
        field = _field(request_type, route.body)
        if field is None:  # a broken contract, not a client mistake
            raise RuntimeError(f"{route.method.full_name}: body field {route.body} not found")
        document[field.name] = body
    for path, value in path_values.items():
        _set_path(document, request_type, path, value)
    if route.body != "*":
        set_parameters(document, request_type, query)
    return parse_message(document, route.method.input_type)


def set_parameters(
    document: dict[str, Any], message_type: descriptor.Descriptor, items: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """Sets query-string (or form) parameters on `document`: dotted paths, repeated names for
    repeated fields."""
    grouped: dict[str, list[str]] = {}
    for key, value in items:
        if key not in GATEWAY_PARAMETERS:
            grouped.setdefault(key, []).append(value)
    for key, values in grouped.items():
        _set_path(document, message_type, key, values)
    return document


def parse_message(document: Any, message_type: descriptor.Descriptor) -> message.Message:
    request = message_factory.GetMessageClass(message_type)()
    try:
        json_format.ParseDict(document, request)
    except json_format.ParseError as error:
        found = _mismatch(document, message_type, "")
        if found is not None:
            raise _bad(*found) from None
        text = str(error)
        field = text.split(" at ")[-1].split('"')[1] if ' at "' in text else "body"
        raise _bad(field, text) from None
    return request


_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
# Well-known types whose JSON form is not an object of their fields.
_WKT_NOT_OBJECTS = _WKT_AS_SCALAR | frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)


def _mismatch(
    document: Any, message_type: descriptor.Descriptor, prefix: str
) -> tuple[str, str] | None:
    """The first field whose JSON value has the wrong shape, as (path, what it must be):
    protobuf's own parse errors name the wrong thing (`"price": "free"` is "no field named
    'f'"). None when the shapes are right (the parse failed for another reason)."""
    if not isinstance(document, dict):
        return (prefix or "body", "must be a JSON object")
    for key, value in document.items():
        field = _field(message_type, str(key))
        path = f"{prefix}.{key}" if prefix else str(key)
        if field is None:
            return (path, "no such field")
        if value is None:
            continue
        if is_map(field):
            if not isinstance(value, dict):
                return (path, "must be a JSON object")
            continue
        values = value if field.is_repeated else [value]
        if field.is_repeated and not isinstance(value, list):
            return (path, "must be a JSON array")
        for item in values:
            found = _shape(field, item, path)
            if found is not None:
                return found
    return None


def _shape(field: FieldDescriptor, value: Any, path: str) -> tuple[str, str] | None:
    if field.message_type is not None:
        if field.message_type.full_name in _WKT_NOT_OBJECTS:
            return None
        return _mismatch(value, field.message_type, path)
    if field.type == FieldDescriptor.TYPE_STRING and not isinstance(value, str):
        return (path, "must be a string")
    if field.type == FieldDescriptor.TYPE_BOOL and not isinstance(value, bool):
        return (path, "must be true or false")
    if field.type in _INTEGER_TYPES:
        text = str(value)
        if isinstance(value, bool) or not text.lstrip("-").isdigit():
            return (path, "must be an integer (a number or a string of digits)")
    return None


def to_json(msg: message.Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg)
