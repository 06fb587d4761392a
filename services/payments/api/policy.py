"""Who may call payments, by SPIFFE id (enforced when security is mtls or mesh)."""

from libs.security.certificates import spiffe_id
from libs.security.policy import MethodPolicy

_FRONT = frozenset({spiffe_id("gateway"), spiffe_id("operator")})

POLICY: MethodPolicy = {
    "GetPayment": _FRONT,
    "ListPayments": _FRONT,
    "RefundPayment": _FRONT,
}
