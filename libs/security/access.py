"""Who may call an RPC from outside, as the contract declares it (`emporium.access.v1.access`).

`decide()` answers from the roles and the request alone; when the rule ties the caller to the
resource (a customer reads only their own order) it answers `CHECK_RESOURCE`, and `owns()`
finishes the decision once the resource has been read.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from google.protobuf import descriptor, descriptor_pb2, message

from emporium.access.v1 import access_pb2
from libs.security.tokens import Principal


class Decision(enum.Enum):
    ALLOWED = "allowed"
    CHECK_RESOURCE = "check the resource"  # allowed if owns(resource)
    UNAUTHENTICATED = "unauthenticated"  # anonymous, and only callers with a token may
    FORBIDDEN = "forbidden"


@dataclass(frozen=True)
class AccessRule:
    roles: frozenset[str]
    owner_roles: frozenset[str] = frozenset()
    request_field: str = ""
    resource_field: str = ""
    lookup: str = ""  # method that reads the resource before a change
    claim: str = "customer"

    @classmethod
    def of(cls, method: descriptor.MethodDescriptor) -> AccessRule | None:
        """The rule the contract declares on `method`, or None when it declares none."""
        options = method.GetOptions()
        if not options.HasExtension(access_pb2.access):
            return None
        policy = options.Extensions[access_pb2.access]
        return cls(
            roles=frozenset(policy.roles),
            owner_roles=frozenset(policy.owner.roles),
            request_field=policy.owner.request_field,
            resource_field=policy.owner.resource_field,
            lookup=policy.owner.lookup,
            claim=policy.owner.claim or "customer",
        )

    def decide(self, principal: Principal, request: message.Message) -> Decision:
        roles = principal.effective_roles()
        if roles & self.roles:
            return Decision.ALLOWED
        if roles & self.owner_roles:
            if self.request_field:
                value = field_value(request, self.request_field)
                if value and value == principal.claim(self.claim):
                    return Decision.ALLOWED
                return Decision.FORBIDDEN
            if self.resource_field:
                return Decision.CHECK_RESOURCE
        return Decision.UNAUTHENTICATED if principal.anonymous else Decision.FORBIDDEN

    def owns(self, principal: Principal, resource: message.Message) -> bool:
        value = field_value(resource, self.resource_field)
        return bool(value) and value == principal.claim(self.claim)


def field_value(msg: message.Message, path: str) -> str:
    """The string at a dotted field path, "" when any step is unset."""
    current: object = msg
    for part in path.split("."):
        if (
            not isinstance(current, message.Message)
            or part not in current.DESCRIPTOR.fields_by_name
        ):
            return ""
        current = getattr(current, part)
    return current if isinstance(current, str) else ""


def reads_only(method: descriptor.MethodDescriptor) -> bool:
    """Declared without side effects: its resource may be checked after reading it."""
    level = method.GetOptions().idempotency_level
    return bool(level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS)
