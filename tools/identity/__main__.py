"""`python -m tools.identity`: the identity service's secrets for local runs and tests.

  init DIR        signing key, service clients and staff/admin users, with fresh random secrets
                  (idempotent: keeps what exists). Plain secrets go to DIR/secrets/<id>, 0600.
  rotate-key DIR [--in SECONDS]
                  a new signing key; identity publishes it in the JWKS at once and signs with
                  it after SECONDS (0: now), without a restart, and keeps publishing the old
                  one until its tokens have expired. A lead time longer than the verifiers'
                  JWKS refresh (5 min) means no verifier meets the new kid unprepared.
Nothing here is ever committed: DIR is under var/ by default.
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from pathlib import Path

from services.identity.adapters.key_files import write_key
from services.identity.adapters.secret_files import write_accounts
from services.identity.domain.identity import hash_secret

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / "var" / "identity"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("init", "rotate-key"):
        command = commands.add_parser(name)
        command.add_argument("directory", type=Path, nargs="?", default=DEFAULT_DIR)
        if name == "rotate-key":
            command.add_argument(
                "--in",
                dest="lead_seconds",
                type=float,
                default=0.0,
                help="seconds until the new key signs (it is published at once)",
            )
    args = parser.parse_args()
    if args.command == "init":
        created = init(args.directory)
        print(
            f"{args.directory}: created {', '.join(created) if created else 'nothing (all there)'}"
        )
    else:
        path = write_key(args.directory / "keys", time.time() + args.lead_seconds)
        when = "from now on" if args.lead_seconds <= 0 else f"in {args.lead_seconds:g} s"
        print(f"new signing key {path}: published now, signing {when}")


if __name__ == "__main__":
    main()
