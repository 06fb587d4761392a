"""Services verify the caller's token themselves, not only the gateway.

When a service knows where identity is (`<SERVICE>_IDENTITY_TARGET` or
`EMPORIUM_IDENTITY_TARGET`), every call that carries `authorization: Bearer <jwt>` is verified
the gateway's way (pinned algorithm, JWKS by kid, iss/aud/exp/nbf) and checked against the
method's contract access policy: UNAUTHENTICATED `INVALID_TOKEN` or PERMISSION_DENIED
`ROLE_NOT_ALLOWED`. A call from the gateway's own identity must carry a token unless the method
admits anonymous callers, so a compromised gateway cannot act without a user. Calls between
services (no token) stay governed by the SPIFFE policy. Ownership is checked here too: a request
field (`order.customer`) before the handler, a resource's owner on the response of a read (or
the first message of its stream). Changes to a resource named by the request (CancelOrder) are
checked by the gateway, which reads the resource first.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format

from emporium.identity.v1 import identity_service_pb2 as identity_pb
from libs.runtime.middleware import Behavior, Context, MethodInfo, before_each_call
from libs.runtime.rich_status import abort_with, build_status
from libs.security.access import AccessRule, Decision, reads_only
from libs.security.certificates import spiffe_id
from libs.security.identity import TransportSecurity, peer_identity
from libs.security.tokens import (
    ANONYMOUS_ROLE,
    InvalidToken,
    Jwks,
    JwksCache,
    Principal,
    TokenVerifier,
    bearer_token,
)

log = logging.getLogger("emporium.security")
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "current_principal", default=None
)


def identity_jwks(stub: Any, refetch_interval: float = 30.0) -> JwksCache:
    """A JWKS cache filled from identity's GetJwks through `stub` (a generated
    IdentityServiceStub, or the client kit's wrapping of one)."""

    async def fetch() -> Jwks:
        keys = await stub.GetJwks(identity_pb.GetJwksRequest(), timeout=5.0)
        return json_format.MessageToDict(keys)

    return JwksCache(fetch, refetch_interval=refetch_interval)


class TokenAuthentication:
    def __init__(
        self,
        verifier: TokenVerifier,
        mode: TransportSecurity,
        domain: str,
        front_door: frozenset[str] = frozenset({spiffe_id("gateway")}),
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._verifier = verifier
        self._mode = mode
        self._domain = domain
        self._front_door = front_door
        self._on_close = on_close

    async def close(self) -> None:
        """Releases what reaches the key source (the app calls it when it stops)."""
        if self._on_close is not None:
            await self._on_close()

    def wrap(self, method: MethodInfo, behavior: Behavior) -> Behavior:
        rule = AccessRule.of(method.descriptor) if method.descriptor is not None else None

        async def authenticate(request: Any, context: Context) -> None:
            await self._check(method, rule, request, context)

        checked = before_each_call(method, behavior, authenticate)
        reads = method.descriptor is not None and reads_only(method.descriptor)
        if rule is None or not rule.resource_field or method.request_streaming or not reads:
            return checked
        # A read whose owner is in the resource (a customer's order by its name): the
        # response, or a stream's first message, is checked before the caller sees it.
        if method.response_streaming:

            async def owned_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                first = True
                async for response in checked(request, context):
                    if first:
                        await self._check_owner(method, rule, request, response, context)
                        first = False
                    yield response

            return owned_stream

        async def owned(request: Any, context: Context) -> Any:
            response = await checked(request, context)
            await self._check_owner(method, rule, request, response, context)
            return response

        return owned

    async def _check_owner(
        self, method: MethodInfo, rule: AccessRule, request: Any, response: Any, context: Context
    ) -> None:
        principal = current_principal.get()
        if principal is None:
            return  # a service's own call: the SPIFFE policy governs it
        if rule.decide(principal, request) is Decision.CHECK_RESOURCE and not rule.owns(
            principal, response
        ):
            await self._abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "NOT_OWNER",
                f"{principal.subject} may not call {method.full_name} on what is not theirs",
            )

    async def _check(
        self, method: MethodInfo, rule: AccessRule | None, request: Any, context: Context
    ) -> None:
        metadata = dict(context.invocation_metadata() or ())
        try:
            token = bearer_token(metadata.get("authorization"))
            principal = None if token is None else await self._verifier.verify(token)
        except InvalidToken as error:
            await self._abort(context, grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN", str(error))
            return
        if principal is None:
            caller = peer_identity(context, self._mode)
            open_to_anyone = rule is not None and ANONYMOUS_ROLE in rule.roles
            if caller in self._front_door and not open_to_anyone:
                await self._abort(
                    context,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "TOKEN_REQUIRED",
                    f"{method.full_name} through the front door needs the user's token",
                )
            return
        current_principal.set(principal)
        if rule is None:
            return
        if method.request_streaming:  # no request yet: the roles alone
            allowed = bool(principal.effective_roles() & (rule.roles | rule.owner_roles))
        else:
            allowed = rule.decide(principal, request) not in (
                Decision.FORBIDDEN,
                Decision.UNAUTHENTICATED,
            )
        if not allowed:
            log.warning(
                "token denied", extra={"rpc": method.full_name, "subject": principal.subject}
            )
            await self._abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "ROLE_NOT_ALLOWED",
                f"{principal.subject} may not call {method.full_name}",
            )

    async def _abort(
        self, context: Context, code: grpc.StatusCode, reason: str, message: str
    ) -> None:
        status = build_status(code, message, reason=reason, domain=self._domain)
        await abort_with(context, code, status)
