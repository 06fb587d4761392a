"""One way to call an exposed RPC for REST and GraphQL alike: authorize it as the contract
declares, forward the caller, and call through the client kit (deadline, retries, breaker)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import descriptor, message, message_factory

from libs.rpcclient.upstream import Upstream
from libs.runtime.reasons import SharedReason
from libs.runtime.validation import check
from libs.security.access import AccessRule, Decision, reads_only
from libs.security.tokens import Principal
from services.gateway.problems import Problem, from_rpc_error
from services.gateway.routes import ExposedService

PRINCIPAL_SUBJECT_KEY = "x-emporium-subject"
PRINCIPAL_ROLES_KEY = "x-emporium-roles"


def forwarded(principal: Principal) -> list[tuple[str, str]]:
    """Metadata that carries the caller to the service: the token itself (services verify it
    too) and, for logs and quick checks, who it names."""
    if principal.anonymous:
        return []
    return [
        ("authorization", f"Bearer {principal.token}"),
        (PRINCIPAL_SUBJECT_KEY, principal.subject),
        (PRINCIPAL_ROLES_KEY, " ".join(sorted(principal.roles))),
    ]


def _denied(principal: Principal, method: descriptor.MethodDescriptor, why: str) -> Problem:
    if principal.anonymous:
        return Problem(
            401,
            f"{method.full_name} needs a bearer token",
            reason=SharedReason.UNAUTHENTICATED,
            code="UNAUTHENTICATED",
            headers={"WWW-Authenticate": 'Bearer realm="emporium"'},
        )
    return Problem(
        403,
        f"{principal.subject} may not call {method.full_name}: {why}",
        reason=SharedReason.CALLER_NOT_ALLOWED,
        code="PERMISSION_DENIED",
        metadata={"method": method.full_name},
    )


class Dispatcher:
    def __init__(self, services: Iterable[ExposedService], upstreams: Mapping[str, Upstream]):
        self._stubs: dict[str, Any] = {}
        self._rules: dict[str, AccessRule] = {}  # read from the descriptors once per method
        for exposed in services:
            stub_class = getattr(exposed.grpc_module, f"{exposed.service.name}Stub")
            self._stubs[exposed.service.full_name] = upstreams[exposed.upstream].stub(stub_class)

    def _call(self, method: descriptor.MethodDescriptor) -> Any:
        return getattr(self._stubs[method.containing_service.full_name], method.name)

    def decide(
        self, method: descriptor.MethodDescriptor, request: message.Message, principal: Principal
    ) -> tuple[AccessRule, Decision]:
        """The contract's access rule for the caller and request; 401/403 if it refuses."""
        rule = self._rules.get(method.full_name)
        if rule is None:
            rule = AccessRule.of(method)
            if rule is not None:
                self._rules[method.full_name] = rule
        if rule is None:
            raise _denied(principal, method, "no access policy")
        decision = rule.decide(principal, request)
        if decision in (Decision.UNAUTHENTICATED, Decision.FORBIDDEN):
            raise _denied(principal, method, "not in the allowed roles, or not the owner")
        return rule, decision

    async def _authorize(
        self, method: descriptor.MethodDescriptor, request: message.Message, principal: Principal
    ) -> tuple[AccessRule, Decision]:
        rule, decision = self.decide(method, request, principal)
        # The contract's buf.validate rules, at the edge: a bad request is refused before it
        # costs an upstream call, and before a stream has sent its 200.
        check(request)
        if decision is Decision.CHECK_RESOURCE and not reads_only(method):
            # A change: read the resource first, as the caller, and check who owns it.
            lookup = method.containing_service.methods_by_name[rule.lookup]
            read = message_factory.GetMessageClass(lookup.input_type)(
                name=getattr(request, "name")  # noqa: B009 - the lookup reads the named resource
            )
            resource = await self.unary(lookup, read, principal, check_owner=False)
            if not rule.owns(principal, resource):
                raise _denied(principal, method, "not the owner")
            return rule, Decision.ALLOWED
        return rule, decision

    async def unary(
        self,
        method: descriptor.MethodDescriptor,
        request: message.Message,
        principal: Principal,
        *,
        check_owner: bool = True,
    ) -> message.Message:
        rule, decision = await self._authorize(method, request, principal)
        try:
            response: message.Message = await self._call(method)(
                request, metadata=forwarded(principal)
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        owner_check = decision is Decision.CHECK_RESOURCE and check_owner
        if owner_check and not rule.owns(principal, response):
            raise _denied(principal, method, "not the owner")
        return response

    async def client_stream(
        self,
        method: descriptor.MethodDescriptor,
        requests: list[message.Message],
        principal: Principal,
    ) -> message.Message | list[message.Message]:
        """Client and bidi streams over plain HTTP: a JSON array in, the response (or the
        array of responses) out, once the client's side is complete."""
        # Every request is checked (ownership may differ per message), and an empty stream
        # is checked as one empty request, so the roles apply even with nothing to send.
        empty = message_factory.GetMessageClass(method.input_type)()
        for request in requests or [empty]:
            await self._authorize(method, request, principal)

        async def feed() -> AsyncIterator[message.Message]:
            for request in requests:
                yield request

        try:
            call = self._call(method)(feed(), metadata=forwarded(principal))
            if method.server_streaming:
                return [response async for response in call]
            result: message.Message = await call
            return result
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    async def server_stream(
        self,
        method: descriptor.MethodDescriptor,
        request: message.Message,
        principal: Principal,
        *,
        stream_timeout: float,
    ) -> AsyncIterator[message.Message]:
        """Authorizes, then opens the stream. When ownership depends on the resource, the
        first message (the resource now) is read and checked before anything is returned, so
        a refusal is an error response rather than a stream that ends in an error."""
        rule, decision = await self._authorize(method, request, principal)
        call = self._call(method)(request, metadata=forwarded(principal), timeout=stream_timeout)
        first: message.Message | None = None
        if decision is Decision.CHECK_RESOURCE:
            try:
                first = await anext(call)
            except StopAsyncIteration:
                first = None
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error) from None
            if first is None or not rule.owns(principal, first):
                raise _denied(principal, method, "not the owner")
        return _relay(first, call)


async def _relay(
    first: message.Message | None, call: AsyncIterator[message.Message]
) -> AsyncIterator[message.Message]:
    try:
        if first is not None:
            yield first
        async for response in call:
            yield response
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None
