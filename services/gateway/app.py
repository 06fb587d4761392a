"""Wiring: the ASGI app from the contracts, its upstreams and stores, by plain constructors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from google.protobuf import descriptor, descriptor_pb2
from graphql import GraphQLSchema, graphql
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route as HttpRoute

from emporium.catalog.v1 import catalog_service_pb2 as catalog_pb
from emporium.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from emporium.catalog.v2 import catalog_service_pb2 as catalog_v2_pb
from emporium.catalog.v2 import catalog_service_pb2_grpc as catalog_v2_grpc
from emporium.identity.v1 import identity_service_pb2 as identity_pb
from emporium.identity.v1 import identity_service_pb2_grpc as identity_grpc
from emporium.inventory.v1 import inventory_service_pb2 as inventory_pb
from emporium.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from emporium.orders.v1 import orders_service_pb2 as orders_pb
from emporium.orders.v1 import orders_service_pb2_grpc as orders_grpc
from emporium.payments.v1 import payments_service_pb2 as payments_pb
from emporium.payments.v1 import payments_service_pb2_grpc as payments_grpc
from libs.messaging.contract import fleet_contract
from libs.resilience.backoff import Backoff
from libs.resilience.breaker import BreakerPolicy
from libs.rpcclient.change_feed import FEED_BACKOFF, follow
from libs.rpcclient.upstream import Upstream, UpstreamPolicy
from libs.runtime.deadline import budget
from libs.runtime.reasons import SharedReason
from libs.security.authentication import identity_jwks
from libs.security.service_channels import service_channels
from libs.security.tokens import JwksCache, TokenVerifier
from services.gateway.asyncapi import build_asyncapi
from services.gateway.caching import ResponseCache
from services.gateway.config import GatewaySettings
from services.gateway.dispatch import Dispatcher
from services.gateway.docs import DOCS_PAGE, GRAPHIQL_PAGE, asset_mounts
from services.gateway.graphql_api import SchemaBuilder
from services.gateway.idempotency import (
    IdempotencyStore,
    LocalIdempotencyStore,
    RedisIdempotencyStore,
)
from services.gateway.observability import RequestTelemetry
from services.gateway.openapi import build_document
from services.gateway.problems import Problem
from services.gateway.ratelimit import BucketPolicy, LocalRateLimiter, RateLimiter, RedisRateLimiter
from services.gateway.references import References
from services.gateway.rest import Authenticator, Limits, RestApi
from services.gateway.routes import ExposedService, Router, build_routes
from services.gateway.shedding import Shedding

log = logging.getLogger("emporium.gateway")


def _exposed(upstream: str, messages: Any, grpc_module: Any, service: str) -> ExposedService:
    return ExposedService(upstream, grpc_module, messages.DESCRIPTOR.services_by_name[service])


# The services behind the front door. Their annotated RPCs become routes by themselves; a new
# service needs one line here (its upstream and generated module).
EXPOSED = (
    _exposed("identity", identity_pb, identity_grpc, "IdentityService"),
    _exposed("catalog", catalog_pb, catalog_grpc, "CatalogService"),
    _exposed("catalog", catalog_v2_pb, catalog_v2_grpc, "CatalogService"),
    _exposed("inventory", inventory_pb, inventory_grpc, "InventoryService"),
    _exposed("orders", orders_pb, orders_grpc, "OrdersService"),
    _exposed("payments", payments_pb, payments_grpc, "PaymentsService"),
)


@dataclass
class Gateway:
    """The ASGI app and what it owns (for tests and the bench)."""

    app: Any
    settings: GatewaySettings
    upstreams: dict[str, Upstream]
    cache: ResponseCache
    jwks: JwksCache
    draining: asyncio.Event
    skipped: list[str] = field(default_factory=list)


class GatewayServer(uvicorn.Server):
    """uvicorn's server; when shutdown begins it also tells open event streams to end (with an
    event saying to reconnect), so a watch does not hold the drain for the whole grace period."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.gateway.draining.set()
        await super().shutdown(sockets)


