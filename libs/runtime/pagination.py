"""AIP-158 pagination: page sizes and opaque page tokens bound to the query they page through.

A token records the offset and a fingerprint of the query's other parameters, so a token used
with a different filter or order is rejected instead of returning a confusing page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from libs.runtime.errors import invalid_field
from libs.runtime.reasons import SharedReason

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class PageRequest:
    offset: int
    limit: int
    fingerprint: str

    def next_token(self, returned: int, total: int) -> str:
        next_offset = self.offset + returned
        if returned == 0 or next_offset >= total:
            return ""
        return encode_token(next_offset, self.fingerprint)


def page_request(page_size: int, page_token: str, *query: str) -> PageRequest:
    """Validates size and token against the query they belong to (the other list parameters)."""
    if page_size < 0:
        raise invalid_field("page_size", "must not be negative")
    limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    fingerprint = _fingerprint(query)
    offset = decode_token(page_token, fingerprint) if page_token else 0
    return PageRequest(offset=offset, limit=limit, fingerprint=fingerprint)


def encode_token(offset: int, fingerprint: str) -> str:
    raw = json.dumps({"o": offset, "q": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, fingerprint: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        offset, token_fingerprint = payload["o"], payload["q"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise invalid_field(
            "page_token", "is not a token this service issued", SharedReason.INVALID_PAGE_TOKEN
        ) from None
    if not isinstance(offset, int) or offset < 0:
        raise invalid_field(
            "page_token", "is not a token this service issued", SharedReason.INVALID_PAGE_TOKEN
        )
    if token_fingerprint != fingerprint:
        raise invalid_field(
            "page_token",
            "belongs to a query with another filter or order_by",
            SharedReason.PAGE_TOKEN_QUERY_MISMATCH,
        )
    return offset


def _fingerprint(query: tuple[str, ...]) -> str:
    return hashlib.sha256("\x1f".join(query).encode()).hexdigest()[:16]
