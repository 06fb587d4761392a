"""Signing keys: Ed25519 private keys in a directory, one file per key, named by the moment it
starts signing (`<unix-nanoseconds>.pem`).

The newest active key signs. A replaced key stays in the JWKS until every token it signed has
expired (its successor's start + the access-token lifetime + the verifiers' clock skew), so a
rotation never rejects a valid token. The directory is re-read when it changes: dropping a new
key file in rotates without a restart (`python -m tools.identity rotate-key`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from libs.runtime.config import ConfigError
from services.identity.domain.ports import ALGORITHM

CLOCK_SKEW_SECONDS = 60.0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    starts_at: float  # unix seconds
    private_key: Ed25519PrivateKey
    jwk: dict[str, str]

    @property
    def kid(self) -> str:
        return self.jwk["kid"]

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path}: not an Ed25519 private key")
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        public = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}
        # RFC 7638: the thumbprint of the required members in lexicographic order.
        canonical = json.dumps(public, separators=(",", ":"), sort_keys=True).encode()
        kid = _b64url(hashlib.sha256(canonical).digest())
        jwk = {**public, "kid": kid, "alg": ALGORITHM, "use": "sig"}
        return cls(int(path.stem) / 1e9, key, jwk)


def write_key(directory: Path, starts_at: float | None = None) -> Path:
    """A new key file that starts signing at `starts_at` (now by default); owner-only."""
    directory.mkdir(parents=True, exist_ok=True)
    moment = time.time() if starts_at is None else starts_at
    path = directory / f"{int(moment * 1e9)}.pem"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    return path


class SigningKeys:
    def __init__(
        self, directory: Path, token_ttl_seconds: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._directory = directory
        self._ttl = token_ttl_seconds
        self._clock = clock
        self._seen: tuple[float, int] | None = None
        self._keys: list[SigningKey] = []  # oldest first
        self._reload()
        if not self._keys:
            raise ConfigError(
                f"IDENTITY_KEYS_DIR: no signing key (*.pem) in {directory}; "
                "create one with `python -m tools.identity init`"
            )

    def _reload(self) -> None:
        try:
            stat = self._directory.stat()
        except FileNotFoundError:
            raise ConfigError(f"IDENTITY_KEYS_DIR: {self._directory} does not exist") from None
        seen = (stat.st_mtime, stat.st_ino)
        if seen == self._seen:
            return
        self._seen = seen
        paths = sorted(self._directory.glob("*.pem"), key=lambda p: int(p.stem))
        self._keys = [SigningKey.load(path) for path in paths if path.stem.isdigit()]

    def signing_key(self) -> SigningKey:
        self._reload()
        now = self._clock()
        started = [key for key in self._keys if key.starts_at <= now]
        return started[-1] if started else self._keys[0]

    def jwks(self) -> dict[str, Any]:
        """The signing key first, then replaced keys whose tokens may still be valid, then
        keys that will start signing soon (so verifiers know them before the first token)."""
        current = self.signing_key()
        now = self._clock()
        keys = [current.jwk]
        for older, successor in zip(self._keys, self._keys[1:], strict=False):
            replaced_long_ago = successor.starts_at + self._ttl + CLOCK_SKEW_SECONDS < now
            if older is not current and older.starts_at <= now and not replaced_long_ago:
                keys.append(older.jwk)
        keys += [key.jwk for key in self._keys if key.starts_at > now]
        return {"keys": keys}
