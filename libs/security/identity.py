"""Who is calling: a SPIFFE id from the peer's certificate (mTLS in-process) or from what the
mesh's proxy tells us (Linkerd's `l5d-client-id`, Istio's `x-forwarded-client-cert`)."""

from __future__ import annotations

import enum
import re
from typing import Any

from libs.security.certificates import TRUST_DOMAIN


class TransportSecurity(enum.Enum):
    MTLS = "mtls"  # in-process TLS with client certificates (local mode)
    MESH = "mesh"  # the sidecar terminates mTLS; identity arrives in headers
    INSECURE = "insecure"  # tests and tools only: no identity at all


_LINKERD_ID = re.compile(r"^(?P<sa>[^.]+)\.(?P<ns>[^.]+)\.serviceaccount\.identity\.linkerd\.")
_XFCC_URI = re.compile(r"(?:^|;)URI=(?P<uri>spiffe://[^;,]+)")


def peer_identity(
    context: Any, mode: TransportSecurity, trust_domain: str = TRUST_DOMAIN
) -> str | None:
    """The caller's SPIFFE id, or None when it has none we can trust."""
    if mode is TransportSecurity.MTLS:
        values = (context.auth_context() or {}).get("peer_spiffe_id") or []
        return values[0].decode() if values else None
    if mode is TransportSecurity.MESH:
        metadata = dict(context.invocation_metadata() or ())
        linkerd = metadata.get("l5d-client-id")
        if linkerd and (match := _LINKERD_ID.match(str(linkerd))):
            return f"spiffe://{trust_domain}/ns/{match['ns']}/sa/{match['sa']}"
        xfcc = metadata.get("x-forwarded-client-cert")
        if xfcc:
            # The last element is the hop closest to us: the sidecar in front of this pod.
            last = str(xfcc).split(",")[-1]
            if match := _XFCC_URI.search(last):
                return match["uri"]
    return None
