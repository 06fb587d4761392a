"""The gateway's own overload limit: the runtime's adaptive limit (libs.runtime.overload) in
front of the API routes. A request beyond it is answered at once with 503 problem+json,
`OVERLOADED` and Retry-After, rather than queued until its budget is gone."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from libs.runtime.config import ServiceSettings
from libs.runtime.overload import AdaptiveLimit
from services.gateway.problems import overloaded

Endpoint = Callable[[Request], Awaitable[Response]]


class Shedding:
    def __init__(self, settings: ServiceSettings) -> None:
        self._retry_after_ms = settings.retry_pushback_ms
        self.limit: AdaptiveLimit | None = None
        if settings.overload_protection:
            self.limit = AdaptiveLimit.of(settings)

    async def serve(self, request: Request, endpoint: Endpoint) -> Response:
        limit = self.limit
        if limit is None:
            return await endpoint(request)
        if not limit.admit():
            problem = overloaded("the gateway is overloaded", self._retry_after_ms)
            return problem.response(request.url.path, getattr(request.state, "request_id", None))
        started = limit.now()
        try:
            return await endpoint(request)
        finally:
            limit.release(started)
