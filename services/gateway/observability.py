"""Per-request telemetry, as pure ASGI middleware (it must not buffer SSE streams): a server
span continuing the caller's `traceparent`, the request id (X-Request-ID, echoed or made), the
`http.server.request.duration` histogram by route template and status, and one JSON access-log
line per request when it ends."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from opentelemetry import context, metrics, propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.telemetry.logging import request_id
from libs.telemetry.tracing import spans_recorded, unsampled_child

access_log = logging.getLogger("emporium.gateway.access")
REQUEST_DURATION = metrics.get_meter("emporium.gateway").create_histogram(
    "http.server.request.duration", unit="s", description="HTTP requests by route and status"
)


_MAX_REQUEST_ID = 200


class RequestTelemetry:
    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log
        # Resolved once, after configure_tracing (a proxy tracer costs a few µs a request).
        self._tracer = trace.get_tracer("emporium.gateway")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        incoming = headers.get("x-request-id", "")
        rid = incoming if 0 < len(incoming) <= _MAX_REQUEST_ID else uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = rid
        started = time.perf_counter()
        status = 500
        token = request_id.set(rid)
        parent = propagate.extract(headers)
        if spans_recorded(headers.get("traceparent")):
            span = self._tracer.start_span(
                f"{scope['method']} {scope['path']}", context=parent, kind=SpanKind.SERVER
            )
        else:
            # Nobody will read this span: skip the SDK and carry the trace on (the caller's
            # trace id, or a new one) for logs and upstream calls, as the SDK would.
            span = trace.NonRecordingSpan(unsampled_child(parent))
        attached = context.attach(trace.set_span_in_context(span, parent))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = state.get("route", scope["path"])
            elapsed = time.perf_counter() - started
            REQUEST_DURATION.record(
                elapsed,
                {
                    "http.request.method": scope["method"],
                    # A path no route matched is not a label value: it would make a series
                    # per probe of random paths.
                    "http.route": route if "route" in state or status < 400 else "unmatched",
                    "http.response.status_code": status,
                },
            )
            if span.is_recording():
                span.update_name(f"{scope['method']} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(StatusCode.ERROR)
            if self.access_log:  # trace_id and request_id come from the log formatter
                access_log.info(
                    "request",
                    extra={
                        "http_method": scope["method"],
                        "route": route,
                        "status": status,
                        "latency_ms": round(elapsed * 1000, 2),
                        "principal": state.get("principal") or "anonymous",
                    },
                )
            span.end()
            context.detach(attached)
            request_id.reset(token)
