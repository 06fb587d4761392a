"""REST/JSON: one handler for every route the contracts declare.

A request goes: route → caller (bearer token) → rate limit → body (size, JSON) → request
message → idempotency key → the RPC (unary, client stream as a JSON array, server stream as
Server-Sent Events) → JSON, with ETag/304 and the public cache for reads, Link headers for
pages, and `?view=FULL` following resource references. Every failure is problem+json.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from google.protobuf import message
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from libs.runtime.errors import DomainError
from libs.runtime.reasons import SharedReason
from libs.security.tokens import ANONYMOUS, InvalidToken, Principal, TokenVerifier, bearer_token
from services.gateway.caching import ResponseCache, etag_of, matches
from services.gateway.dispatch import Dispatcher
from services.gateway.idempotency import IdempotencyStore, Outcome, StoredResponse
from services.gateway.problems import Problem, from_domain_error
from services.gateway.ratelimit import BucketPolicy, RateLimiter
from services.gateway.references import References
from services.gateway.routes import Route, Router
from services.gateway.sse import EventIds, server_sent_events
from services.gateway.transcoding import (
    build_request,
    parse_json,
    required_fields,
    set_parameters,
    to_json,
)

log = logging.getLogger("emporium.gateway")
JSON = "application/json"
# Accepted for `body: "*"` routes of scalar fields, as OAuth2 clients post to /v1/token.
FORM = "application/x-www-form-urlencoded"
MAX_IDEMPOTENCY_KEY = 255
# Derives a request_id from an Idempotency-Key, so the service dedupes too (uuid5 namespace).
_REQUEST_ID_NAMESPACE = uuid.UUID("0b8e4a0e-6f0c-4f5e-9d4c-6a1f4c2f9e11")


@dataclass
class Limits:
    max_body_bytes: int
    stream_timeout: float
    trusted_proxies: int
    buckets: dict[str, BucketPolicy]


def client_ip(request: Request, trusted_proxies: int) -> str:
    forwarded = request.headers.get("x-forwarded-for")
    if trusted_proxies and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",")]
        return hops[max(0, len(hops) - trusted_proxies)]
    return request.client.host if request.client else "unknown"


class Authenticator:
    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    async def principal(self, authorization: str | None) -> Principal:
        if authorization and authorization[:6].lower() == "basic ":
            # OAuth2 clients (Swagger UI's Authorize among them) send their client credentials
            # this way to the token endpoint; they name no user.
            return ANONYMOUS
        try:
            token = bearer_token(authorization)
            return ANONYMOUS if token is None else await self._verifier.verify(token)
        except InvalidToken as error:
            raise Problem(
                401,
                str(error),
                reason=SharedReason.INVALID_TOKEN,
                code="UNAUTHENTICATED",
                headers={
                    "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{error}"'
                },
            ) from None


class RestApi:
    def __init__(
        self,
        router: Router,
        dispatcher: Dispatcher,
        authenticator: Authenticator,
        limiter: RateLimiter,
        idempotency: IdempotencyStore,
        cache: ResponseCache,
        references: References,
        limits: Limits,
        draining: asyncio.Event,
    ) -> None:
        self._router = router
        self._dispatcher = dispatcher
        self._authenticator = authenticator
        self._limiter = limiter
        self._idempotency = idempotency
        self._cache = cache
        self._references = references
        self._limits = limits
        self._draining = draining  # set when the gateway begins to shut down
        self._event_ids = {
            route.operation_id: EventIds.of(route.method)
            for route in router.routes
            if route.streams_out
        }
        # Unsafe routes whose contract requires the request_id an Idempotency-Key becomes.
        self._key_required = {
            route.operation_id
            for route in router.routes
            if not route.safe and "request_id" in required_fields(route.method.input_type)
        }

    async def __call__(self, request: Request) -> Response:
        headers: dict[str, str] = {}
        try:
            return await self._handle(request, headers)
        except DomainError as error:
            problem = from_domain_error(error)
        except Problem as raised:
            problem = raised
        except Exception:
            log.exception("unexpected error", extra={"path": request.url.path})
            problem = Problem(500, "the gateway failed; the request id identifies the log line")
        problem.headers = {**headers, **problem.headers}
        return problem.response(request.url.path, request.state.request_id)

    def _caller(self, request: Request, principal: Principal) -> str:
        """Whose limits and idempotency keys: the principal, or the client IP if anonymous."""
        return principal.subject or f"ip:{client_ip(request, self._limits.trusted_proxies)}"

    async def rate_limit(
        self, request: Request, principal: Principal, route_class: str, headers: dict[str, str]
    ) -> None:
        caller = self._caller(request, principal)
        policy = self._limits.buckets[route_class]
        verdict = await self._limiter.take(f"{route_class}:{caller}", policy)
        headers.update(verdict.headers(route_class, policy))
        if not verdict.allowed:
            raise Problem(
                429,
                f"rate limit of {policy.per_second:g}/s ({route_class}) reached; retry later",
                reason=SharedReason.RATE_LIMITED,
                code="RESOURCE_EXHAUSTED",
            )

    async def read_body(self, request: Request) -> bytes:
        limit = self._limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        body = b"".join(chunks)
        media = _media_type(request)
        if body.strip() and media not in (JSON, FORM) and not media.endswith("+json"):
            raise Problem(
                415,
                f"send the body as {JSON}, not {media}",
                reason=SharedReason.UNSUPPORTED_MEDIA_TYPE,
            )
        return body

    def _document(self, request: Request, route: Route, raw: bytes) -> Any:
        """The body as the JSON document of the bound field (or the whole request)."""
        if _media_type(request) != FORM:
            return parse_json(raw)
        if route.body != "*" or route.streams_in:
            raise Problem(
                415, f"send the body as {JSON}", reason=SharedReason.UNSUPPORTED_MEDIA_TYPE
            )
        items = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        return set_parameters({}, route.method.input_type, items)

    async def _handle(self, request: Request, headers: dict[str, str]) -> Response:
        found = self._router.match(request.method, request.url.path)
        if found is None:
            raise Problem(404, f"no route for {request.url.path}", reason=SharedReason.NO_ROUTE)
        if isinstance(found, str):
            raise Problem(
                405,
                f"{request.method} is not allowed here; use {found}",
                reason=SharedReason.METHOD_NOT_ALLOWED,
                headers={"Allow": found},
            )
        route, path_values = found
        request.state.route = route.template
        principal = await self._authenticator.principal(request.headers.get("authorization"))
        request.state.principal = principal.subject
        await self.rate_limit(request, principal, route.route_class, headers)
        raw = b"" if route.safe else await self.read_body(request)
        body = self._document(request, route, raw) if route.body else None
        if route.streams_in:
            if not isinstance(body, list):
                raise Problem(
                    400, "send the stream as a JSON array", reason=SharedReason.INVALID_REQUEST
                )
            requests = [build_request(route, path_values, (), item) for item in body]
            result = await self._dispatcher.client_stream(route.method, requests, principal)
            document: Any = (
                [to_json(r) for r in result] if isinstance(result, list) else to_json(result)
            )
            return _json(document, headers)
        rpc_request = build_request(route, path_values, request.query_params.multi_items(), body)
        if route.streams_out:
            return await self._events(request, route, rpc_request, principal, headers)
        key = request.headers.get("idempotency-key")
        if (
            key is None
            and route.operation_id in self._key_required
            and not getattr(rpc_request, "request_id")  # noqa: B009
        ):
            self._dispatcher.decide(route.method, rpc_request, principal)  # 401/403 come first
            raise Problem(
                400,
                f"{route.verb} {route.template} needs an Idempotency-Key header (any unique "
                "string, such as a UUID): the request runs at most once per key",
                reason=SharedReason.IDEMPOTENCY_KEY_REQUIRED,
            )
        if route.safe or key is None:
            return await self._unary(request, route, rpc_request, principal, headers)
        return await self._once(request, route, rpc_request, principal, headers, key, raw)

    async def _once(
        self,
        request: Request,
        route: Route,
        rpc_request: message.Message,
        principal: Principal,
        headers: dict[str, str],
        key: str,
        raw: bytes,
    ) -> Response:
        """Runs an unsafe request at most once per Idempotency-Key and caller."""
        if not key or len(key) > MAX_IDEMPOTENCY_KEY:
            raise Problem(
                400,
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
                reason=SharedReason.INVALID_IDEMPOTENCY_KEY,
            )
        scoped = f"{self._caller(request, principal)}:{key}"
        fingerprint = hashlib.sha256(
            b"\n".join(
                [
                    request.method.encode(),
                    request.url.path.encode(),
                    request.url.query.encode(),
                    raw,
                ]
            )
        ).hexdigest()
        begun = await self._idempotency.begin(scoped, fingerprint)
        if begun.outcome is Outcome.REPLAY and begun.stored is not None:
            stored = begun.stored
            return Response(
                stored.body,
                status_code=stored.status,
                headers={**stored.headers, **headers, "Idempotent-Replayed": "true"},
            )
        if begun.outcome is Outcome.MISMATCH:
            raise Problem(
                422,
                "this Idempotency-Key was used with a different request",
                reason=SharedReason.IDEMPOTENCY_KEY_REUSED,
            )
        if begun.outcome is Outcome.IN_PROGRESS:
            raise Problem(
                409,
                "a request with this Idempotency-Key is still being processed",
                reason=SharedReason.IDEMPOTENCY_KEY_IN_USE,
                headers={"Retry-After": "1"},
            )
        field = rpc_request.DESCRIPTOR.fields_by_name.get("request_id")
        if field is not None and not getattr(rpc_request, "request_id"):  # noqa: B009
            rpc_request.request_id = str(uuid.uuid5(_REQUEST_ID_NAMESPACE, scoped))  # type: ignore[attr-defined]
        try:
            response = await self._unary(request, route, rpc_request, principal, headers)
        except (Problem, DomainError) as error:
            problem = error if isinstance(error, Problem) else from_domain_error(error)
            if problem.status >= 500:
                await self._idempotency.abandon(scoped)
                raise
            failed = problem.response(request.url.path, request.state.request_id)
            await self._idempotency.finish(scoped, fingerprint, _stored(failed))
            raise
        except BaseException:
            await self._idempotency.abandon(scoped)
            raise
        await self._idempotency.finish(scoped, fingerprint, _stored(response))
        return response

    async def _unary(
        self,
        request: Request,
        route: Route,
        rpc_request: message.Message,
        principal: Principal,
        headers: dict[str, str],
    ) -> Response:
        full_view = request.query_params.get("view", "").upper() == "FULL"
        cacheable = route.safe and route.public and not full_view
        cache_key = str(request.url.path) + "?" + request.url.query
        generation = self._cache.generation
        if cacheable and (hit := self._cache.get(cache_key)) is not None:
            return _conditional(request, hit.body, hit.etag, {**hit.headers, **headers})
        response = await self._dispatcher.unary(route.method, rpc_request, principal)
        document = to_json(response)
        if full_view:
            warnings = await self._references.expand(response, document, principal)
            if warnings:
                document["warnings"] = [w.document() for w in warnings]
        link = _next_link(request, rpc_request, response)
        if link:
            headers["Link"] = link
        body = json.dumps(document).encode()
        if not route.safe:
            return Response(body, media_type=JSON, headers=headers)
        etag = etag_of(body)
        if cacheable:
            cache_headers = {"Cache-Control": f"public, max-age={int(self._cache.ttl)}"}
            if link:
                cache_headers["Link"] = link
            self._cache.put(cache_key, generation, body, etag, cache_headers)
            headers.update(cache_headers)
        else:
            headers["Cache-Control"] = "private, no-cache"
        return _conditional(request, body, etag, headers)

    async def _events(
        self,
        request: Request,
        route: Route,
        rpc_request: message.Message,
        principal: Principal,
        headers: dict[str, str],
    ) -> StreamingResponse:
        ids = self._event_ids[route.operation_id]
        skip_first = ids.resume(rpc_request, request.headers.get("last-event-id"))
        stream = await self._dispatcher.server_stream(
            route.method, rpc_request, principal, stream_timeout=self._limits.stream_timeout
        )
        return StreamingResponse(
            server_sent_events(stream, ids, skip_first, self._draining),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", JSON).split(";")[0].strip().lower()


def _too_large(limit: int) -> Problem:
    return Problem(413, f"the body exceeds {limit} bytes", reason=SharedReason.BODY_TOO_LARGE)


def _json(document: Any, headers: dict[str, str]) -> Response:
    return Response(json.dumps(document), media_type=JSON, headers=headers)


def _conditional(request: Request, body: bytes, etag: str, headers: dict[str, str]) -> Response:
    headers = {**headers, "ETag": etag}
    if matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=JSON, headers=headers)


def _stored(response: Response) -> StoredResponse:
    keep = ("content-type", "link", "etag")
    headers = {k: v for k, v in response.headers.items() if k.lower() in keep}
    return StoredResponse(response.status_code, headers, bytes(response.body))


def _next_link(request: Request, rpc_request: message.Message, response: message.Message) -> str:
    """RFC 8288 `Link: <...>; rel="next"` from the contract's page_token/next_page_token."""
    if "page_token" not in rpc_request.DESCRIPTOR.fields_by_name:
        return ""
    if "next_page_token" not in response.DESCRIPTOR.fields_by_name:
        return ""
    token = getattr(response, "next_page_token")  # noqa: B009
    if not token:
        return ""
    query: Sequence[tuple[str, str]] = [
        (k, v)
        for k, v in request.query_params.multi_items()
        if k not in ("page_token", "pageToken")
    ]
    url = f"{request.url.path}?{urlencode([*query, ('page_token', token)])}"
    return f'<{url}>; rel="next"'
