"""The identity service's accounts and signing key for local runs and tests: `init` creates what
is missing (fresh random secrets in DIR/secrets/<id>, 0600)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from services.identity.adapters.key_files import write_key
from services.identity.adapters.secret_files import write_accounts
from services.identity.domain.identity import hash_secret

# The accounts a local run starts with: (id, roles).
CLIENTS = (("reporting", ["service"]),)
USERS = (("staff", ["staff"]), ("admin", ["admin"]))


def _secret(directory: Path, account: str) -> str:
    """The account's secret from DIR/secrets, created on first use."""
    path = directory / "secrets" / account
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(18)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(value + "\n")
    return value


def init(directory: Path) -> list[str]:
    """Creates what is missing; returns what it created."""
    created = []
    keys = directory / "keys"
    if not list(keys.glob("*.pem")):
        write_key(keys)
        created.append("signing key")
    for filename, accounts in (("clients.json", CLIENTS), ("users.json", USERS)):
        path = directory / filename
        if not path.exists():
            rows = [(i, hash_secret(_secret(directory, i)), roles) for i, roles in accounts]
            write_accounts(path, rows)
            created.append(filename)
    return created
