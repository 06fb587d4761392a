"""Who may call orders, by SPIFFE id (enforced when security is mtls or mesh)."""

from libs.security.certificates import spiffe_id
from libs.security.policy import MethodPolicy

_FRONT = frozenset({spiffe_id("gateway"), spiffe_id("operator")})

POLICY: MethodPolicy = {
    "CreateOrder": _FRONT,
    # payments checks an order before authorizing its payment.
    "GetOrder": _FRONT | {spiffe_id("payments")},
    "ListOrders": _FRONT,
    "CancelOrder": _FRONT,
    "WatchOrder": _FRONT,
}
