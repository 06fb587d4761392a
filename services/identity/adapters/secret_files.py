"""Service clients and bootstrap users from JSON files kept outside the repository.

Both hold Argon2 hashes only; `python -m tools.identity init` writes them with fresh random
secrets (the plain secrets go to owner-only files beside them, for local runs).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ValidationError

from libs.runtime.config import ConfigError
from libs.storage.timestamps import now_micros
from services.identity.domain.model import Client, User


class _Account(BaseModel):
    id: str
    secret_hash: str
    roles: list[str]


class _Accounts(BaseModel):
    accounts: list[_Account]


def _read(path: Path, setting: str) -> list[_Account]:
    try:
        return _Accounts.model_validate(json.loads(path.read_text())).accounts
    except FileNotFoundError:
        raise ConfigError(
            f"{setting}: {path} does not exist; create it with `python -m tools.identity init`"
        ) from None
    except (ValueError, ValidationError) as error:
        raise ConfigError(f"{setting}: {path} is not a valid accounts file: {error}") from None


def load_clients(path: Path) -> dict[str, Client]:
    return {
        a.id: Client(a.id, a.secret_hash, tuple(a.roles))
        for a in _read(path, "IDENTITY_CLIENTS_FILE")
    }


def load_users(path: Path) -> list[User]:
    return [
        User(a.id, a.secret_hash, tuple(a.roles), customer="", create_us=now_micros())
        for a in _read(path, "IDENTITY_USERS_FILE")
    ]


def write_accounts(path: Path, accounts: list[tuple[str, str, list[str]]]) -> None:
    """(id, Argon2 hash, roles) for each account."""
    document = {
        "accounts": [{"id": i, "secret_hash": h, "roles": roles} for i, h, roles in accounts]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    path.chmod(0o600)