def _upstreams(settings: GatewaySettings) -> dict[str, Upstream]:
    channels = service_channels(settings, "gateway")
    policy = UpstreamPolicy(
        default_timeout=settings.request_timeout_seconds,
        breaker=BreakerPolicy(cooldown=settings.upstream_breaker_cooldown_seconds),
    )
    names = {exposed.upstream for exposed in EXPOSED}
    return {name: Upstream(name, channels.channel(name), policy) for name in sorted(names)}


async def _watch_catalog(
    upstream: Upstream, cache: ResponseCache, backoff: Backoff = FEED_BACKOFF
) -> None:
    """Empties the response cache at every catalog change; keeps it off while disconnected.
    A plain stub on the upstream's channel, not the client kit: a feed open for the gateway's
    lifetime, reconnecting with backoff."""
    stub = catalog_grpc.CatalogServiceStub(upstream.channel)
    await follow(
        "catalog change feed",
        lambda: stub.WatchProducts(catalog_pb.WatchProductsRequest()),
        cache,
        log,
        backoff,
    )


def build(settings: GatewaySettings) -> Gateway:
    upstreams = _upstreams(settings)
    routes, skipped = build_routes(EXPOSED)
    for reason in skipped:
        log.warning("RPC not exposed", extra={"why": reason})
    dispatcher = Dispatcher(EXPOSED, upstreams)
    identity = upstreams["identity"].stub(identity_grpc.IdentityServiceStub)
    jwks = identity_jwks(identity, settings.jwks_refetch_seconds)
    verifier = TokenVerifier(
        jwks,
        issuer=settings.issuer,
        audience=settings.audience,
        leeway_seconds=settings.clock_skew_seconds,
    )
    redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
    prefix = settings.redis_key_prefix
    lock_seconds = settings.request_timeout_seconds * 2  # a crashed request frees its key
    limiter: RateLimiter = (
        RedisRateLimiter(redis, prefix + "ratelimit:") if redis else LocalRateLimiter()
    )
    idempotency: IdempotencyStore = (
        RedisIdempotencyStore(
            redis, settings.idempotency_ttl_seconds, lock_seconds, prefix + "idempotency:"
        )
        if redis
        else LocalIdempotencyStore(settings.idempotency_ttl_seconds, lock_seconds)
    )
    cache = ResponseCache(settings.cache_ttl_seconds)
    references = References(routes, dispatcher)
    buckets = {
        "read": BucketPolicy(settings.rate_read_burst, settings.rate_read_per_second),
        "write": BucketPolicy(settings.rate_write_burst, settings.rate_write_per_second),
    }
    limits = Limits(
        max_body_bytes=settings.max_body_bytes,
        stream_timeout=settings.stream_timeout_seconds,
        trusted_proxies=settings.trusted_proxies,
        buckets=buckets,
    )
    authenticator = Authenticator(verifier)
    draining = asyncio.Event()
    rest = RestApi(
        Router(routes),
        dispatcher,
        authenticator,
        limiter,
        idempotency,
        cache,
        references,
        limits,
        draining,
    )
    full_view = {
        r.operation_id for r in routes if r.safe and references.has_references(r.method.output_type)
    }
    document = build_document(routes, title="Emporium", full_view=full_view)
    schema = SchemaBuilder(dispatcher, references).build(routes)
    openapi_body = json.dumps(document).encode()
    asyncapi_body = json.dumps(
        build_asyncapi(fleet_contract(), title="Emporium messaging", version="1")
    ).encode()

    shedding = Shedding(settings)

    async def openapi(request: Request) -> Response:
        return Response(openapi_body, media_type="application/json")

    async def asyncapi(request: Request) -> Response:
        return Response(asyncapi_body, media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def graphql_endpoint(request: Request) -> Response:
        if _wants_ide(request):
            return HTMLResponse(GRAPHIQL_PAGE)
        return await shedding.serve(
            request, lambda request: _graphql(request, schema, rest, authenticator, settings)
        )

    async def rest_endpoint(request: Request) -> Response:
        # Every upstream call of this request shares its budget (the client kit reads it).
        with budget(settings.request_timeout_seconds):
            return await shedding.serve(request, rest)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        watcher = asyncio.create_task(_watch_catalog(upstreams["catalog"], cache))
        log.info("serving", extra={"port": settings.port, "routes": len(routes)})
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for upstream in upstreams.values():
                await upstream.close()
            if redis is not None:
                await redis.aclose()

    every_verb = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    app = Starlette(
        routes=[
            HttpRoute("/openapi.json", openapi, methods=["GET"]),
            HttpRoute("/asyncapi.json", asyncapi, methods=["GET"]),
            HttpRoute("/docs", docs, methods=["GET"]),
            HttpRoute("/healthz", healthz, methods=["GET"]),
            HttpRoute("/graphql", graphql_endpoint, methods=["GET", "POST"]),
            *asset_mounts(),
            HttpRoute("/{path:path}", rest_endpoint, methods=every_verb),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_problem},
    )
    return Gateway(
        RequestTelemetry(app, access_log=settings.access_log),
        settings,
        upstreams,
        cache,
        jwks,
        draining,
        skipped,
    )


def _wants_ide(request: Request) -> bool:
    """A browser opening /graphql (no query, HTML accepted) gets GraphiQL."""
    return (
        request.method == "GET"
        and "query" not in request.query_params
        and "text/html" in request.headers.get("accept", "")
    )


async def _http_problem(request: Request, error: Exception) -> Response:
    """Starlette's own refusals (a path no route pattern accepts) as problem+json too."""
    status = error.status_code if isinstance(error, HTTPException) else 500
    problem = Problem(status, str(getattr(error, "detail", "")) or "no such resource")
    return problem.response(request.url.path, getattr(request.state, "request_id", None))


async def _graphql(
    request: Request,
    schema: GraphQLSchema,
    rest: RestApi,
    authenticator: Authenticator,
    settings: GatewaySettings,
) -> Response:
    request.state.route = "/graphql"
    headers: dict[str, str] = {}
    try:
        principal = await authenticator.principal(request.headers.get("authorization"))
        request.state.principal = principal.subject
        if request.method == "GET":
            if "query" not in request.query_params:
                raise Problem(
                    400,
                    'send the query as ?query=... (or POST {"query": ...}); open /graphql in '
                    "a browser for GraphiQL",
                    reason=SharedReason.INVALID_REQUEST,
                )
            payload: Any = {
                "query": request.query_params.get("query", ""),
                "variables": json.loads(request.query_params.get("variables") or "{}"),
                "operationName": request.query_params.get("operationName"),
            }
        else:
            payload = json.loads(await rest.read_body(request) or b"{}")
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            raise Problem(400, 'send {"query": "..."} as JSON', reason=SharedReason.INVALID_REQUEST)
    except Problem as problem:
        problem.headers = {**headers, **problem.headers}
        return problem.response(request.url.path, request.state.request_id)
    except ValueError:
        return Problem(400, "the body is not JSON", reason=SharedReason.INVALID_REQUEST).response(
            request.url.path, request.state.request_id
        )

    async def rate_limit(method: descriptor.MethodDescriptor) -> None:
        reads = (
            method.GetOptions().idempotency_level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
        )
        route_class = "read" if reads else "write"
        await rest.rate_limit(request, principal, route_class, headers)

    with budget(settings.request_timeout_seconds):
        result = await graphql(
            schema,
            payload["query"],
            variable_values=payload.get("variables") or None,
            operation_name=payload.get("operationName"),
            context_value={"principal": principal, "rate_limit": rate_limit},
        )
    body: dict[str, Any] = {"data": result.data}
    if result.errors:
        body["errors"] = [error.formatted for error in result.errors]
    status = 200 if result.data is not None or not result.errors else 400
    return JSONResponse(body, status_code=status, headers=headers)
