"""Identity settings: IDENTITY_* environment variables (or IDENTITY_CONFIG_FILE)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.runtime.config import ServiceSettings


class IdentitySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IDENTITY_", extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite+aiosqlite:///var/identity.sqlite3",
        description="sqlite+aiosqlite:///<path> (embedded) or postgresql+asyncpg://...",
    )
    issuer: str = Field(default="https://identity.emporium.local", description="JWT iss")
    audience: str = Field(default="emporium", description="JWT aud")
    access_token_ttl_seconds: int = Field(default=900, ge=10, le=86400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86400, ge=60)
    # Secrets live outside the repository: `python -m tools.identity init DIR` creates them.
    keys_dir: Path = Field(
        default=Path("var/identity/keys"), description="Ed25519 signing keys, <unix-ns>.pem"
    )
    clients_file: Path = Field(
        default=Path("var/identity/clients.json"),
        description="service clients: id, Argon2 hash of the secret, roles",
    )
    users_file: Path | None = Field(
        default=Path("var/identity/users.json"),
        description="staff and admin users to create at start: id, Argon2 hash, roles",
    )
