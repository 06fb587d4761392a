"""Request fingerprints for AIP-155 request_id replay detection: the same request_id with the
same body replays the first result; with another body it is rejected."""

from __future__ import annotations

import hashlib

from google.protobuf.message import Message


def fingerprint(request: Message, key_field: str = "request_id") -> str:
    """A digest of `request` apart from its idempotency key."""
    body = type(request)()
    body.CopyFrom(request)
    body.ClearField(key_field)
    return hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()
