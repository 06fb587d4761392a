"""`tools/certs`: a development CA and one certificate per service under var/certs.

Each certificate's URI SAN is the service's SPIFFE id. `operator` is for people (grpcurl),
`warehouse` for scanners. Existing files are kept unless --force; keys are never committed
(.gitignore).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from libs.security.certificates import spiffe_id
from tools.commands.certs.authority import IDENTITIES, ensure

REPO = Path(__file__).resolve().parents[3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=REPO / "var" / "certs")
    parser.add_argument("--force", action="store_true", help="a new CA and new certificates")
    args = parser.parse_args()
    written = ensure(args.dir, args.force)
    print(f"certificates in {args.dir}: {', '.join(written) if written else 'all present'}")
    for name in IDENTITIES:
        print(f"  {name:<14} {spiffe_id(name)}")


if __name__ == "__main__":
    main()
