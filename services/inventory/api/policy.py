"""Who may call inventory, by SPIFFE id (enforced when security is mtls or mesh)."""

from libs.security.certificates import spiffe_id
from libs.security.policy import MethodPolicy

_READERS = frozenset({spiffe_id("gateway"), spiffe_id("operator")})
# The order path (orders) holds, commits and releases stock; through the gateway, only what
# the contract's access policy admits (service clients and admins).
_RESERVERS = frozenset({spiffe_id("orders"), spiffe_id("gateway"), spiffe_id("operator")})

POLICY: MethodPolicy = {
    "GetStockLevel": _READERS,
    "ListStockLevels": _READERS,
    # What an audit reads (tools/audit, as the operator, or staff through the gateway).
    "ListReservations": _READERS,
    "ReserveStock": _RESERVERS,
    "CommitReservation": _RESERVERS,
    "ReleaseReservation": _RESERVERS,
    "AdjustStock": frozenset({spiffe_id("warehouse"), spiffe_id("gateway"), spiffe_id("operator")}),
}
