"""Who may call catalog, by SPIFFE id (enforced when security is mtls or mesh)."""

from libs.security.certificates import spiffe_id
from libs.security.policy import ANY_SERVICE, MethodPolicy

_EDITORS = frozenset({spiffe_id("gateway"), spiffe_id("operator")})

POLICY: MethodPolicy = {
    "GetProduct": frozenset({ANY_SERVICE}),
    "ListProducts": frozenset({ANY_SERVICE}),
    "WatchProducts": frozenset({ANY_SERVICE}),
    "CreateProduct": _EDITORS,
    "UpdateProduct": _EDITORS,
    "DeleteProduct": _EDITORS,
    "ImportProducts": _EDITORS,
}
