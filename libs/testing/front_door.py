"""The gateway's REST front door as a test client meets it."""

from __future__ import annotations

from pathlib import Path

import httpx


async def password_token(client: httpx.AsyncClient, username: str, password: str) -> str:
    """An access token for `username` (OAuth2 password grant at /v1/token)."""
    response = await client.post(
        "/v1/token", json={"grant_type": "password", "username": username, "password": password}
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    """The header that presents `token`."""
    return {"Authorization": f"Bearer {token}"}


async def staff_stocks(client: httpx.AsyncClient, var: Path, item: str, delta: int) -> None:
    """The launcher's staff account (password under `var`/identity) adjusts `item`'s stock."""
    password = (var / "identity" / "secrets" / "staff").read_text().strip()
    staff = await password_token(client, "staff", password)
    stocked = await client.post(
        "/v1/inventory/items:adjust",
        json=[{"item": item, "delta": delta}],
        headers=bearer(staff),
    )
    assert stocked.status_code == 200, stocked.text
