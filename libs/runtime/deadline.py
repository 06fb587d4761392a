"""The inbound call's deadline, so outbound calls made while handling it inherit its budget.

The server middleware records `time.monotonic() + context.time_remaining()` in a context
variable; libs.rpcclient reads it for every outbound call (minus a margin).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from typing import Any

from libs.runtime.middleware import Behavior, Context, MethodInfo, before_each_call

inbound_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "inbound_deadline", default=None
)


def remaining_budget() -> float | None:
    """Seconds left for the RPC being handled, or None outside one (or with no deadline)."""
    deadline = inbound_deadline.get()
    return None if deadline is None else deadline - time.monotonic()


@contextlib.contextmanager
def budget(seconds: float) -> Iterator[None]:
    """Outbound calls made inside share a budget of `seconds` from now (for work that does not
    start from an RPC, such as an HTTP request in the gateway)."""
    token = inbound_deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        inbound_deadline.reset(token)


class DeadlineScope:
    """Middleware: publishes the inbound deadline to the handler's context."""

    def wrap(self, method: MethodInfo, behavior: Behavior) -> Behavior:
        return before_each_call(method, behavior, _enter)


async def _enter(request: Any, context: Context) -> None:
    remaining = context.time_remaining()
    inbound_deadline.set(None if remaining is None else time.monotonic() + remaining)
