"""The REST surface, derived at start from the contracts' `google.api.http` annotations.

Every method of an exposed service that carries an HTTP rule and an access policy becomes a
route; a new annotated RPC needs no gateway code. Path templates follow google/api/http.proto:
`{name=orders/*}` binds a resource name segment by segment, `{x}` one segment, `**` the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor

from libs.security.access import AccessRule

PATH_VARIABLE = re.compile(r"\{(?P<field>[a-z_][a-z0-9_.]*)(?:=(?P<pattern>[^}]+))?\}")


@dataclass(frozen=True)
class ExposedService:
    """A gRPC service the gateway fronts: its upstream name and generated modules."""

    upstream: str
    grpc_module: ModuleType  # *_pb2_grpc, for the stub
    service: descriptor.ServiceDescriptor


@dataclass(frozen=True)
class Route:
    verb: str  # GET, POST, PATCH, DELETE, PUT
    template: str  # as written in the contract: /v1/{name=orders/*}
    pattern: re.Pattern[str]
    path_fields: tuple[str, ...]
    body: str  # "", "*" or a field name
    method: descriptor.MethodDescriptor
    exposed: ExposedService
    access: AccessRule

    @property
    def version(self) -> str:
        return self.template.split("/")[1] if self.template.startswith("/v") else ""

    @property
    def streams_out(self) -> bool:
        return self.method.server_streaming

    @property
    def streams_in(self) -> bool:
        return self.method.client_streaming

    @property
    def safe(self) -> bool:
        return self.verb == "GET"

    @property
    def public(self) -> bool:
        """Readable by anyone, so its response is the same for every caller."""
        return "anonymous" in self.access.roles

    @property
    def operation_id(self) -> str:
        return f"{self.method.containing_service.name}_{self.method.name}"

    @property
    def route_class(self) -> str:
        """The rate-limit class: reads and writes have separate buckets."""
        return "read" if self.safe else "write"


def compile_template(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """A regex with one group per bound field (groups named f0, f1, ... in field order)."""
    fields: list[str] = []
    regex = ""
    position = 0
    for match in PATH_VARIABLE.finditer(template):
        regex += re.escape(template[position : match.start()])
        segments = (match["pattern"] or "*").split("/")
        parts = []
        for segment in segments:
            if segment == "**":
                parts.append(r"[^?]+")
            elif segment == "*":
                parts.append(r"[^/:?]+")
            else:
                parts.append(re.escape(segment))
        regex += f"(?P<f{len(fields)}>{'/'.join(parts)})"
        fields.append(match["field"])
        position = match.end()
    regex += re.escape(template[position:])
    return re.compile(f"^{regex}$"), tuple(fields)


def _rules(method: descriptor.MethodDescriptor) -> Iterable[http_pb2.HttpRule]:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return
    rule = options.Extensions[annotations_pb2.http]
    yield rule
    yield from rule.additional_bindings


def build_routes(services: Sequence[ExposedService]) -> tuple[list[Route], list[str]]:
    """The routes, most literal first, and the annotated methods left out (with why)."""
    routes: list[Route] = []
    skipped: list[str] = []
    for exposed in services:
        for method in exposed.service.methods:
            rules = list(_rules(method))
            if not rules:
                continue
            access = AccessRule.of(method)
            if access is None:
                skipped.append(f"{method.full_name}: no emporium.access.v1.access policy")
                continue
            for rule in rules:
                verb = rule.WhichOneof("pattern")
                if verb is None or verb == "custom":
                    skipped.append(f"{method.full_name}: unsupported HTTP rule")
                    continue
                template = getattr(rule, verb)
                pattern, fields = compile_template(template)
                routes.append(
                    Route(
                        verb.upper(),
                        template,
                        pattern,
                        fields,
                        rule.body,
                        method,
                        exposed,
                        access,
                    )
                )
    # Literal text outranks variables: /v1/products:watch before /v1/{name=products/*}.
    routes.sort(key=lambda r: -len(PATH_VARIABLE.sub("", r.template)))
    return routes, skipped


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = list(routes)

    def match(self, verb: str, path: str) -> tuple[Route, dict[str, str]] | str | None:
        """(route, bound fields); or the allowed verbs ("GET, POST") if only the verb is
        wrong; or None if no route has this path."""
        allowed: list[str] = []
        for route in self.routes:
            found = route.pattern.match(path)
            if found is None:
                continue
            if route.verb != verb:
                allowed.append(route.verb)
                continue
            return route, {f: found[f"f{i}"] for i, f in enumerate(route.path_fields)}
        return ", ".join(sorted(set(allowed))) if allowed else None
