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
import time
from pathlib import Path

from services.identity.adapters.key_files import write_key
from tools.identity.accounts import init

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / "var" / "identity"


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
