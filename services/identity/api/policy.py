"""Who may call identity, by SPIFFE id (enforced when security is mtls or mesh)."""

from libs.security.certificates import spiffe_id
from libs.security.policy import ANY_SERVICE, MethodPolicy

_FRONT = frozenset({spiffe_id("gateway"), spiffe_id("operator")})

POLICY: MethodPolicy = {
    "IssueToken": _FRONT,
    "RevokeToken": _FRONT,
    # Every service verifies tokens itself, so every service reads the keys.
    "GetJwks": frozenset({ANY_SERVICE}),
    "CreateUser": _FRONT,
    "GetUser": _FRONT,
}
