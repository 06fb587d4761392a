"""The gateway's own overload limit: the runtime's adaptive limit (libs.runtime.overload) in
front of the API routes. A request beyond it is answered at once with 503 problem+json,
`OVERLOADED` and Retry-After, rather than queued until its budget is gone: beyond the in-flight
limit, when the event loop (uvicorn's queue of parsed requests) is congested, or when the
request's budget (`GATEWAY_REQUEST_TIMEOUT_SECONDS`, less the time it has just waited in the
loop) is shorter than `GATEWAY_OVERLOAD_BUDGET_FACTOR` x the latency a request started now
can expect (the lesser of finished requests' moving average and the requests in flight over
their recent completion rate)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from libs.runtime.overload import AdaptiveLimit
from services.gateway.config import GatewaySettings
from services.gateway.problems import overloaded

Endpoint = Callable[[Request], Awaitable[Response]]


class Shedding:
    def __init__(self, settings: GatewaySettings) -> None:
        self._retry_after_ms = settings.retry_pushback_ms
        self._budget = settings.request_timeout_seconds
        self.limit: AdaptiveLimit | None = None
        if settings.overload_protection:
            self.limit = AdaptiveLimit.of(settings)

    async def serve(self, request: Request, endpoint: Endpoint) -> Response:
        limit = self.limit
        if limit is None:
            return await endpoint(request)
        remaining = self._budget
        if limit.loop_delay is not None:
            remaining -= limit.loop_delay.delay
        if not limit.admit(remaining):
            problem = overloaded("the gateway is overloaded", self._retry_after_ms)
            return problem.response(request.url.path, getattr(request.state, "request_id", None))
        started = limit.now()
        try:
            return await endpoint(request)
        finally:
            limit.release(started)
