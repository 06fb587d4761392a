"""Middleware that turns exceptions into statuses: DomainError -> rich status, anything
unexpected -> INTERNAL with a generic message (the details go to the log, not to the caller)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from libs.runtime.errors import DomainError
from libs.runtime.middleware import (
    Behavior,
    Context,
    MethodInfo,
    stream_response,
    unary_response,
)
from libs.runtime.rich_status import abort_with, build_status, status_of

log = logging.getLogger("emporium.rpc")


# Maps an infrastructure exception (a lost database connection, ...) to a DomainError.
ExceptionTranslator = Callable[[Exception], DomainError | None]


class ErrorTranslation:
    def __init__(self, domain: str, translators: Sequence[ExceptionTranslator] = ()) -> None:
        self._domain = domain
        self._translators = list(translators)

    def wrap(self, method: MethodInfo, behavior: Behavior) -> Behavior:
        if method.response_streaming:
            return stream_response(self._around_stream, behavior)
        return unary_response(self._around_unary, behavior)

    async def _around_unary(
        self, request: Any, context: Context, call_next: Callable[[], Awaitable[Any]]
    ) -> Any:
        try:
            return await call_next()
        except DomainError as error:
            await self._abort(context, error)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as error:
            await self._unexpected(context, error)

    async def _around_stream(
        self, request: Any, context: Context, call_next: Callable[[], AsyncIterator[Any]]
    ) -> AsyncIterator[Any]:
        try:
            async for response in call_next():
                yield response
        except DomainError as error:
            await self._abort(context, error)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as error:
            await self._unexpected(context, error)

    async def _abort(self, context: Context, error: DomainError) -> None:
        code, status = status_of(error, self._domain)
        await abort_with(context, code, status)

    async def _unexpected(self, context: Context, error: Exception) -> None:
        for translate in self._translators:
            translated = translate(error)
            if translated is not None:
                log.warning(
                    "dependency failure", extra={"reason": translated.reason, "error": repr(error)}
                )
                await self._abort(context, translated)
        log.exception("unhandled error in RPC handler")
        status = build_status(
            grpc.StatusCode.INTERNAL,
            "internal error; see the server log for this request id",
            reason="INTERNAL",
            domain=self._domain,
        )
        await abort_with(context, grpc.StatusCode.INTERNAL, status)
