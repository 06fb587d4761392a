"""How a long stream ends when its server shuts down: the feed behind it raises StreamsClosed
(from its `app.on_shutdown` hook's close), and the stream ends UNAVAILABLE with the reason
SHUTTING_DOWN, so the client calls again, on another replica. It is a DomainError, so the error
translation every GrpcApp has sends it like any other, and a domain may raise it: it names no
transport."""

from __future__ import annotations

from libs.runtime.errors import DomainError, ErrorKind
from libs.runtime.reasons import SharedReason


class StreamsClosed(DomainError):
    """The server is shutting down. `again` tells the client how to resume (`watch again with
    after_revision=7`); `resume` adds that position as error metadata a client can read."""

    def __init__(self, again: str = "call again", **resume: str) -> None:
        super().__init__(
            ErrorKind.UNAVAILABLE,
            SharedReason.SHUTTING_DOWN,
            f"the server is shutting down; {again}",
            resume,
        )
