"""Per-method authorization by SPIFFE id, declared with each service.

A policy maps every method of the service to the identities allowed to call it (`ANY_SERVICE`
admits any authenticated caller). A method missing from the policy is refused, so a new RPC is
closed until someone decides who may call it; tests check every method has an entry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import grpc

from libs.runtime.middleware import Behavior, Context, MethodInfo, before_each_call
from libs.runtime.rich_status import abort_with, build_status
from libs.security.identity import TransportSecurity, peer_identity

log = logging.getLogger("emporium.security")
ANY_SERVICE = "*"
MethodPolicy = Mapping[str, frozenset[str]]  # method name -> allowed SPIFFE ids


class Authorization:
    """Middleware: PERMISSION_DENIED (and a log line) for callers the policy does not allow."""

    def __init__(self, policy: MethodPolicy, mode: TransportSecurity, domain: str) -> None:
        self._policy = policy
        self._mode = mode
        self._domain = domain

    def wrap(self, method: MethodInfo, behavior: Behavior) -> Behavior:
        if self._mode is TransportSecurity.INSECURE:
            return behavior
        allowed = self._policy.get(method.name, frozenset())

        async def authorize(request: Any, context: Context) -> None:
            await self._check(method, allowed, context)

        return before_each_call(method, behavior, authorize)

    async def _check(self, method: MethodInfo, allowed: frozenset[str], context: Context) -> None:
        caller = peer_identity(context, self._mode)
        if caller is not None and (caller in allowed or ANY_SERVICE in allowed):
            return
        log.warning("caller denied", extra={"rpc": method.full_name, "caller": caller})
        status = build_status(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{caller or 'an unauthenticated caller'} may not call {method.full_name}",
            reason="CALLER_NOT_ALLOWED",
            domain=self._domain,
            metadata={"caller": caller or "", "method": method.full_name},
        )
        await abort_with(context, grpc.StatusCode.PERMISSION_DENIED, status)
