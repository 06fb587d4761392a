"""Server middleware, composed once per method at registration instead of once per call.

grpc.aio's ServerInterceptor runs `intercept_service` on every call; wrapping each method's
behaviour once at start gives the same chain (telemetry, errors, validation, ...) for all four
RPC kinds at a fraction of the per-call cost (bench/runtime_overhead.py measures it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor

Context = grpc.aio.ServicerContext[Any, Any]
# A method's behaviour: (request or request iterator, context) -> response or response iterator.
Behavior = Callable[[Any, Context], Any]


@dataclass(frozen=True)
class MethodInfo:
    """What middleware may know about the method it wraps."""

    service: str
    name: str
    request_streaming: bool
    response_streaming: bool
    descriptor: MethodDescriptor | None

    @property
    def full_name(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def kind(self) -> str:
        return {
            (False, False): "unary",
            (False, True): "server_streaming",
            (True, False): "client_streaming",
            (True, True): "bidi_streaming",
        }[(self.request_streaming, self.response_streaming)]


class Middleware(Protocol):
    def wrap(self, method: MethodInfo, behavior: Behavior) -> Behavior:
        """Returns the behaviour to run instead of `behavior` for `method`."""
        ...


def unary_response(
    around: Callable[[Any, Context, Callable[[], Awaitable[Any]]], Awaitable[Any]],
    behavior: Behavior,
) -> Behavior:
    """Adapts an `around(request, context, call_next)` coroutine to a unary-response behaviour."""

    async def wrapped(request: Any, context: Context) -> Any:
        return await around(request, context, lambda: behavior(request, context))

    return wrapped


def stream_response(
    around: Callable[[Any, Context, Callable[[], AsyncIterator[Any]]], AsyncIterator[Any]],
    behavior: Behavior,
) -> Behavior:
    """Adapts an `around(request, context, call_next)` async generator to a streaming response.

    grpc.aio recognises streaming handlers by being async generator functions, so the adapter is
    one too (servicers' streaming methods must be async generators as well).
    """

    async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
        # Around-generators are async generators, whatever their annotation says.
        responses = cast(
            AsyncGenerator[Any, None], around(request, context, lambda: behavior(request, context))
        )
        async with contextlib.aclosing(responses):
            async for response in responses:
                yield response

    return wrapped


def before_each_call(
    method: MethodInfo,
    behavior: Behavior,
    check: Callable[[Any, Context], Awaitable[None]],
) -> Behavior:
    """Runs `check(request, context)` before the handler, for any RPC kind (for a client or
    bidi stream, `request` is the request iterator). A check refuses a call by raising."""
    if method.response_streaming:

        async def checked_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            await check(request, context)
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response

        return checked_stream

    async def checked(request: Any, context: Context) -> Any:
        await check(request, context)
        return await behavior(request, context)

    return checked


def _written(behavior: Behavior) -> Behavior:
    """A streaming behavior as a coroutine that writes each response itself, so that when the
    client leaves early the generators close here, in the RPC's task. (Handed to grpc as an
    async generator, they would be left open and closed later by the event loop in another task,
    whose context cannot restore what the middleware set: "Failed to detach context".)"""

    async def write_all(request: Any, context: Context) -> None:
        responses = behavior(request, context)
        async with contextlib.aclosing(responses):
            async for response in responses:
                await context.write(response)

    return write_all


class _HandlerCollector:
    """Stands in for grpc.aio.Server while a generated add_*_to_server function registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[object]) -> None:
        """Ignored: add_registered_method_handlers carries the same handlers by name."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.handlers[service] = handlers


_BEHAVIOR_FIELD = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


def register(
    server: grpc.aio.Server,
    add_to_server: Callable[[Any, Any], None],
    servicer: object,
    chain: Sequence[Middleware],
) -> list[str]:
    """Registers `servicer` with every method wrapped by `chain` (first = outermost).

    Returns the full names of the services registered.
    """
    collector = _HandlerCollector()
    add_to_server(servicer, collector)
    pool = descriptor_pool.Default()  # type: ignore[no-untyped-call]
    for service, handlers in collector.handlers.items():
        try:
            methods = pool.FindServiceByName(service).methods_by_name
        except KeyError:  # a hand-registered service without a descriptor
            methods = {}
        wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for name, handler in handlers.items():
            info = MethodInfo(
                service=service,
                name=name,
                request_streaming=handler.request_streaming,
                response_streaming=handler.response_streaming,
                descriptor=methods.get(name),
            )
            field = _BEHAVIOR_FIELD[(info.request_streaming, info.response_streaming)]
            behavior: Behavior = getattr(handler, field)
            for middleware in reversed(chain):
                behavior = middleware.wrap(info, behavior)
            if info.response_streaming:
                behavior = _written(behavior)
            wrapped[name] = handler._replace(**{field: behavior})  # type: ignore[attr-defined]
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        # grpc-stubs predates add_registered_method_handlers (grpcio >= 1.62).
        server.add_registered_method_handlers(service, wrapped)  # type: ignore[attr-defined]
    return list(collector.handlers)
